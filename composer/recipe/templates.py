"""Templates with arguments: ``blocks: {name: {args: ..., body: node}}`` and ``{use: name, <args>}``.

A template is parsed once (``parse_template``): its arguments (``???`` marks a required one), and
every reference its body makes, each checked against the arguments. ``expand`` then returns an
independent copy of the body with each whole-string value replaced: ``$name`` by the argument's
value (any YAML value), ``$(expression)`` by the value of a small arithmetic evaluator over the
arguments. The evaluator walks a Python ``ast`` of the expression and allows numbers, argument
names, ``+ - * / // % **``, unary ``-`` and ``+``, parentheses, ``min``, ``max`` and math's ``abs``,
``round``, ``int``, ``float``, ``sqrt``, ``log``, ``exp``, ``floor``, ``ceil`` (bounded results):
anything else is refused before anything is evaluated, and nothing ever reaches ``eval`` or ``exec``.
``composer.recipe.expressions`` uses it for ``$(...)`` over ``vars`` anywhere in a recipe.

A Repeat whose body is a ``use:`` node may pass the copy's index to that node's arguments as ``$i``
or inside an expression: ``substitute_index(use_node, i, key_path)`` fills it in for copy ``i``.
Inside a template body, such an argument may mix ``i`` with the template's own arguments
(``$(c * 2 ** i)``): expansion substitutes the arguments and leaves ``i`` for the Repeat.

The builder expands ``use:`` nodes lazily as it walks (a body may use other templates); it detects
a cycle of templates with a stack of ``Template.name``.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import keyword
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from composer.errors import ConfigError, did_you_mean
from composer.recipe.grammar import NODE_MARKERS, REPEAT, USE, arguments_of
from composer.recipe.walk import child_path

REQUIRED = "???"  # as in OmegaConf: an argument without a default
USE_KEYS = USE.reserved  # the keys of a use: node that are not arguments (use, init, frozen, in)
TEMPLATE_KEYS = ("args", "body")
INDEX = "i"  # the copy's index, in the arguments of a use: node that is a Repeat body
MAX_EXPRESSION = 400  # characters: longer is refused before parsing
MAX_BITS = 256  # an integer result larger than 2**256 in magnitude is refused

_NAME = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_EXPR = re.compile(r"\$\((.*)\)", re.DOTALL)
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min, "max": max, "abs": abs, "round": round, "int": int, "float": float,
    "sqrt": math.sqrt, "log": math.log, "exp": math.exp, "floor": math.floor, "ceil": math.ceil,
}  # fmt: skip
_ARITY = {"min": (2, None), "max": (2, None), "round": (1, 2), "log": (1, 2)}  # (least, most); others: (1, 1)
_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: None,  # bounded: see _power
}
_UNARY = {ast.USub: lambda a: -a, ast.UAdd: lambda a: +a}


@dataclass(frozen=True)
class Template:
    """A parsed template.

    Attributes:
        name: its name under ``blocks``.
        args: argument name -> default; ``REQUIRED`` for one without.
        body: the node, with its ``$`` references (as in the recipe).
        key_path: where it is defined (``blocks.basic``), for errors.
        uses: argument name -> how many references of the body paste it (what one ``expand`` copies).
        size: the values of the body (what one ``expand`` walks).
    """

    name: str
    args: Mapping[str, Any]
    body: Any
    key_path: str
    uses: Mapping[str, int] = dataclasses.field(default_factory=dict)
    size: int = 0

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(name for name, default in self.args.items() if default == REQUIRED)


def is_template(entry: Any) -> bool:
    """A ``blocks`` entry is a template when it has ``args`` and is not a node itself."""
    return isinstance(entry, Mapping) and "args" in entry and not any(key in entry for key in NODE_MARKERS)


def is_use(node: Any) -> bool:
    """A ``use:`` node: a mapping with ``use``."""
    return isinstance(node, Mapping) and USE.marker in node


def split_use(node: Mapping[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``{use: name, in: .., init: .., frozen: .., **args}`` -> ``(name, args, {in, init, frozen})``."""
    extras = {k: v for k, v in node.items() if k in USE_KEYS and k != USE.marker}
    return node.get(USE.marker), arguments_of(node, USE), extras


# --- references: $name and $(expression) ---------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    """A parsed whole-string reference: ``$name`` (tree None) or ``$(expression)``."""

    text: str
    names: frozenset[str]
    tree: ast.expr | None = None


