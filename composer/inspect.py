"""``python -m composer.inspect CKPT [CKPT ...]``: what a checkpoint holds, without writing code.

Prints the recipe stored in the file (YAML), then the summary of the rebuilt model with its init
report. ``--recipe`` prints the recipe alone, ready to edit and build again (it starts with
``# @package _global_``, so it also works as ``DIR/model/NAME.yaml`` for ``--config-dir DIR``).
The model is rebuilt the way ``load_checkpoint`` does it: no initializer runs and nothing in the
file is executed; a sharded model's checkpoint directory is read from its metadata alone (the
model rebuilt on ``meta``). A bad file is one line on standard error and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m composer.inspect",
        description="Print the recipe, the summary and the init report of a composer checkpoint.",
    )
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="a composer checkpoint: a file or a directory")
    parser.add_argument("--no-verify", action="store_true", help="skip the checksum of the tensor data")
    parser.add_argument("--recipe", action="store_true", help="print only the stored recipe, as YAML ready to edit")
    parser.add_argument("--depth", type=int, default=None, help="summary rows down to this depth (0: the model only)")
    args = parser.parse_args(argv)

    import yaml  # noqa: PLC0415

    from composer import CheckpointError, ConfigError, summary  # noqa: PLC0415
    from composer.record import record_of  # noqa: PLC0415

    status = 0
    for path in args.checkpoints:
        try:
            model = _open(path, verify=not args.no_verify)
            table = None if args.recipe else summary(model, depth=args.depth)
        except (CheckpointError, ConfigError) as e:
            print(f"error: {'; '.join(e.lines()) if isinstance(e, ConfigError) else e}", file=sys.stderr)
            status = 1
            continue
        recipe = yaml.safe_dump(record_of(model).recipe, sort_keys=False, default_flow_style=None).rstrip()
        if args.recipe:
            print(f"# @package _global_\n# The recipe stored in {path}.\n{recipe}")
            continue
        print(f"# {path}")
        print("# recipe")
        print(recipe)
        print("# summary")
        print(table)
    return status


def _open(path: str, verify: bool):  # -> nn.Module (torch is imported late)
    """The model of a checkpoint file; of a sharded model's directory, rebuilt on ``meta`` from its
    metadata (recipe, stored shapes, init report) without reading the shards."""
    from composer import load_checkpoint  # noqa: PLC0415

    if Path(path).is_dir():
        from composer.dcp import rebuild_on_meta  # noqa: PLC0415

        return rebuild_on_meta(path, verify)
    return load_checkpoint(path, verify=verify)


if __name__ == "__main__":
    sys.exit(main())
