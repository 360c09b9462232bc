"""composer's benchmarks: side by side with handwritten PyTorch and with peers, in one run.

``python -m bench`` (or ``python bench/run.py``) runs them all and prints the table; BENCHMARKS.md
holds the results, the machine and the commands.
"""
