"""The recipe language's outer shape: a YAML path, a dict or a DictConfig becomes one plain dict.

Parsing goes through PyYAML's C loader; interpolations (``${blocks.x}``) are resolved by
``composer.recipe.interpolation``, linear and within the budget (OmegaConf is an order of magnitude slower on a
large tree, expands interpolation chains without bound and resolves ``${oc.env:...}``). Every recipe,
whatever its form, passes ``plain.plain_tree``: the read budgets of ``composer.limits``, keys that
are names, values a file can store.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from composer import limits as budget
from composer.errors import ConfigError, did_you_mean, first_line, unknown
from composer.files import FileProblem, TooLarge, read_regular
from composer.modules.signatures import is_int
from composer.recipe.expressions import resolve_expressions
from composer.recipe.grammar import is_node
from composer.recipe.interpolation import enabled_resolvers, resolve
from composer.recipe.optim import layer_problems, optim_problems
from composer.recipe.parallel import parallel_problems
from composer.recipe.plain import plain_tree

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig

TOP_LEVEL_KEYS = (
    "model",
    "shared",
    "blocks",
    "init",
    "input_shape",
    "inputs",
    "tie",
    "dtype",
    "vars",
    "shard",
    "parallel",
    "optim",
)


_STR = "tag:yaml.org,2002:str"  # a plain string's tag: its text is the key


def _distinct_strings(node: yaml.MappingNode) -> bool:
    """Whether a mapping's keys are all strings, none twice (most mappings): nothing to check."""
    return len({key.value for key, _ in node.value if key.tag == _STR}) == len(node.value)


class _RecipeRules:
    """What composer's loaders read differently from PyYAML's safe loader (see ``YamlLoader``)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode) and not _distinct_strings(node):
            self._refuse_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if key_node.tag == _STR else self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: PyYAML reports it
            if first is not key_node:
                line = first.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key {key!r} given twice (first on line {line})",
                    key_node.start_mark,
                )

    def construct_yaml_int(self, node: yaml.Node) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError as e:
            raise yaml.constructor.ConstructorError(None, None, f"cannot read integer: {e}", node.start_mark) from None

    def refuse_tag(self, node: yaml.Node) -> None:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{node.tag.replace('tag:yaml.org,2002:', '!!')} values have no place in a recipe",
            node.start_mark,
        )


class YamlLoader(_RecipeRules, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader (the C one where built), reading numbers as YAML 1.2 does: ``1e-5``
    is a float, as OmegaConf and every YAML 1.2 reader take it (PyYAML's YAML 1.1 needs a dot).

    As YAML 1.2's core schema, it has no dates (``2001-12-14`` is a string); it refuses
    ``!!binary``, ``!!set``, ``!!omap``, ``!!pairs`` and ``!!timestamp`` (no recipe means them and no
    checkpoint can store them), a key given twice in one mapping (the last one winning silently
    hides a mistake) and an integer Python cannot convert (5,000 digits), each at its line.
    """


_FLOW_END = "\0 \t\r\n\x85\u2028\u2029,]}"


class MissingInFlowLoader(_RecipeRules, yaml.SafeLoader):
    """``YamlLoader`` in Python, reading OmegaConf's ``???`` (a required value) as a plain scalar
    inside ``{...}`` or ``[...]``, as YAML 1.2 does: ``args: {c: ???, stride: 1}``. PyYAML and
    libyaml take a ``?`` in a flow collection for a complex key's indicator and fail; ``parse_yaml``
    reads a text with this loader only then."""

    def _missing(self) -> bool:
        return bool(self.flow_level) and self.prefix(3) == "???" and self.peek(3) in _FLOW_END

    def check_key(self) -> bool:
        return not self._missing() and super().check_key()

    def check_plain(self) -> bool:
        return self._missing() or super().check_plain()

    def scan_plain(self) -> yaml.tokens.ScalarToken:
        if not self._missing():
            return super().scan_plain()
        start = self.get_mark()
        self.forward(3)
        self.allow_simple_key = False
        return yaml.tokens.ScalarToken("???", True, start, self.get_mark())


for _loader in (YamlLoader, MissingInFlowLoader):
    _loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    _loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in _loader.yaml_implicit_resolvers.items()
    }
    _loader.add_constructor("tag:yaml.org,2002:int", _loader.construct_yaml_int)
    for _tag in ("binary", "set", "omap", "pairs", "timestamp"):
        _loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _loader.refuse_tag)
