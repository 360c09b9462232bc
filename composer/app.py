"""The Hydra app: ``python -m composer model=mlp init=xavier``.

A job builds the recipe composed from ``conf/`` (plus ``--config-dir``), prints its summary and
the output shape of a forward pass on ``input_shape``, and writes ``model.safetensors``,
``recipe.yaml`` and ``summary.txt`` into Hydra's output folder. ``check=true`` builds on the
``meta`` device instead and writes nothing but Hydra's own files. A multirun leaves one folder per
job; ``composer.report.SweepReport`` (a Hydra callback) then compares them at the sweep's root.

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

from composer.confsource import install as guard_config_files
from composer.errors import CheckpointError, ConfigError, did_you_mean, printable
from composer.recipe import TOP_LEVEL_KEYS as RECIPE_KEYS
from composer.recipe import example_inputs
from composer.signatures import is_int
from composer.report import CHECKPOINT, ERROR

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
APP_KEYS = ("seed", "check")  # the app's own settings: not part of the recipe
CONFIG_KEYS = (*RECIPE_KEYS, *APP_KEYS)
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
    """Build, summarize and save one recipe (or only check it, on ``meta``)."""
    seed, check = cfg.get("seed"), cfg.get("check")
    if seed is not None and not (is_int(seed) and 0 <= seed < SEED_LIMIT):
        raise ConfigError(f"expected an integer in [0, 2**32) or null, got {seed!r}", "seed")
    if not isinstance(check, bool):
        raise ConfigError(f"expected true or false, got {check!r}", "check")
    reset_job_state(seed)
    recipe = recipe_of(cfg)

    from composer import build_from_config, save_checkpoint, summary  # noqa: PLC0415  (torch)
    from composer.materialize import forward_zeros  # noqa: PLC0415
    from composer.record import record_of  # noqa: PLC0415
    from composer.summarize import shape_of  # noqa: PLC0415

    model = build_from_config(recipe, device="meta" if check else "cpu")
    resolved = record_of(model).recipe
    example = example_inputs(resolved)
    output_shape = shape_of(forward_zeros(model, example[1], key=example[0])) if example and not check else None
    table = summary(model)
    if output_shape is not None:
        table += f"\noutput shape: {output_shape}"
    print(printable(table))
    if check:
        print(check_line(model))
        return

    import yaml  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out / CHECKPOINT, summary=table)
    stored = record_of(model).recipe_to_store  # never what an enabled resolver read
    (out / RECIPE).write_text(yaml.safe_dump(stored, sort_keys=False, default_flow_style=None))
    (out / SUMMARY).write_text(table + "\n")
    print(f"wrote {CHECKPOINT}, {RECIPE} and {SUMMARY} to {out}")


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
    params = list(model.parameters())
    count = sum(p.numel() for p in params)
    size = sum(p.numel() * p.element_size() for p in params)
    return f"check: the recipe is valid; {count:,} parameters ({_bytes(size)}), built on the meta device: no weights allocated"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


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
        hint = did_you_mean(key, CONFIG_KEYS) if "." not in key else ""
        return f"{key}: no such key in the config{hint}; to add it, {plus}"
    cause = e.__cause__
    if isinstance(e, CompactHydraException) and isinstance(cause, OmegaConfBaseException):
        text += f" ({_joined(getattr(cause, 'msg', None) or str(cause))})"
    return text


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
    """Search ``--config-dir DIR`` before the packaged ``conf/``, so the user's ``DIR/model/x.yaml``
    shadows ours. Hydra itself adds it after the app's own path (hydra #2758), and only after the
    search-path plugins ran, so this reads it from the command line with Hydra's own parser."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        user_dir = _config_dir_argument(sys.argv[1:])
        if user_dir is not None and os.path.isdir(user_dir):
            path = f"file://{os.path.abspath(user_dir)}"
            search_path.prepend(provider="composer-config-dir", path=path, anchor=SearchPathQuery(provider="main"))


class _ArgumentError(Exception):
    pass


def _config_dir_argument(argv: Sequence[str]) -> str | None:
    from hydra._internal.utils import get_args_parser  # noqa: PLC0415  (Hydra's own flags, exactly)

    parser = get_args_parser()

    def error(message: str) -> None:
        raise _ArgumentError(message)

    parser.error = error  # type: ignore[method-assign]  # Hydra reports bad flags itself, later
    try:
        args, _ = parser.parse_known_args(list(argv))
    except (_ArgumentError, SystemExit):
        return None
    return args.config_dir


# --- entry point ------------------------------------------------------------------------------

_hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(task)


def main() -> None:
    """``python -m composer``: the Hydra app, with one-line errors and a non-zero exit for a
    sweep in which a job failed."""
    global _full_error
    Plugins.instance().register(UserConfigFirst)
    guard_config_files(CONFIG_KEYS)  # recipe files hold recipes: no Hydra keys, within the budgets
    _full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises, instead of printing a trimmed traceback
    try:
        _hydra_main()
    except Exception as e:  # noqa: BLE001
        sys.exit(fail(e))
    finally:
        if not _full_error:
            del os.environ["HYDRA_FULL_ERROR"]
    report = sys.modules.get("composer.report")
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
