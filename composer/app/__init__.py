"""The command line: the Hydra app (``python -m composer``, ``nncompose``), its guarded config
source, ``list``/``schema``/``inspect``, and the sweep report with its plots."""