YAML_LOADER = YamlLoader

Recipe = dict[str, Any]

# The dtype names a recipe may write (``dtype: bfloat16``): torch's attribute names.
DTYPES = (
    "float32", "float64", "float16", "bfloat16", "float", "double", "half",
    "int8", "int16", "int32", "int64", "uint8", "long", "int", "bool", "complex64", "complex128",
)  # fmt: skip


def dtype_of(name: Any, path: str) -> torch.dtype:
    """The torch dtype a recipe names, or a ``ConfigError`` with the closest name."""
    import torch  # noqa: PLC0415  (the CLI reads recipes before it pays for torch)

    if isinstance(name, torch.dtype):
        return name
    if isinstance(name, str) and name.removeprefix("torch.") in DTYPES:
        return getattr(torch, name.removeprefix("torch."))
    raise ConfigError(unknown("dtype", name, DTYPES), path)


@dataclass(frozen=True)
class InputSpec:
    """One forward argument of an example batch: zeros of this shape and dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def example_inputs(recipe: Recipe) -> tuple[str, list[InputSpec]] | None:
    """The recipe's example inputs and the key that gave them (``inputs``, or the short form
    ``input_shape``: one float input), checked by ``top_level_problems``; None without either.
    Float inputs take the recipe's ``dtype``."""
    floating = dtype_of(recipe.get("dtype") or "float32", "dtype")
    if recipe.get("inputs") is not None:
        raw = recipe["inputs"]
        items = list(raw.values()) if isinstance(raw, Mapping) else raw
        specs = []
        for item in items:
            dtype = dtype_of(item["dtype"], "inputs") if item.get("dtype") is not None else floating
            specs.append(InputSpec(tuple(item["shape"]), dtype))
        return "inputs", specs
    if recipe.get("input_shape") is not None:
        return "input_shape", [InputSpec(tuple(recipe["input_shape"]), floating)]
    return None


def read_recipe(
    cfg: str | os.PathLike | Mapping | DictConfig,
    *,
    limits: budget.LimitsArg = None,
    resolvers: Collection[str] | str | None = None,
    vars: Mapping[str, Any] | None = None,
) -> Recipe:
    """Read, resolve interpolations and ``$(...)`` over ``vars``; a bare node becomes ``{model: node}``.

    Args:
        cfg: a YAML path, a mapping or a DictConfig; or a packaged recipe's name (``"resnet18"``:
            ``composer/conf/model/resnet18.yaml``).
        limits: budgets beyond those in force (``composer.limits``).
        resolvers: the interpolation resolvers (``oc.env``, ...) the recipe may call; default:
            those named in ``COMPOSER_RESOLVERS``, none if unset.
        vars: values over the recipe's ``vars`` (each must be one of its vars), before anything
            reads them.

    Raises:
        ConfigError: unreadable, not YAML, a budget exceeded, a bad key or value, an interpolation
            that does not resolve, an unknown recipe name or var (with the closest one).
    """
    return read_recipe_and_stored(cfg, limits=limits, resolvers=resolvers, vars=vars)[0]


def read_recipe_and_stored(
    cfg: str | os.PathLike | Mapping | DictConfig,
    *,
    limits: budget.LimitsArg = None,
    resolvers: Collection[str] | str | None = None,
    vars: Mapping[str, Any] | None = None,
) -> tuple[Recipe, Recipe]:
    """``(recipe, stored)``: the recipe to build, and the one to write into files, in which what
    enabled resolvers read stays unresolved (``interpolation.resolve``); most often the same object."""
    recipe, stored, computes = _read(cfg, limits, resolvers, vars)
    if computes:
        resolve_expressions(recipe)
    return recipe, stored


