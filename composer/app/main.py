"""The Hydra app: ``python -m composer model=mlp init=xavier``.

A job builds the recipe composed from ``conf/`` (plus ``--config-dir``), prints its summary and
the output shape of a forward pass on ``input_shape``, and writes ``model.safetensors`` (unless
``save=false``), ``recipe.yaml`` and ``summary.txt`` into Hydra's output folder; ``summary.depth=N``
prints the summary's first N levels only. ``check=true`` builds on the
``meta`` device instead and writes nothing but Hydra's own files. A multirun leaves one folder per
job; ``composer.app.report.SweepReport`` (a Hydra callback) then compares them at the sweep's root.

Errors reach the user as one line, ``error: <key path>: <what is wrong>``. In a sweep a failing
job records its error in ``error.txt`` and returns, so the other jobs and the report still run;
the sweep then exits non-zero.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException, HydraException, MissingConfigException, OverrideParseException
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from composer.app.confsource import APP_KEYS, CONFIG_KEYS, USER_PROVIDER, GuardedConfigSource, guarded
from composer.app.report import CHECKPOINT, ERROR
from composer.errors import CheckpointError, ConfigError, did_you_mean, first_line, printable
from composer.modules.signatures import is_int
from composer.recipe.read import TOP_LEVEL_KEYS as RECIPE_KEYS
from composer.recipe.read import example_inputs

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the packaged recipes, inside the package
RECIPE, SUMMARY = "recipe.yaml", "summary.txt"
SEED_LIMIT = 2**32  # the app's seed seeds random, torch and numpy: numpy takes [0, 2**32)

log = logging.getLogger(__name__)
_full_error = False  # HYDRA_FULL_ERROR=1 as the user set it (main() sets it for Hydra regardless)


# --- the job ----------------------------------------------------------------------------------


def task(cfg: DictConfig) -> None:
    """One Hydra job. In a multirun a failure is recorded in the job's folder instead of raised."""
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    try:
        run(cfg, out)
    except Exception as e:  # noqa: BLE001  (every error ends as one line; the traceback on request)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            # Exiting here rather than raising spares the user Hydra's "Error executing job" line.
            sys.exit(fail(e))
        line = one_line(e)
        log.error("job %s (%s) failed: %s", hydra_cfg.job.num, " ".join(hydra_cfg.overrides.task), line)
        detail = "" if is_input_error(e) else "\n" + traceback.format_exc()
        try:
            (out / ERROR).write_text(line + "\n" + detail)
        except OSError:
            pass  # the report lists a job without a checkpoint as failed all the same


def run(cfg: DictConfig, out: Path) -> None:
    """Build, summarize, save and probe one recipe (or only check it, on ``meta``)."""
    settings = app_settings(cfg)
    reset_job_state(settings["seed"])
    recipe = recipe_of(cfg)
    choices = _choices()
    check_model_file(recipe, choices.get("model"))
    keep_model_file_init(recipe, choices)

    import json  # noqa: PLC0415

    from composer import limits as budget  # noqa: PLC0415
    from composer.build.pipeline import build_from_config  # noqa: PLC0415  (torch)
    from composer.build.record import record_of  # noqa: PLC0415
    from composer.checkpoint.api import save_checkpoint  # noqa: PLC0415
    from composer.describe.probe import PROBE_FILE, probe  # noqa: PLC0415
    from composer.describe.summarize import summarize  # noqa: PLC0415

    check = settings["check"]
    model = build_from_config(recipe, device="meta" if check else "cpu")
    resolved = record_of(model).recipe
    options = None if check or example_inputs(resolved) is None else settings["probe"]
    signal, shapes = None, None
    if options is not None:
        # The probe's first forward runs the recipe's own batch: it is also the smoke test and the
        # summary's output shapes (one forward fewer). It leaves the model as it was.
        shapes = {}
        seconds = budget.current().seconds
        try:
            with budget.deadline(seconds):  # model code may not end (inf weights in a while loop)
                signal = probe(
                    model,
                    resolved,
                    options["batch"],
                    max_macs=options["max_macs"],
                    seed=settings["seed"] or 0,
                    shapes=shapes,
                )
        except budget.DeadlineExceeded:
            what = "the probe's forward and backward pass"
            raise ConfigError(budget.exceeded("seconds", what, seconds), example_inputs(resolved)[0]) from None
        except Exception as e:  # noqa: BLE001  (the forward of zeros below says what is wrong, or it is the probe's)
            shapes = None
            probe_error = f"probe: failed, no {PROBE_FILE}: {type(e).__name__}: {first_line(str(e))}"
    result = summarize(model, shapes=shapes)
    if result.error is not None and not check:
        raise result.error  # the forward on the example inputs failed
    if options is not None and signal is None:
        print(probe_error, file=sys.stderr)
    shown = result if settings["depth"] is None else result.to_depth(settings["depth"])
    table, printed = result.text(), shown.text()  # the files keep every level; summary.depth is what prints
    if result.output_shape is not None and not check:
        table += f"\noutput shape: {result.output_shape}"
        printed += f"\noutput shape: {result.output_shape}"
    print(printable(printed))
    if check:
        print(check_line(model))
        return

    import yaml  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    if settings["save"]:
        save_checkpoint(model, out / CHECKPOINT, summary=table)
    stored = record_of(model).recipe_to_store  # never what an enabled resolver read
    (out / RECIPE).write_text(yaml.safe_dump(stored, sort_keys=False, default_flow_style=None))
    (out / SUMMARY).write_text(table + "\n")
    written = [*([CHECKPOINT] if settings["save"] else []), RECIPE, SUMMARY]
    if signal is not None:
        (out / PROBE_FILE).write_text(json.dumps(signal) + "\n")
        written.append(PROBE_FILE)
        print(probe_line(signal))
    print(f"wrote {', '.join(written[:-1])} and {written[-1]} to {out}")


