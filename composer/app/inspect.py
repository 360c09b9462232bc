"""``python -m composer inspect CKPT [CKPT ...]``: what a checkpoint holds, without running it.

Prints what the file stores: the recipe (YAML), the summary and the init report as they were when
it was saved, reading the file's header only (a checkpoint of 1 GiB costs what its header does:
its checksum, which covers the tensors too, is checked where they are read: by ``--rebuild`` and
``load_checkpoint``; a directory's ``composer.json`` and ``.metadata`` are checked against their
own checksums, its shards are not opened). A file that stores no summary (one saved from
Python without ``summary=``) gets one from its recipe rebuilt on ``meta``, without output shapes:
no weight is used and no forward runs. It runs no forward by default: a checkpoint is data
from anywhere, and a model's forward may not end (a ``FixedHiddenMLP`` whose weights are inf loops
forever). ``--rebuild`` also rebuilds the model the
way ``load_checkpoint`` does (nothing in the file is executed, no initializer runs) and prints its
summary now, with a forward pass of zeros within ``COMPOSER_MAX_SECONDS``. Every budget of
``composer.limits`` applies (``COMPOSER_MAX_HEADER_BYTES``, ...).

``--recipe`` prints the stored recipe alone, ready to edit and build again (it starts with
``# @package _global_``, so it also works as ``DIR/model/NAME.yaml`` for ``--config-dir DIR``). A
sharded model's checkpoint directory is read from its metadata (the model rebuilt on ``meta``,
no shard read). Whatever the file says reaches the terminal with its control characters escaped. A bad file is
one line on standard error and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m composer inspect",
        description="Print the recipe, the summary and the init report stored in a composer checkpoint.",
    )
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="a composer checkpoint: a file or a directory")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the checksums (a directory's metadata; with --rebuild, the data)"
    )
    parser.add_argument("--recipe", action="store_true", help="print only the stored recipe, as YAML ready to edit")
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="also rebuild the model from its recipe and print its summary now (runs a forward pass of zeros)",
    )
    parser.add_argument(
        "--depth", type=int, default=None, help="rebuilt summary rows down to this depth (0: the model)"
    )
    args = parser.parse_args(argv)

    from composer.errors import CheckpointError, ConfigError, printable, unexpected  # noqa: PLC0415  (torch: after --help)

    status = 0
    for path in args.checkpoints:
        try:
            if Path(path).is_dir():
                text = _describe_directory(path, verify=not args.no_verify, recipe_only=args.recipe, depth=args.depth)
            else:
                text = _describe(path, not args.no_verify, args.rebuild, args.recipe, args.depth)
        except Exception as e:  # noqa: BLE001  (one line per file, whatever a crafted file provokes)
            if isinstance(e, ConfigError):
                line = "; ".join(e.lines())
            else:
                line = str(e) if isinstance(e, CheckpointError) else f"{path}: {unexpected(e)}"
            print(f"error: {printable(line, keep_newlines=False)}", file=sys.stderr)
            status = 1
            continue
        print(printable(text))
    return status


def _recipe_file(path: str, recipe: dict) -> str:
    """The stored recipe as a file to edit and build again (also as ``DIR/model/NAME.yaml``)."""
    return f"# @package _global_\n# The recipe stored in {path}.\n" + _yaml(path, recipe)


def _yaml(path: str, recipe: dict) -> str:
    """A stored recipe as YAML, if it nests within ``limits.depth`` (the YAML dumper recurses:
    a recipe 400 deep would stop it with a RecursionError)."""
    import yaml  # noqa: PLC0415

    from composer import limits  # noqa: PLC0415
    from composer.checkpoint.common import json_depth  # noqa: PLC0415
    from composer.errors import CheckpointError  # noqa: PLC0415

    depth = json_depth(recipe)
    if depth > limits.current().depth + 1:  # the recipe's own mapping, then its values
        raise CheckpointError(f"{path}: {limits.exceeded('depth', f'its recipe, {depth:,} deep,')}")
    return yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None).rstrip()


def _describe_directory(path: str, verify: bool, recipe_only: bool, depth: int | None) -> str:
    """A sharded model's checkpoint directory: its model rebuilt on ``meta`` from its metadata
    (recipe, stored shapes, init report) without reading the shards."""

    from composer.build.record import record_of  # noqa: PLC0415
    from composer.checkpoint.api import rebuild_on_meta  # noqa: PLC0415
    from composer.describe.summarize import summary  # noqa: PLC0415

    model = rebuild_on_meta(path, verify)
    recipe = record_of(model).recipe
    if recipe_only:
        return _recipe_file(path, recipe)
    return "\n".join([f"# {path}", "# recipe", _yaml(path, recipe), "# summary", summary(model, depth=depth)])


def _summary_on_meta(path: str, depth: int | None) -> str | None:
    """The summary of the stored recipe rebuilt on ``meta``, without a forward (so without output
    shapes); ``None`` for a recipe
    that does not rebuild (a budget exceeded, an unregistered type: ``--rebuild`` says why), as the
    rest of what the file holds is still worth printing."""
    from composer.checkpoint.api import rebuild_on_meta  # noqa: PLC0415
    from composer.describe.summarize import summarize  # noqa: PLC0415
    from composer.errors import CheckpointError, ConfigError  # noqa: PLC0415

    try:
        return summarize(rebuild_on_meta(path, verify=False), depth=depth, shapes={}).text()
    except (CheckpointError, ConfigError):
        return None


def _describe(path: str, verify: bool, rebuild: bool, recipe_only: bool, depth: int | None) -> str:
    """The stored recipe, summary and init report of one checkpoint, as text."""
    import json  # noqa: PLC0415

    from composer.checkpoint.api import load_checkpoint  # noqa: PLC0415
    from composer.checkpoint.common import json_field  # noqa: PLC0415
    from composer.checkpoint.file import read_metadata  # noqa: PLC0415
    from composer.describe.summarize import summary  # noqa: PLC0415
    from composer.errors import CheckpointError  # noqa: PLC0415

    metadata = read_metadata(path, verify=False)  # the header only: --rebuild verifies what it loads
    if recipe_only:
        if "recipe" not in metadata:
            raise CheckpointError(f"{path}: holds weights only, no recipe")
        return _recipe_file(path, json_field(metadata, "recipe", dict, path))
    lines = [f"# {path}"]
    if "recipe" in metadata:
        recipe = json_field(metadata, "recipe", dict, path)
        lines += ["# recipe", _yaml(path, recipe)]
    else:
        lines += ["# recipe", "(none: this file holds weights only)"]
    stored = metadata.get("summary")
    if stored is None and "recipe" in metadata:
        stored = _summary_on_meta(path, depth)
        heading = "# summary (of its recipe, rebuilt on meta: no forward, no output shapes)"
        lines += [heading, stored or "(none: it does not rebuild)"]
    else:
        lines += ["# summary (stored when the file was written)", stored.rstrip() if stored else "(none stored)"]
    if not stored and "init_schemes" in metadata:
        schemes = json_field(metadata, "init_schemes", dict, path)
        lines += ["initialization:", *(f"  {name}: {json.dumps(scheme)}" for name, scheme in schemes.items())]
    if rebuild:
        model = load_checkpoint(path, verify=verify)
        try:
            table = summary(model, depth=depth)
        except ValueError as e:  # ConfigError: lazy layers without shapes
            raise CheckpointError(f"{path}: cannot summarize its model: {e}") from None
        lines += ["# summary (rebuilt now)", table]
    return "\n".join(lines)