def _read(
    cfg: str | os.PathLike | Mapping | DictConfig,
    limits: budget.LimitsArg,
    resolvers: Collection[str] | str | None,
    overrides: Mapping[str, Any] | None,
) -> tuple[Recipe, Recipe, bool]:
    """``(recipe, stored, computes)``: ``read_recipe_and_stored``'s pair, and whether the recipe
    may hold a ``$(...)`` expression (a string of the file, or one an interpolation made)."""
    with budget.using(limits) as chosen:
        if is_dict_config(cfg):
            data = _dict_config_data(cfg)
        elif isinstance(cfg, (str, os.PathLike)):
            data = _read_yaml(recipe_path(cfg), chosen)
        elif isinstance(cfg, Mapping):
            data = cfg
        else:
            raise ConfigError(f"a recipe is a YAML path, a dict or a DictConfig, not {type(cfg).__name__}")
        if not isinstance(data, Mapping):
            raise ConfigError(f"a recipe is a mapping, not {type(data).__name__}")
        if overrides is not None:
            data = with_vars(data, overrides)
        recipe, interpolates, computes = plain_tree(data, chosen)
        stored = recipe
        if interpolates:  # what an interpolation gives may be an expression
            recipe, stored = resolve(recipe, chosen, enabled_resolvers(resolvers))
            computes = True
    if not isinstance(recipe, dict):
        raise ConfigError(f"a recipe is a mapping, not {type(recipe).__name__}")
    if is_node(recipe):
        wrapped = {"model": recipe}
        return wrapped, wrapped if stored is recipe else {"model": stored}, computes
    return recipe, stored, computes


def is_dict_config(cfg: Any) -> bool:
    """Whether ``cfg`` is an OmegaConf ``DictConfig``, without importing OmegaConf (a tenth of a
    second) where nothing has: then nothing can have made one."""
    omegaconf = sys.modules.get("omegaconf")
    return omegaconf is not None and isinstance(cfg, omegaconf.DictConfig)


def _dict_config_data(cfg: DictConfig) -> Any:
    from omegaconf import OmegaConf  # noqa: PLC0415  (only for a DictConfig, which imported it)
    from omegaconf.errors import OmegaConfBaseException  # noqa: PLC0415

    try:
        return OmegaConf.to_container(cfg, resolve=False)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise ConfigError(f"cannot read the config: {first_line(getattr(e, 'msg', None) or e)}", key) from None


PACKAGED = Path(__file__).resolve().parent.parent / "conf" / "model"  # the recipes shipped with composer


def packaged_recipes() -> list[str]:
    """The names ``build_from_config`` accepts for the recipes shipped in ``composer/conf/model``."""
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def recipe_path(cfg: str | os.PathLike) -> Path:
    """A path as given; a bare name (no folder, no ``.yaml``, no such file) is a packaged recipe's.

    The packaged files are Hydra config files (``# @package _global_``, a comment to YAML): they
    read as recipes as they are.

    Raises:
        ConfigError: a bare name no packaged recipe has, with the closest one.
    """
    path = Path(cfg)
    text = str(cfg)
    if not isinstance(cfg, str) or os.sep in text or "/" in text or path.suffix in (".yaml", ".yml"):
        return path
    try:
        if path.exists():
            return path
    except OSError:  # a name too long for a file name: not a file, and no recipe's name either
        pass
    names = packaged_recipes()
    if text in names:
        return PACKAGED / f"{text}.yaml"
    shown = text if len(text) <= 80 else f"{text[:80]}..."
    raise ConfigError(
        f"no recipe file {shown!r} here and no packaged recipe of that name{did_you_mean(text, names)}; "
        f"packaged: {', '.join(names)}"
    )


def with_vars(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy of ``data`` whose ``vars`` take ``overrides`` (``build_from_config(vars=...)``).

    Raises:
        ConfigError: an override that is not one of the recipe's vars (a typo would else be
        ignored), with the closest name.
    """
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"vars= takes a mapping of name: value, not {type(overrides).__name__}")
    declared = data.get("vars")
    declared = declared if isinstance(declared, Mapping) else {}
    problems = [
        (f"vars.{name}", f"the recipe has no var {name!r}{did_you_mean(str(name), declared)}; "
         f"vars: {', '.join(declared) or 'none'}")
        for name in overrides
        if name not in declared
    ]  # fmt: skip
    if problems:
        raise ConfigError(problems)
    return {**data, "vars": {**declared, **overrides}}


def _read_yaml(path: Path, limits: budget.Limits) -> Any:
    """A recipe file's data: a regular file within ``limits.recipe_bytes``, UTF-8, YAML."""
    try:
        raw = read_regular(path, limits.recipe_bytes)
    except TooLarge as e:
        message = budget.exceeded("recipe_bytes", f"the file ({e.size:,} bytes)", limits.recipe_bytes)
        raise ConfigError(f"cannot read recipe: {message}", str(path)) from None
    except FileProblem as e:
        raise ConfigError(f"cannot read recipe: {e}", str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot read recipe: {e.strerror or e}", str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"cannot read recipe: not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x})", str(path)
        ) from None
    return parse_yaml(text, str(path))