# --- the app's own settings -------------------------------------------------------------------

PROBE_DEFAULTS = {"batch": 64, "max_macs": 4e9}  # as in config.yaml; probe=true gives these


def app_settings(cfg: DictConfig) -> dict[str, Any]:
    """``seed``, ``check``, ``save``, ``probe`` (None when off) and ``depth`` (``summary.depth``),
    checked; every problem at once."""
    problems: list[tuple[str, str]] = []
    seed, check, save = cfg.get("seed"), cfg.get("check"), cfg.get("save", True)
    if seed is not None and not (is_int(seed) and 0 <= seed < SEED_LIMIT):
        problems.append(("seed", f"expected an integer in [0, 2**32) or null, got {seed!r}"))
    for key, value in (("check", check), ("save", save)):
        if not isinstance(value, bool):
            problems.append((key, f"expected true or false, got {value!r}"))
    probe = _probe_setting(cfg.get("probe", True), problems)
    depth = _summary_depth(cfg.get("summary"), problems)
    if problems:
        raise ConfigError(problems)
    return {"seed": seed, "check": check, "save": save, "probe": probe, "depth": depth}


def _summary_depth(raw: Any, problems: list[tuple[str, str]]) -> int | None:
    """``summary.depth``: the levels of the summary a job prints (None: all of them)."""
    if raw is None:
        return None
    if not isinstance(raw, DictConfig):
        problems.append(("summary", f"expected a mapping such as {{depth: 1}}, got {raw!r}"))
        return None
    for key in raw:
        if key != "depth":
            problems.append((f"summary.{key}", f"unknown setting{did_you_mean(str(key), ['depth'])}; valid: depth"))
    depth = raw.get("depth")
    if depth is not None and not (is_int(depth) and depth >= 0):
        problems.append(("summary.depth", f"expected a non-negative integer or null, got {depth!r}"))
        return None
    return depth


def _probe_setting(raw: Any, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    """``probe``: true (the defaults), false or null (off), or a mapping over the defaults."""
    probe: dict[str, Any] | None = dict(PROBE_DEFAULTS)
    if raw is False or raw is None:
        probe = None
    elif isinstance(raw, DictConfig):
        for key, value in raw.items():
            if key not in PROBE_DEFAULTS:
                problems.append(
                    (
                        f"probe.{key}",
                        f"unknown setting{did_you_mean(str(key), PROBE_DEFAULTS)}; valid: {', '.join(PROBE_DEFAULTS)}",
                    )
                )
            else:
                probe[key] = value
        if not (is_int(probe["batch"]) and probe["batch"] > 0):
            problems.append(("probe.batch", f"expected a positive integer, got {probe['batch']!r}"))
        limit = probe["max_macs"]
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0):
            problems.append(("probe.max_macs", f"expected a positive number or null, got {limit!r}"))
    elif raw is not True:
        problems.append(("probe", f"expected true, false or a mapping of {', '.join(PROBE_DEFAULTS)}, got {raw!r}"))
    return probe