@functools.lru_cache(maxsize=4096)
def _parse_ref(value: str) -> _Ref | None:
    """The reference a string starting with ``$`` makes, None for a plain string; ``ConfigError`` (no
    path) when it is a malformed or forbidden expression. Cached: a template used 100 times parses
    its expressions once."""
    if m := _NAME.fullmatch(value):
        return _Ref(value, frozenset([m.group(1)]))
    if m := _EXPR.fullmatch(value):
        tree = _parse_expression(m.group(1))
        return _Ref(value, frozenset(_names(tree)), tree)
    return None  # "$5", "$ x": plain strings


def _parse_expression(text: str) -> ast.expr:
    if len(text) > MAX_EXPRESSION:
        raise ConfigError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ConfigError(f"invalid expression $({text}): {getattr(e, 'msg', None) or type(e).__name__}") from None
    for node in ast.walk(tree):
        _check_node(node, text)
    return tree


def _check_node(node: ast.AST, text: str) -> None:
    """Refuse every syntax the evaluator does not define; what is allowed is listed, not what is not."""
    where = f"in $({text})"
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise ConfigError(f"operator {type(node.op).__name__} is not allowed {where}; allowed: + - * / // % **")
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise ConfigError(f"operator {type(node.op).__name__} is not allowed {where}; allowed: unary - and +")
    elif isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):
            raise ConfigError(f"only numbers may appear as constants {where}, not {node.value!r}")
    elif isinstance(node, ast.Name):
        if not isinstance(node.ctx, ast.Load):
            raise ConfigError(f"assignment is not allowed {where}")
    elif isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS) or node.keywords:
            called = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise ConfigError(f"calling {called} is not allowed {where}; the functions are {', '.join(_FUNCTIONS)}")
        least, most = _ARITY.get(node.func.id, (1, 1))
        count = len(node.args)
        if count < least or (most is not None and count > most) or any(isinstance(a, ast.Starred) for a in node.args):
            wanted = f"{least} or more" if most is None else f"{least}" if least == most else f"{least} or {most}"
            raise ConfigError(f"{node.func.id} takes {wanted} number{'s' if most != 1 else ''} {where}")
    elif isinstance(node, (ast.operator, ast.unaryop, ast.expr_context)):
        pass  # the operator and context leaves of the nodes checked above
    else:
        what = {ast.Attribute: "attribute access", ast.Subscript: "subscripting", ast.Lambda: "lambda"}.get(
            type(node), type(node).__name__
        )
        raise ConfigError(
            f"{what} is not allowed {where}; allowed: numbers, argument names, + - * / // % **, {', '.join(_FUNCTIONS)}"
        )


def _names(tree: ast.expr) -> list[str]:
    """The argument names an expression reads (not the names of the functions it calls)."""
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in calls]


def evaluate(tree: ast.expr, env: Mapping[str, Any]) -> Any:
    """The value of a checked expression tree; ``ConfigError`` (no path) for a failure.

    Arithmetic takes numbers (not booleans); a bare name returns the argument's value as it is.
    Integer results beyond ``2**MAX_BITS``, non-finite or complex results are refused.
    """
    if isinstance(tree, ast.Name):
        return env[tree.id]
    return _arith(tree, env)


@functools.lru_cache(maxsize=1024)
def index_expression(text: str) -> ast.expr:
    """A checked expression over ``i`` alone, as a Repeat's ``names`` holds one in each field
    (``"layer{i + 1}"``), for ``evaluate`` with ``{"i": index}``.

    Raises:
        ConfigError: (no path) a malformed or forbidden expression, or one that reads another name.
    """
    tree = _parse_expression(text)
    others = sorted(set(_names(tree)) - {INDEX})
    if others:
        raise ConfigError(f"only i, the copy's index, is available in {{{text}}}, not {', '.join(others)}")
    return tree


