"""Every script in examples/ runs with the README's own command (its tiny sizes): a ``torchrun``
command on 2 gloo ranks, a ``python`` command in one process.

The command is read from the README, so the README and the test cannot drift apart: a newcomer
who copies it gets what this test got. ``torchrun`` is ``python -m torch.distributed.run`` (the
same launcher, without relying on the console script being on PATH), with ``--standalone`` so
that parallel runs never share a rendezvous port. The script runs from a fresh folder, as a user
runs it from anywhere: its recipe must come from the package, not from the checkout's layout.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.recipes import ROOT

pytestmark = pytest.mark.slow

EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
# The README's command for each example at tiny sizes; the test fails if the README drops it.
TINY = re.compile(r"^(torchrun --nproc_per_node 2|python) (examples/(\S+\.py) .*vars\..*?)(?:\s+#.*)?$", re.MULTILINE)


def readme_commands() -> dict[str, list[tuple[bool, str]]]:
    """Example file name -> its tiny commands: (whether it runs under torchrun, the arguments)."""
    commands: dict[str, list[tuple[bool, str]]] = {}
    for m in TINY.finditer((ROOT / "README.md").read_text()):
        commands.setdefault(m.group(3), []).append((m.group(1) != "python", m.group(2)))
    return commands


TINY_RUNS = [(name, i) for name, runs in sorted(readme_commands().items()) for i in range(len(runs))]


def test_every_example_has_a_tiny_command_in_the_readme():
    assert EXAMPLES, "no examples found"
    assert sorted(readme_commands()) == EXAMPLES


@pytest.mark.parametrize(("example", "which"), TINY_RUNS)
def test_example_runs_with_the_readme_command(example, which, tmp_path):
    distributed, command = readme_commands()[example][which]
    args = shlex.split(command)
    args[0] = str(ROOT / args[0])  # examples/NAME.py, from a folder outside the checkout
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "HYDRA_FULL_ERROR")}
    env.update(PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")  # gloo, as on a CPU machine
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if distributed else []
    cmd = [sys.executable, *launcher, *args]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{shlex.join(cmd)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    losses = [float(x) for x in re.findall(r"^step \d+: loss (\S+)", result.stdout, re.MULTILINE)]
    assert len(losses) >= 2 and losses[-1] < losses[0], result.stdout  # it trains
    if "--save" in args:
        assert "outputs equal" in result.stdout, result.stdout