def probe_line(signal: dict[str, Any]) -> str:
    """``probe: batch 64, loss 0.0123; activation std 1 (input) -> 0.0001 (last layer)``."""
    batch = signal["batch"]
    capped = f" (of {signal['requested_batch']}: probe.max_macs)" if batch != signal["requested_batch"] else ""
    stds = [layer["std"] for layer in signal["layers"] if layer["std"] is not None]
    inputs = [x["std"] for x in signal["inputs"] if x["std"] is not None and x["dtype"].startswith(("float", "bfloat"))]
    loss = signal["loss"]
    text = (
        f"probe: batch {batch}{capped}, loss {loss:.4g}"
        if loss is not None
        else f"probe: batch {batch}{capped}, no loss"
    )
    if stds:
        start = f"{inputs[0]:.3g} (input)" if inputs else f"{stds[0]:.3g} (first layer)"
        text += f"; activation std {start} -> {stds[-1]:.3g} (last layer)"
    return text


# --- what Hydra's composition loses -------------------------------------------------------------


def _choices() -> dict[str, Any]:
    try:
        return dict(HydraConfig.get().runtime.choices)
    except ValueError:  # not under Hydra (a test calling run directly)
        return {}


def check_model_file(recipe: dict[str, Any], name: str | None) -> None:
    """A model file that holds a whole recipe (``model:``, ``input_shape:`` ...) without the
    ``# @package _global_`` header lands entirely under ``model``: say so, rather than report
    ``model.model`` as an unknown key."""
    from composer.recipe.grammar import is_node  # noqa: PLC0415

    node = recipe.get("model")
    if not isinstance(node, dict) or is_node(node):
        return
    keys = [k for k in node if k in RECIPE_KEYS]
    if keys:
        where = f"conf file model/{name}.yaml" if name else "the model file"
        raise ConfigError(
            f"the {where} holds a whole recipe (top-level {', '.join(keys)}) but is read as the model node: "
            "add '# @package _global_' as its first line",
            "model",
        )


def keep_model_file_init(recipe: dict[str, Any], choices: dict[str, Any]) -> None:
    """Put back a model file's own ``init.rules``, before the chosen scheme's.

    A ``# @package _global_`` model file may carry ``init: {seed, rules}``; Hydra merges the
    ``init`` group after it and replaces lists, so the file's rules would be lost to the
    scheme's (``init=default``: none at all). The file is read again through Hydra's search path
    (a ``--config-dir`` first) and its rules go first: a later rule wins, so the scheme's apply
    over them where both reach a parameter.
    """
    name, scheme = choices.get("model"), choices.get("init")
    if name is None or scheme is None:
        return  # init=null: the file's init section is all there is, already in place
    own = _model_file_rules(str(name))
    if not own:
        return
    init = recipe.get("init")
    if not isinstance(init, dict):
        init = recipe["init"] = {}
    scheme_rules = init.get("rules") or []
    init["rules"] = [*own, *(scheme_rules if isinstance(scheme_rules, list) else [scheme_rules])]


def _model_file_rules(name: str) -> list[Any]:
    from hydra._internal.config_repository import ConfigRepository  # noqa: PLC0415
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl  # noqa: PLC0415

    search_path = ConfigSearchPathImpl()
    for source in HydraConfig.get().runtime.config_sources:
        if source.schema in ("file", "pkg"):
            search_path.append(source.provider, f"{source.schema}://{source.path}")
    loaded = ConfigRepository(search_path).load_config(f"model/{name}")
    if loaded is None or loaded.header.get("package") != "_global_":
        return []
    init = loaded.config.get("init") if isinstance(loaded.config, DictConfig) else None
    rules = init.get("rules") if isinstance(init, DictConfig) else None
    return list(OmegaConf.to_container(rules, resolve=False)) if rules is not None else []