def _arith(node: ast.expr, env: Mapping[str, Any]) -> int | float:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        value = env[node.id]
        if type(value) not in (int, float):
            raise ConfigError(f"{node.id} is {value!r}, not a number")
        return value
    if isinstance(node, ast.UnaryOp):
        return _bounded(_UNARY[type(node.op)](_arith(node.operand, env)))
    if isinstance(node, ast.Call):
        args = [_arith(a, env) for a in node.args]
        if node.func.id == "round" and len(args) == 2 and not (type(args[1]) is int and abs(args[1]) <= 400):
            raise ConfigError(f"round's digits are an integer in [-400, 400], not {args[1]!r}")  # 10**-10**9: hours
        try:
            return _bounded(_FUNCTIONS[node.func.id](*args))
        except (ValueError, OverflowError, ZeroDivisionError) as e:  # sqrt(-1), log(0), exp(1000), log(2, 1)
            raise ConfigError(f"{ast.unparse(node)} fails for {', '.join(map(repr, args))}: {e}") from None
    if isinstance(node, ast.BinOp):
        left, right = _arith(node.left, env), _arith(node.right, env)
        try:
            if isinstance(node.op, ast.Pow):
                return _bounded(_power(left, right))
            return _bounded(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ConfigError(f"division by zero in {ast.unparse(node)}") from None
        except OverflowError:
            raise ConfigError(f"{ast.unparse(node)} overflows") from None
    raise ConfigError(f"cannot evaluate {ast.unparse(node)}")  # unreachable after _check_node


def _power(base: int | float, exponent: int | float) -> int | float:
    """``base ** exponent``, refused before computing when the result would be absurdly large."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * abs(base).bit_length() > MAX_BITS + 1:
            raise ConfigError(f"{base} ** {exponent} is too large (more than 2**{MAX_BITS})")
    result = base**exponent
    if isinstance(result, complex):
        raise ConfigError(f"{base} ** {exponent} is not a real number")
    return result


def _bounded(value: int | float) -> int | float:
    if isinstance(value, int) and abs(value) > 1 << MAX_BITS:
        raise ConfigError(f"a result larger than 2**{MAX_BITS}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"a non-finite result ({value})")
    return value


# --- walking a body ------------------------------------------------------------------------------

# A key path as ``_walk`` carries it: a string, or (parent, key) and (parent, key, None) for
# ``parent.key`` written as it is: joined into a string only where a reference or a problem needs
# it (most of a body holds none, and formatting every key's path was most of an expansion's cost).
_Path = str | tuple


Visit = Callable[[_Ref, _Path, bool], Any]


def _is_repeat_of_use(node: Mapping[str, Any]) -> bool:
    return node.get(REPEAT.marker) == REPEAT.type_name and is_use(node.get("body"))


def _path_text(path: _Path) -> str:
    if type(path) is str:
        return path
    if len(path) == 3:
        return f"{_path_text(path[0])}.{path[1]}"
    return child_path(_path_text(path[0]), path[1])


def _walk(value: Any, path: _Path, visit: Visit, problems: list[tuple[str, str]], indexed: bool = False) -> Any:
    """A copy of ``value`` with every reference replaced by ``visit(ref, path, indexed)``.

    ``indexed`` is True inside the arguments of a ``use:`` node that is a Repeat body, where ``i``
    is the copy's index. A malformed or forbidden expression becomes a problem at its path, and
    the string stays as it was.
    """
    if type(value) is str:
        if not value.startswith("$"):
            return value
        try:
            ref = _parse_ref(value)
        except ConfigError as e:
            problems.append((_path_text(path), e.problems[0][1]))
            return value
        return value if ref is None else visit(ref, path, indexed)
    if isinstance(value, Mapping):
        repeat = _is_repeat_of_use(value)
        out = {}
        for key, item in value.items():
            sub = (path, key)
            if repeat and key == "body":
                out[key] = {k: _walk(v, (sub, k, None), visit, problems, k not in USE_KEYS) for k, v in item.items()}
            else:
                out[key] = _walk(item, sub, visit, problems, indexed)
        return out
    if isinstance(value, (list, tuple)):
        return [_walk(item, (path, i), visit, problems, indexed) for i, item in enumerate(value)]
    return value


def _copy(value: Any) -> Any:
    """An independent copy of a YAML value (mappings, lists, scalars)."""
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


# --- parsing -------------------------------------------------------------------------------------


def parse_template(name: str, entry: Mapping[str, Any], key_path: str = "") -> Template:
    """A ``blocks`` entry with ``args`` and ``body`` -> ``Template``.

    Args:
        name: the template's name.
        entry: ``{args: {c: ???, stride: 1} | [c, stride] | null, body: node}``.
        key_path: where the entry sits (``blocks.basic``; default ``blocks.<name>``).

    Raises:
        ConfigError: every problem at once: malformed ``args``, a missing ``body``, an unknown key,
        an invalid argument name, a reference to an undeclared argument (with the closest name), a
        forbidden expression, or a declared argument the body never uses.
    """
    key_path = key_path or f"blocks.{name}"
    problems: list[tuple[str, str]] = []
    for key in entry:
        if key not in TEMPLATE_KEYS:
            hint = did_you_mean(str(key), TEMPLATE_KEYS)
            problems.append((f"{key_path}.{key}", f"a template takes no key {key!r}{hint}; valid: args, body"))
    args = _declared_args(entry.get("args"), f"{key_path}.args", problems)
    declared = [arg for arg in args if isinstance(arg, str)]  # for the hints
    invalid: set[Any] = set()
    for arg in args:
        if not isinstance(arg, str) or not arg.isidentifier() or keyword.iskeyword(arg) or arg in USE_KEYS:
            why = f"argument name {arg!r} must be an identifier, not a keyword nor one of {', '.join(USE_KEYS)}"
            problems.append((f"{key_path}.args", why))
            invalid.add(arg)
    if "body" not in entry:
        problems.append((f"{key_path}.body", "missing: the node the template stands for"))
    used: dict[str, int] = {}

    def visit(ref: _Ref, path: _Path, indexed: bool) -> Any:
        names = ref.names - {INDEX} if indexed else ref.names
        for arg in names:
            if arg not in declared:
                hint = did_you_mean(arg, declared)
                known = ", ".join(declared) or "none"
                problems.append(
                    (_path_text(path), f"template {name!r} has no argument {arg!r}{hint}; arguments: {known}")
                )
            used[arg] = used.get(arg, 0) + 1
        return ref.text

    malformed: list[tuple[str, str]] = []
    _walk(entry.get("body"), f"{key_path}.body", visit, malformed)
    problems += malformed
    for arg in args:
        if (
            arg not in used and arg not in invalid and "body" in entry and not malformed
        ):  # a malformed reference may use it
            problems.append(
                (f"{key_path}.args.{arg}", f"argument {arg!r} of template {name!r} is used nowhere in its body")
            )
    if problems:
        raise ConfigError(problems)
    body = _copy(entry["body"])
    return Template(name, args, body, key_path, used, size_of(body))


def _declared_args(raw: Any, path: str, problems: list[tuple[str, str]]) -> dict[Any, Any]:
    """``args``: a mapping of name: default (``???``: required), a list of required names, or
    null; its problems appended at ``path``."""
    if isinstance(raw, Mapping):
        return {k: (REQUIRED if v == REQUIRED else v) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)) and not all(isinstance(arg, str) for arg in raw):
        problems.append((path, f"expected a list of argument names, got {raw!r}"))
    elif isinstance(raw, (list, tuple)):
        args = dict.fromkeys(raw, REQUIRED)
        if len(args) < len(raw):
            problems.append((path, "an argument is listed twice"))
        return args
    elif raw is not None:
        problems.append((path, f"expected a mapping of name: default or a list of names, got {raw!r}"))
    return {}


def parse_templates(
    blocks: Mapping[str, Any] | None, key_path: str = "blocks", problems: list[tuple[str, str]] | None = None
) -> dict[str, Template]:
    """Every template of a recipe's ``blocks`` (the entries with ``args``), all problems at once:
    raised, or with ``problems``, appended there and the valid templates returned (the builder
    then expands those, and reports a broken one once, not again as unknown at each use)."""
    templates: dict[str, Template] = {}
    found: list[tuple[str, str]] = []
    for name, entry in (blocks or {}).items():
        if is_template(entry):
            try:
                templates[name] = parse_template(name, entry, f"{key_path}.{name}")
            except ConfigError as e:
                found += e.problems
    if found and problems is None:
        raise ConfigError(found)
    if problems is not None:
        problems += found
    return templates


# --- expansion -----------------------------------------------------------------------------------


def size_of(value: Any, stop: int | None = None) -> int:
    """The values in ``value`` (each mapping, list and scalar counts one), counted until past ``stop``."""
    total, pending = 0, [value]
    while pending and (stop is None or total <= stop):
        item = pending.pop()
        total += 1
        if isinstance(item, Mapping):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return total


def expand(
    template: Template, given_args: Mapping[str, Any], key_path: str, spend: Callable[[int], None] | None = None
) -> Any:
    """An independent copy of the template's body with its arguments substituted.

    Args:
        template: from ``parse_template``.
        given_args: the ``use:`` node's arguments (``split_use(node)[1]``).
        key_path: the ``use:`` node's path, for errors.
        spend: told, before any copy is made, how many values the expansion walks and copies (the
            body, the arguments, each argument once per paste): a caller's budget, which raises
            when it runs out. Templates that each pass ``[$x, $x]`` to the next make 2**40 values
            from 40 lines; a 100,000-value argument pasted 4,000 times, 4 * 10**8.

    Raises:
        ConfigError: an unknown argument (with the closest name), a missing required one, a given
        value that still holds a ``$`` reference (one outside any template), or an expression that
        fails on these values (division by zero, a non-number, a result too large).
    """
    problems: list[tuple[str, str]] = []
    for arg in given_args:
        if arg not in template.args:
            hint = did_you_mean(str(arg), template.args)
            problems.append(
                (
                    f"{key_path}.{arg}",
                    f"template {template.name!r} has no argument {arg!r}{hint}; "
                    f"arguments: {', '.join(template.args) or 'none'}",
                )
            )
    missing = [a for a in template.required if given_args.get(a, REQUIRED) == REQUIRED]
    if missing:
        names = ", ".join(repr(a) for a in missing)
        problems.append(
            (key_path, f"template {template.name!r} needs argument{'s' if len(missing) > 1 else ''} {names}")
        )

    def stray(ref: _Ref, path: _Path, indexed: bool) -> Any:
        if not (indexed and ref.names <= {INDEX}):
            problems.append(
                (
                    _path_text(path),
                    f"{ref.text!r} refers to an argument outside any template body "
                    f"(only $i, the copy's index, may stay: in a Repeat body's use: arguments)",
                )
            )
        return ref.text

    env = {**template.args, **given_args}
    if spend is not None:
        _spend_on(template, given_args, env, spend)
    for arg, value in given_args.items():
        _walk(value, f"{key_path}.{arg}", stray, problems)
    if problems:
        raise ConfigError(problems)

    def substitute(ref: _Ref, path: _Path, indexed: bool) -> Any:
        try:
            if indexed and INDEX in ref.names:
                return _partial(ref, env)
            if ref.tree is None:
                return _copy(env[next(iter(ref.names))])
            return evaluate(ref.tree, env)
        except ConfigError as e:
            problems.append((key_path, f"{e.problems[0][1]} (in template {template.name!r} at {_path_text(path)})"))
            return ref.text

    body = _walk(template.body, f"{template.key_path}.body", substitute, problems)
    if problems:
        raise ConfigError(problems)
    return body


def _spend_on(
    template: Template, given_args: Mapping[str, Any], env: Mapping[str, Any], spend: Callable[[int], None]
) -> None:
    """Tell ``spend`` what ``expand`` walks (the body, the given arguments) and copies (an
    argument per paste), before it does; each call may raise, so no size is counted past it."""
    given = sum(size_of(given_args[arg]) for arg in given_args if arg in template.args)
    spend(template.size + 2 * given)  # the given arguments are walked twice: sized, then checked for $ references
    for arg, uses in template.uses.items():
        if arg in env:
            spend(uses * size_of(env[arg]))


def _partial(ref: _Ref, env: Mapping[str, Any]) -> str:
    """``$(c * 2 ** i)`` with ``c`` known: ``$(64 * 2 ** i)``, for the Repeat to finish."""
    if ref.tree is None:
        return ref.text  # "$i"

    class Fill(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            if node.id == INDEX:
                return node
            value = env[node.id]
            if type(value) not in (int, float):
                raise ConfigError(f"{node.id} is {value!r}, not a number")
            return ast.copy_location(ast.Constant(value), node)

        def visit_Call(self, node: ast.Call) -> ast.AST:
            node.args = [self.visit(a) for a in node.args]
            return node

    tree = Fill().visit(copy.deepcopy(ref.tree))
    return f"$({ast.unparse(tree)})"


def substitute_index(use_node: Mapping[str, Any], i: int, key_path: str) -> dict[str, Any]:
    """A copy of a Repeat body's ``use:`` node for copy ``i``: ``$i`` and expressions over ``i`` in its
    arguments evaluated; ``in``, ``init`` and ``frozen`` kept as they are.

    Raises:
        ConfigError: a reference to any other name (arguments of an outer template are substituted
        before this; none is left here), or an expression that fails for this ``i``.
    """
    problems: list[tuple[str, str]] = []

    def visit(ref: _Ref, path: _Path, indexed: bool) -> Any:
        others = ref.names - {INDEX}
        if others:
            problems.append(
                (
                    _path_text(path),
                    f"{ref.text!r}: only i, the copy's index, is available here, not {', '.join(sorted(others))}",
                )
            )
            return ref.text
        try:
            return i if ref.tree is None else evaluate(ref.tree, {INDEX: i})
        except ConfigError as e:
            problems.append((_path_text(path), f"{e.problems[0][1]} (for i = {i})"))
            return ref.text

    out: dict[str, Any] = {}
    for key, value in use_node.items():
        out[key] = _copy(value) if key in USE_KEYS else _walk(value, f"{key_path}.{key}", visit, problems)
    if problems:
        raise ConfigError(problems)
    return out