def read_config_text(path: str | os.PathLike, folder: str | os.PathLike | None = None) -> str:
    """A config file's text, read the guarded way: a regular file (no FIFO, device or directory)
    within ``limits.recipe_bytes``, UTF-8, and, with ``folder``, inside that folder once symbolic
    links are followed (a ``--config-dir`` from elsewhere must not show ``~/.aws/credentials``).

    Raises:
        ConfigError: any of these, naming the file.
    """
    limits = budget.current()
    if folder is not None and not _inside(path, folder):
        raise ConfigError(f"a symbolic link out of its config folder {folder}: refused", str(path))
    try:
        raw = read_regular(path, limits.recipe_bytes)
    except TooLarge as e:
        raise ConfigError(budget.exceeded("recipe_bytes", f"the file ({e.size:,} bytes)"), str(path)) from None
    except FileProblem as e:
        raise ConfigError(str(e), str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", str(path)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x})", str(path)) from None


def read_config_file(path: str | os.PathLike, folder: str | os.PathLike | None = None) -> tuple[Any, str]:
    """``(data, text)`` of a config file (``read_config_text``): its YAML read by composer's loader
    as a plain tree within ``limits.nodes`` and ``limits.depth`` (aliases counted expanded).

    Raises:
        ConfigError: as ``read_config_text``, or YAML or a budget, naming the file (and the key).
    """
    text = read_config_text(path, folder)
    where = str(path)
    try:
        data, *_ = plain_tree(parse_yaml(text, where), budget.current())
    except ConfigError as e:
        raise ConfigError([(_in_file(where, p), m) for p, m in e.problems]) from None
    return data, text


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def _in_file(file: str, key: str) -> str:
    """``FILE: key`` (the file alone for its top level), for a problem found in a config file."""
    return file if key in ("", "(recipe)") or key.startswith(file) else f"{file}: {key}"


def parse_yaml(text: str, where: str) -> Any:
    """YAML text -> data, with composer's loader; a ``ConfigError`` at ``where:line:column``."""
    try:
        try:
            return yaml.load(text, Loader=YAML_LOADER)
        except yaml.YAMLError:
            if "???" not in text:
                raise
            return yaml.load(text, Loader=MissingInFlowLoader)  # args: {c: ???}: YAML 1.2 reads it
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        raise ConfigError(f"YAML syntax error: {getattr(e, 'problem', None) or e}", at) from None
    except RecursionError:
        raise ConfigError("YAML nesting too deep to read", where) from None


def top_level_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """Unknown keys (a typo such as ``sahred`` must not pass), a missing model, malformed sections."""
    problems = [
        (key, f"unknown top-level key{did_you_mean(str(key), TOP_LEVEL_KEYS)}; valid: {', '.join(TOP_LEVEL_KEYS)}")
        for key in recipe
        if key not in TOP_LEVEL_KEYS
    ]
    if "model" not in recipe:
        problems.append(("model", "missing: a recipe needs a model node"))
    for key in ("shared", "blocks"):
        if recipe.get(key) is not None and not isinstance(recipe[key], Mapping):
            problems.append((key, f"expected a mapping of name: node, got {type(recipe[key]).__name__}"))
    shape = recipe.get("input_shape")
    if shape is not None and not _is_shape(shape):
        problems.append(("input_shape", f"expected a list of positive integers such as [2, 20], got {shape!r}"))
    problems += _inputs_problems(recipe.get("inputs"))
    if recipe.get("input_shape") is not None and recipe.get("inputs") is not None:
        problems.append(("inputs", "give inputs or input_shape (its short form for one float input), not both"))
    problems += _tie_problems(recipe.get("tie"))
    if recipe.get("dtype") is not None:
        try:
            if not dtype_of(recipe["dtype"], "dtype").is_floating_point:  # the default dtype of every tensor made
                floating = ("float32", "bfloat16", "float16", "float64")
                problems.append(
                    ("dtype", f"a model's dtype is a floating one ({', '.join(floating)}), got {recipe['dtype']!r}")
                )
        except ConfigError as e:
            problems += e.problems
    problems += _shard_problems(recipe.get("shard"))
    problems += parallel_problems(recipe.get("parallel"))
    problems += optim_problems(recipe.get("optim"))
    return problems


