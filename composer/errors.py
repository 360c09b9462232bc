"""The two errors a user sees, and the wording they share.

A recipe error carries every problem found in one pass, each with the key path where it sits
(``model.layers[2].type``), so a user fixes a recipe in one round instead of one per run.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Collection, Iterable

SHOWN_PROBLEMS = 50  # a 1 MB recipe can hold 30,000 bad names: its message lists the first ones
LISTED_NAMES = 20  # names a message lists (``known here: a, b, ... (+31980 more)``)


class ConfigError(ValueError):
    """A problem in a recipe: one or more ``(key path, message)`` pairs."""

    def __init__(self, problems: str | list[tuple[str, str]], path: str = "") -> None:
        self.problems: list[tuple[str, str]] = [(path, problems)] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One ``path: message`` line per problem, control characters escaped (a key or a name
        from a hostile recipe must not reach a terminal as an escape sequence); past
        ``SHOWN_PROBLEMS``, one line says how many more (``problems`` keeps them all)."""
        shown = self.problems[:SHOWN_PROBLEMS]
        lines = [printable(f"{path}: {message}" if path else message, keep_newlines=False) for path, message in shown]
        if len(self.problems) > SHOWN_PROBLEMS:
            lines.append(f"... and {len(self.problems) - SHOWN_PROBLEMS} more problem(s)")
        return lines

    @property
    def path(self) -> str:
        """The key path of the first problem."""
        return self.problems[0][0]


class CheckpointError(ValueError):
    """A problem with a checkpoint file: not one, corrupted, no recipe, mismatched keys or shapes.

    Its message quotes the file at times: control characters in it are escaped."""

    def __init__(self, message: object = "") -> None:
        super().__init__(printable(message, keep_newlines=False))


HINT_CANDIDATES = 1000  # names difflib compares a bad name with (~0.3 ms each on a 32,000-name graph)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the closest candidate, or an empty string.

    Past ``HINT_CANDIDATES`` names, only those sharing the name's first character are compared,
    the first ``HINT_CANDIDATES`` of them: a hint stays a fraction of a millisecond in a recipe of
    32,000 names."""
    candidates = list(candidates)
    folded = {c.lower(): c for c in candidates}
    if name.lower() in folded:
        return f" (did you mean '{folded[name.lower()]}'?)"
    if len(candidates) > HINT_CANDIDATES:
        candidates = [c for c in candidates if c[:1] == name[:1]][:HINT_CANDIDATES]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: object, valid: Iterable[str], listed: bool = True, hint: bool = True) -> str:
    """``unknown <kind> 'name' (did you mean 'z'?); valid: a, b, c``: the one wording of a bad name;
    without ``hint`` (a problem past those shown, see ``shown``), only ``unknown <kind> 'name'``."""
    if not hint:
        return f"unknown {kind} {name!r}"
    valid = list(valid)
    text = f"unknown {kind} {name!r}{did_you_mean(str(name), valid)}"
    return f"{text}; valid: {listing(valid)}" if listed else text


def shown(problems: Collection[object]) -> bool:
    """Whether a problem added to ``problems`` now will be shown: past ``SHOWN_PROBLEMS`` a problem
    is only counted, so its hints (``did_you_mean``, the names listed) are not worth computing; 32,000
    bad names, each hinted over 32,000 names, took minutes and gigabytes."""
    return len(problems) < SHOWN_PROBLEMS


def listing(names: Collection[str], most: int = LISTED_NAMES) -> str:
    """``a, b, c``, or the first ``most`` names and how many more: ``a, b, ... (+31980 more)``;
    ``none`` for no names."""
    shown_names = list(itertools.islice(names, most))
    more = len(names) - len(shown_names)
    text = ", ".join(map(str, shown_names)) or "none"
    return f"{text}, ... (+{more} more)" if more > 0 else text


def first_line(text: object) -> str:
    """The first non-empty line of a message (torch and OmegaConf add detail lines)."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


# Characters a terminal or an editor obeys rather than shows: C0 and C1 controls, the bidirectional
# overrides and isolates (U+202E shows "gpj.exe" as "exe.jpg"), and the line and paragraph separators.
_BIDI_AND_SEPARATORS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


def _is_control(c: str) -> bool:
    return ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in _BIDI_AND_SEPARATORS


def has_control(text: str) -> bool:
    """Whether a name holds a control character (ESC, BEL, a newline, a bidirectional override...),
    which a terminal obeys."""
    if text.isprintable():  # C speed; False for every control character (and some others: scanned)
        return False
    return any(_is_control(c) for c in text)


def printable(text: object, keep_newlines: bool = True) -> str:
    """``text`` with its control characters escaped (``\\x1b``), so that what a file or a recipe
    says reaches a terminal as characters, never as commands; newlines (and tabs) kept on request."""
    text = str(text)
    if not has_control(text):
        return text
    kept = "\n\t" if keep_newlines else ""
    return "".join(c if c in kept or not _is_control(c) else _escaped(c) for c in text)


def _escaped(c: str) -> str:
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


# What a last-resort boundary lets through unchanged: composer's own errors (already one line
# with a key path), and what the user or the machine asked for (Ctrl-C, sys.exit, out of memory:
# KeyboardInterrupt and SystemExit are not Exceptions; a budget's DeadlineExceeded neither).
PASSED_THROUGH: tuple[type[BaseException], ...] = (ConfigError, CheckpointError, MemoryError)


def unexpected(e: BaseException) -> str:
    """``TypeError: <its first line>``: the message a boundary gives an error it did not expect."""
    return f"{type(e).__name__}: {first_line(e) or '(no message)'}"
