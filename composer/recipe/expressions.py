"""``$(expression)`` in any value of a recipe, over its ``vars``: ``std: $(0.02 / sqrt(2 * vars.n_layer))``.

Templates evaluate ``$(...)`` over their arguments (``composer.recipe.templates``); this module
lets an expression stand anywhere, reading ``vars.NAME``. It runs once on the read recipe, after
``${...}`` interpolation (so a ``vars=`` override or a sweep's ``vars.x=...`` is what it reads),
and replaces in place:

- an expression whose names are all ``vars.*`` (or that has none) by its value;
- an expression that also names a template argument or Repeat's ``i`` (``$(vars.width * 2 ** i)``)
  by the same expression with each ``vars.*`` written as its number, for the template or the
  Repeat to finish (``$(64 * 2 ** i)``);
- ``$(vars.x)`` alone by ``vars.x``'s value, whatever it is.

It reuses the templates' restricted evaluator: the same operators, functions and bounds, and
nothing ever reaches ``eval``. A string that starts with ``$(`` and does not close its parentheses
is an error that says why (in a YAML flow mapping, a comma ends the value: quote the expression).
"""

from __future__ import annotations

import ast
import functools
from typing import Any

from composer.errors import ConfigError, did_you_mean
from composer.recipe.templates import MAX_EXPRESSION, _copy, _parse_ref, evaluate

VARS = "vars"


def resolve_expressions(recipe: dict[str, Any]) -> None:
    """Evaluate, in place, every ``$(...)`` of ``recipe`` that reads ``vars`` or names nothing.

    ``vars`` is resolved first, in its order: a var may be computed from the vars above it.

    Raises:
        ConfigError: every problem at once, each at its key path: an unknown var (with the closest
        name), a var that is not a number in arithmetic, a forbidden or malformed expression, an
        unclosed one, a result out of bounds.
    """
    env = recipe.get(VARS)
    env = env if isinstance(env, dict) else {}
    problems: list[tuple[str, str]] = []
    if env:
        _walk(env, VARS, env, problems)
    for key, value in recipe.items():
        if key != VARS:
            recipe[key] = _walk(value, key, env, problems)
    if problems:
        raise ConfigError(problems)


def _walk(value: Any, path: str | tuple, env: dict[str, Any], problems: list[tuple[str, str]]) -> Any:
    """``value`` with its expressions resolved: containers are changed in place and returned.
    ``path`` is a key path, (parent, key) or (parent, index, None), formatted only where an
    expression is met."""
    if type(value) is str:
        return _resolve(value, _path_text(path), env, problems) if value.startswith("$(") else value
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _walk(item, (path, key), env, problems)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            value[i] = _walk(item, (path, i, None), env, problems)
    return value


def _path_text(path: str | tuple) -> str:
    if type(path) is str:
        return path
    if len(path) == 3:  # (parent, index, None): a list's item
        return f"{_path_text(path[0])}[{path[1]}]"
    return f"{_path_text(path[0])}.{path[1]}"


def _resolve(text: str, path: str, env: dict[str, Any], problems: list[tuple[str, str]]) -> Any:
    inner = text[2:-1] if text.endswith(")") else None
    if inner is None or not _balanced(inner):
        why = "in a YAML flow mapping ({...}) a comma ends the value: quote an expression that holds one"
        problems.append((path, f'{text!r} does not close its parentheses: {why} ("$(max(1, c // 4))")'))
        return text
    if len(inner) > MAX_EXPRESSION:
        problems.append((path, f"expression longer than {MAX_EXPRESSION} characters"))
        return text
    if _left_as_is(inner):
        return text
    try:
        tree = ast.parse(inner.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        problems.append((path, f"invalid expression {text}: {getattr(e, 'msg', None) or type(e).__name__}"))
        return text
    reads = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and _is_vars(n.value)]
    if isinstance(tree, ast.Attribute) and reads == [tree]:  # $(vars.x): its value, any value
        if tree.attr in env:
            return _copy(env[tree.attr])  # a copy: no container in two places of the tree
    filled = _Fill(env, path, problems).visit(tree)
    if not reads and _free_names(filled):
        return text  # a template's arguments or Repeat's i only: theirs to evaluate
    if any(isinstance(n, ast.Name) and n.id == VARS for n in ast.walk(filled)):
        problems.append((path, f"{text}: read a var as vars.NAME"))
        return text
    written = f"$({ast.unparse(filled)})"
    try:
        ref = _parse_ref(written)
        return written if ref.names else evaluate(ref.tree, {})
    except ConfigError as e:
        problems.append((path, f"{e.problems[0][1]} (in {text})"))
        return text


@functools.lru_cache(maxsize=4096)
def _left_as_is(inner: str) -> bool:
    """Whether ``$(inner)`` reads no var and names a template's argument or Repeat's ``i``: it
    stays as it is, for them to evaluate. Cached: a template's expressions come back in every build
    (parsed each time, they were a tenth of a small recipe's build)."""
    try:
        tree = ast.parse(inner.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False  # the full path reports it
    names = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == VARS]
    reads = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and _is_vars(n.value)]
    return not names and not reads and _free_names(tree)


class _Fill(ast.NodeTransformer):
    """``vars.NAME`` -> its number (a negative one as unary minus, so ``**`` keeps its meaning)."""

    def __init__(self, env: dict[str, Any], path: str, problems: list[tuple[str, str]]) -> None:
        self.env, self.path, self.problems = env, path, problems

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if not _is_vars(node.value):
            return self.generic_visit(node)
        if node.attr not in self.env:
            known = ", ".join(self.env) or "none"
            self.problems.append((self.path, f"no var {node.attr!r}{did_you_mean(node.attr, self.env)}; vars: {known}"))
            return ast.Constant(0)
        value = self.env[node.attr]
        if type(value) not in (int, float):
            self.problems.append((self.path, f"vars.{node.attr} is {value!r}, not a number"))
            return ast.Constant(0)
        if value < 0:
            return ast.UnaryOp(ast.USub(), ast.Constant(-value))
        return ast.Constant(value)


def _is_vars(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == VARS


def _free_names(tree: ast.AST) -> bool:
    """Whether the expression names anything but the functions it calls."""
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return any(isinstance(n, ast.Name) and id(n) not in calls for n in ast.walk(tree))


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += (char == "(") - (char == ")")
        if depth < 0:
            return False
    return depth == 0