def recipe_of(cfg: DictConfig) -> dict[str, Any]:
    """The recipe part of a job's config, in the recipe's key order: app keys and unset (null)
    top-level keys left out. Interpolations stay for the builder to resolve (errors name the key)."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    keys = [*(k for k in RECIPE_KEYS if k in tree), *(k for k in tree if k not in RECIPE_KEYS)]
    return {k: tree[k] for k in keys if k not in APP_KEYS and tree[k] is not None and tree[k] != "???"}


def reset_job_state(seed: int | None) -> None:
    """What one job may leave for the next in the same process (the basic launcher): the RNGs.

    Seeding at the start of every job makes a job's result the same whichever launcher runs it.
    """
    if seed is None:
        return
    import torch  # noqa: PLC0415

    random.seed(seed)
    torch.manual_seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)


def check_line(model: Any) -> str:
    from composer.describe.summarize import format_bytes  # noqa: PLC0415

    params = list(model.parameters())
    count = sum(p.numel() for p in params)
    size = sum(p.numel() * p.element_size() for p in params)
    return (
        f"check: the recipe is valid; {count:,} parameters ({format_bytes(size)}), "
        "built on the meta device: no weights allocated"
    )


# --- errors on one line -----------------------------------------------------------------------


def is_input_error(e: BaseException) -> bool:
    """A problem in what the user wrote or where it goes, rather than a bug of ours."""
    return isinstance(e, (ConfigError, CheckpointError, CompactHydraException, OmegaConfBaseException, OSError))


def one_line(e: BaseException) -> str:
    """``<key path>: <what is wrong>`` for every error a user can cause, on a single line."""
    for kind, formatter in _ONE_LINE:
        if isinstance(e, kind):
            line = formatter(e)
            if line is not None:
                return line
    return _joined(str(e)) if isinstance(e, ValueError) else f"{type(e).__name__}: {_joined(str(e))}"


def _config_error(e: ConfigError) -> str:
    return "; ".join(_joined(line) for line in e.lines())


def _missing_config(e: MissingConfigException) -> str | None:
    """An unknown name in a config group: ``init: no config named 'xaveir' (did you mean ...)``."""
    if e.options is None or "/" not in (e.missing_cfg_file or ""):
        return None
    group, _, name = e.missing_cfg_file.rpartition("/")
    return f"{group}: no config named '{name}'{did_you_mean(name, e.options)}; available: {', '.join(e.options)}"


def _override_parse(e: OverrideParseException) -> str:
    return f"cannot parse override '{e.override}': {_joined(e.message)}"


def _os_error(e: OSError) -> str | None:
    return f"{e.filename}: cannot write: {e.strerror}" if e.filename is not None else None


def _omegaconf(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    return f"{key}: {_joined(getattr(e, 'msg', None) or str(e))}" if key else _joined(str(e))


def _hydra(e: HydraException) -> str:
    """Hydra's own message without its search-path listing; an override of a key that does not
    exist names the closest key of the config."""
    text = _joined(str(e).split("\nConfig search path:")[0])
    unknown_key = re.match(r"Could not override '([^']+)'.*?(use \+\S+)", text)
    if unknown_key:
        key, plus = unknown_key.groups()
        if "." not in key:
            return f"{key}: no such key in the config{did_you_mean(key, CONFIG_KEYS)}; to add it, {plus}"
        return _unknown_nested_key(key, plus, getattr(e.__cause__, "parent_node", None))
    cause = e.__cause__
    if isinstance(e, CompactHydraException) and isinstance(cause, OmegaConfBaseException):
        text += f" ({_joined(getattr(cause, 'msg', None) or str(cause))})"
    return text


def _unknown_nested_key(key: str, plus: str, parent: Any) -> str:
    """``model.layers.0.out_feature``: the closest key of that node or argument of its ``type``
    (``did you mean 'out_features'?``); an argument the type takes but the recipe leaves out is
    added with ``+``."""
    name = key.rpartition(".")[2]
    keys = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
    type_name = parent.get("type") if isinstance(parent, DictConfig) else None
    takes = _arguments_of(type_name) if isinstance(type_name, str) else None
    if takes is not None and name in takes:
        return f"{key}: {type_name} takes {name}, but the recipe does not set it; to set it, {plus}"
    hint = did_you_mean(name, [*keys, *(takes or ())])
    if hint:
        return f"{key}: no such key in the config{hint}"
    known = f" ({type_name} takes: {', '.join(takes)})" if takes else ""
    return f"{key}: no such key in the config{known}; to add it, {plus}"


def _arguments_of(type_name: str) -> list[str] | None:
    """The argument names of a registered type (torch: only when an override named a missing key)."""
    from composer.modules.registry import MODULES  # noqa: PLC0415
    from composer.modules.signatures import arguments  # noqa: PLC0415

    if type_name not in MODULES:
        return None
    signature = arguments(MODULES.lookup(type_name, "type"))
    return [a.name for a in signature.named] if signature is not None else None


# Tried in order; a formatter that returns None passes the error on to the next.
_ONE_LINE: tuple[tuple[type[BaseException], Any], ...] = (
    (ConfigError, _config_error),
    (MissingConfigException, _missing_config),
    (OverrideParseException, _override_parse),
    (OSError, _os_error),
    (OmegaConfBaseException, _omegaconf),
    (HydraException, _hydra),
)


def _joined(text: str) -> str:
    """Lines joined, without OmegaConf's ``full_key:`` / ``object_type=`` detail lines."""
    lines = (line.strip() for line in str(text).splitlines())
    return " ".join(line for line in lines if line and not line.startswith(_OMEGACONF_DETAIL))