def _tie_problems(raw: Any) -> list[tuple[str, str]]:
    """``tie: {dst: src}``; an entry may also be ``{src: path, when: bool}``, so a var such as
    transformers' ``tie_word_embeddings`` turns a tie on or off (``when: ${vars.tie_word_embeddings}``)."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return [("tie", f"expected a mapping of dst: src parameter paths, got {raw!r}")]
    problems = []
    for dst, src in raw.items():
        if isinstance(src, str):
            continue
        if not isinstance(src, Mapping) or not isinstance(src.get("src"), str):
            problems.append((f"tie.{dst}", f"expected a src parameter path or {{src: path, when: bool}}, got {src!r}"))
            continue
        problems += [(f"tie.{dst}.{k}", unknown("key", k, ("src", "when"))) for k in src if k not in ("src", "when")]
        if not isinstance(src.get("when", True), bool):
            problems.append((f"tie.{dst}.when", f"expected true or false, got {src['when']!r}"))
    return problems


def active_ties(raw: Any) -> dict[str, str]:
    """The ties a recipe's ``tie`` applies, ``dst: src``: entries whose ``when`` is false left out;
    empty when ``tie`` is malformed (``top_level_problems`` reports it)."""
    if raw is None or _tie_problems(raw):
        return {}
    return {dst: src if isinstance(src, str) else src["src"] for dst, src in raw.items()
            if isinstance(src, str) or src.get("when", True)}  # fmt: skip


def _shard_problems(raw: Any) -> list[tuple[str, str]]:
    """``shard: {units: [{layer: Name or [Names]} | {match: glob}, ...]}``: the FSDP units of a
    sharded build (``composer.build.shard``); which modules they select is checked when it shards."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return [("shard", f"expected {{units: [{{layer: Name}} or {{match: glob}}, ...]}}, got {raw!r}")]
    problems = [(f"shard.{k}", unknown("key", k, ("units",))) for k in raw if k != "units"]
    units = raw.get("units")
    if not isinstance(units, list):
        return [*problems, ("shard.units", f"expected a list of {{layer: Name}} or {{match: glob}}, got {units!r}")]
    for i, unit in enumerate(units):
        path = f"shard.units[{i}]"
        if not isinstance(unit, Mapping) or len(unit) != 1:
            problems.append((path, f"expected one of {{layer: Name}} or {{match: glob}}, got {unit!r}"))
            continue
        key, value = next(iter(unit.items()))
        if key == "match":
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                problems.append((f"{path}.match", f"expected a glob over module paths, got {value!r}"))
        elif key == "layer":
            problems += layer_problems(value, f"{path}.layer")
        else:
            problems.append((f"{path}.{key}", unknown("key", key, ("layer", "match"))))
    return problems


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, (list, tuple)) and bool(shape) and all(is_int(d) and d > 0 for d in shape)


def _inputs_problems(raw: Any) -> list[tuple[str, str]]:
    """``inputs``: a list (forward order) or a mapping (by graph input name) of {shape, dtype}."""
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        items = [(f"inputs.{k}", v) for k, v in raw.items()]
    elif isinstance(raw, list):
        items = [(f"inputs[{i}]", v) for i, v in enumerate(raw)]
    else:
        return [("inputs", f"expected a list or a mapping of {{shape: [...], dtype: ...}}, got {raw!r}")]
    problems = []
    for path, item in items:
        if not isinstance(item, Mapping) or not _is_shape(item.get("shape")):
            problems.append((path, f"expected {{shape: [positive integers], dtype: name}}, got {item!r}"))
            continue
        for key in item:
            if key not in ("shape", "dtype"):
                problems.append((f"{path}.{key}", unknown("key", key, ("shape", "dtype"))))
        if item.get("dtype") is not None:
            try:
                dtype_of(item["dtype"], f"{path}.dtype")
            except ConfigError as e:
                problems += e.problems
    return problems