_OMEGACONF_DETAIL = ("full_key:", "object_type=", "reference_type=", "value_type=")


# --- the search path: a user's --config-dir first ---------------------------------------------


class UserConfigFirst(SearchPathPlugin):
    """The app's config folders, read the guarded way (``confsource``), and ``--config-dir DIR``
    searched before the packaged ``conf/``, so the user's ``DIR/model/x.yaml`` shadows ours.

    Hydra itself adds ``--config-dir`` after the app's own path (hydra #2758), and only after the
    search-path plugins ran, with its own file source; so this reads it from the command line with
    Hydra's own parser and puts it in twice, guarded: first (its recipe groups only) and where
    Hydra puts it (all of it). Hydra's own entry comes after that second one, with the same files:
    every file it could serve is served, guarded, before it."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for entry in search_path.get_path():
            if entry.path is not None and (entry.path.startswith("file://") or "://" not in entry.path):
                entry.path = guarded(entry.path)
        user_dir, extra = _command_line(sys.argv[1:])
        if user_dir is not None and os.path.isdir(user_dir):
            path = guarded(os.path.abspath(user_dir))
            search_path.prepend(provider=USER_PROVIDER, path=path, anchor=SearchPathQuery(provider="main"))
            search_path.append(provider="composer-config-dir-rest", path=path)
        # hydra.searchpath=[...]: Hydra appends these after the plugins ran, with its own file
        # source; the guarded copies, appended here, come before them in the same order
        for entry in extra:
            if entry.startswith("file://") or "://" not in entry:
                search_path.append(provider="composer-searchpath", path=guarded(entry))


class _ArgumentError(Exception):
    pass


def _command_line(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """``--config-dir`` and the entries of a ``hydra.searchpath=[...]`` override, read with Hydra's
    own parsers (a malformed command line gives neither: Hydra reports it itself, later)."""
    from hydra._internal.utils import get_args_parser  # noqa: PLC0415  (Hydra's own flags, exactly)
    from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: PLC0415

    parser = get_args_parser()

    def error(message: str) -> None:
        raise _ArgumentError(message)

    parser.error = error  # type: ignore[method-assign]  # Hydra reports bad flags itself, later
    try:
        args, _ = parser.parse_known_args(list(argv))
        overrides = OverridesParser.create().parse_overrides(list(args.overrides or []))
    except (_ArgumentError, SystemExit, HydraException):
        return None, []
    paths = next((o.value() for o in overrides if o.get_key_element() == "hydra.searchpath"), None)
    listed = [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []
    return args.config_dir, listed


# --- subcommands: list, schema and inspect, without Hydra--------------------------------------------

SUBCOMMANDS = ("list", "schema", "inspect")


def _subcommand(argv: Sequence[str]) -> Any:
    """The function of ``list``, ``schema`` or ``inspect`` when the first word after ``--config-dir DIR`` is one
    (a Hydra override always holds ``=``, so the words cannot be mistaken for one); else None."""
    rest = _without_config_dir(argv)
    if rest and rest[0] in SUBCOMMANDS:
        return {"list": list_command, "schema": schema_command, "inspect": inspect_command}[rest[0]]
    return None


def _without_config_dir(argv: Sequence[str]) -> list[str]:
    rest, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--config-dir", "-cd"):
            args[:1] = []
        elif not arg.startswith("--config-dir="):
            rest.append(arg)
    return rest


def list_command(argv: Sequence[str]) -> int:
    """``list [types|inits|ops|templates|recipes] [NAME]``: what a recipe can name."""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="python -m composer list",
        description="What a recipe can name: module types with their arguments, initializers, ops, the "
        "templates (blocks) of the recipes, and the model recipes and init schemes (--config-dir DIR first).",
    )
    parser.add_argument("word", choices=["list"], help=argparse.SUPPRESS)
    parser.add_argument("kind", nargs="?", help="types, inits, ops, templates or recipes; none: an overview")
    parser.add_argument("name", nargs="?", help="one of them: a type's arguments, a recipe's file, ...")
    parser.add_argument("--config-dir", "-cd", help="your own conf directory (model/, init/), searched first")
    args = parser.parse_args(list(argv))
    try:
        from composer.describe.listing import list_text  # noqa: PLC0415  (torch: the registries)
        from composer.modules.ops import OPS  # noqa: PLC0415

        dirs = [*([args.config_dir] if args.config_dir else []), CONF_DIR]
        print(printable(list_text(args.kind, args.name, conf_dir=dirs, ops=OPS)))
    except Exception as e:  # noqa: BLE001
        return fail(e)
    return 0


def inspect_command(argv: Sequence[str]) -> int:
    """``inspect CKPT [CKPT ...]``: what a checkpoint holds, without running it."""
    from composer.app.inspect import main as inspect_main  # noqa: PLC0415  (torch)

    return inspect_main(_without_config_dir(argv)[1:])


def schema_command(argv: Sequence[str]) -> int:
    """``schema``: the JSON Schema of recipes, for an editor (yaml-language-server)."""
    import argparse  # noqa: PLC0415
    import json  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="python -m composer schema",
        description="Print the JSON Schema (draft 2020-12) of recipes: python -m composer schema > recipe.schema.json, "
        "then '# yaml-language-server: $schema=recipe.schema.json' atop a recipe.",
    )
    parser.add_argument("word", choices=["schema"], help=argparse.SUPPRESS)
    parser.add_argument("--indent", type=int, default=None, help="indent the JSON (default: one compact line)")
    parser.add_argument("--config-dir", "-cd", help=argparse.SUPPRESS)  # accepted as for list; not used
    args = parser.parse_args(list(argv))
    try:
        from composer.describe.schema import recipe_schema  # noqa: PLC0415
        from composer.modules.ops import OPS  # noqa: PLC0415  (torch: the registries)

        print(json.dumps(recipe_schema(ops=OPS), indent=args.indent))
    except Exception as e:  # noqa: BLE001
        return fail(e)
    return 0


# --- entry point ------------------------------------------------------------------------------

_hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(task)


def main() -> None:
    """``python -m composer`` (or ``nncompose``): the subcommands ``list``, ``schema`` and ``inspect``, else the
    Hydra app, with one-line errors and a non-zero exit for a sweep in which a job failed."""
    subcommand = _subcommand(sys.argv[1:])
    if subcommand is not None:
        sys.exit(subcommand(sys.argv[1:]))
    global _full_error
    Plugins.instance().register(GuardedConfigSource)  # recipe files hold recipes: no Hydra keys, within budgets
    Plugins.instance().register(UserConfigFirst)
    _full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises, instead of printing a trimmed traceback
    try:
        _hydra_main()
    except Exception as e:  # noqa: BLE001
        sys.exit(fail(e))
    finally:
        if not _full_error:
            del os.environ["HYDRA_FULL_ERROR"]
    report = sys.modules.get("composer.app.report")
    failed = report.last_failures() if report is not None else []
    if failed:
        print(f"error: {len(failed)} job(s) of the sweep failed: " + "; ".join(failed), file=sys.stderr)
        sys.exit(1)


def fail(e: BaseException) -> int:
    """Print ``error: <one line>`` (after the traceback when the user set HYDRA_FULL_ERROR=1);
    return the exit status."""
    if isinstance(e, BrokenPipeError):  # the reader left (`| head`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    if _full_error:
        traceback.print_exception(e)
    print(f"error: {printable(one_line(e), keep_newlines=False)}", file=sys.stderr)
    return 1
