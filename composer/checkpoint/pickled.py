"""A pickle's shape, checked before it is unpickled: how deeply what it builds nests.

An unpickler that builds only allowed classes still builds tuples, lists and dicts of any depth,
and Python hashes a tuple recursively in C without a depth check: a 2 MB pickle of a dict keyed by
a tuple nested 10^6 deep (``TUPLE1`` repeated) kills the process with SIGSEGV while it loads. So
``check_depth`` walks the opcodes first (``pickletools.genops``, nothing built), keeping for each
value on the unpickler's stack how deeply it nests, and refuses a value deeper than the limit.

Memo entries and the stack hold value numbers, so a value fetched from the memo has its depth. A
container that grows after it was put inside another (only a recursive structure does that: a
pickler writes each value whole before its parent takes it) is refused, as its parents' depths
would no longer be known. The walk costs about a microsecond an opcode (DCP writes one every
2 bytes): a file within ``limits.metadata_bytes`` (1 MiB) is checked in about a second at most.
"""

from __future__ import annotations

import array
import pickletools
from typing import Any

_EMPTY = {"EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"}
_FROM_MARK = {"TUPLE", "LIST", "DICT", "FROZENSET", "INST", "OBJ"}  # the items since MARK -> one value
_TAKES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3}  # n values -> one
_GROWS = {"APPEND": 1, "SETITEM": 2, "BUILD": 1}  # n values into the container below them
_GROWS_FROM_MARK = {"APPENDS", "SETITEMS", "ADDITEMS"}
_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}
_REFUSED = {"PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4"}  # nothing an allowlisted unpickler resolves


class PickleShape(ValueError):
    """A pickle that nests too deeply or is malformed: the caller words it as its error."""


def check_depth(data: bytes, max_depth: int) -> None:
    """Refuse ``data`` when a value it builds would nest more than ``max_depth`` containers deep.

    Raises:
        PickleShape: too deep, recursive, or not a well-formed pickle.
    """
    scan = _Scan(max_depth)
    handlers = {code: (scan.handler(name), name, size, prefix) for code, (name, size, prefix) in _OPCODES.items()}
    view, i, end = memoryview(data), 0, len(data)
    from_bytes = int.from_bytes
    while i < end:
        spec = handlers.get(data[i])
        if spec is None:
            raise PickleShape(f"byte {i}: opcode 0x{data[i]:02x} is not one of a binary pickle's")
        handler, name, size, prefix = spec
        i += 1
        arg = None
        if prefix < 0:  # protocols 0 and 1: text up to a newline (two lines: module and name)
            stop = i
            for _ in range(-prefix):
                stop = data.find(b"\n", stop, end) + 1
                if not stop:
                    raise PickleShape(f"byte {i}: {name}'s argument has no end of line")
            arg = _text_int(data[i : stop - 1], name) if name in _GET or name in _PUT else None
            size = stop - i
        elif prefix:  # a length, then that many bytes
            length = from_bytes(view[i : i + prefix], "little", signed=prefix == 4 and name in _SIGNED)
            size = prefix + length
            if length < 0:
                raise PickleShape(f"byte {i}: {name} has a negative length")
        elif size and (name in _GET or name in _PUT):
            arg = from_bytes(view[i : i + size], "little")
        i += size
        if i > end:
            raise PickleShape(f"{name}'s argument runs past the end")
        if handler is None:  # STOP
            return
        handler(arg)
    raise PickleShape("it ends without STOP")


def _opcode_table() -> dict[int, tuple[str, int, int]]:
    """code -> (name, fixed argument size, length-prefix size), from ``pickletools``' table."""
    prefixes = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4}
    prefixes |= {pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}
    table = {}
    for op in pickletools.opcodes:
        n = 0 if op.arg is None else op.arg.n
        if n == pickletools.UP_TO_NEWLINE:  # a line, or two: GLOBAL's and INST's module and name
            table[ord(op.code)] = (op.name, 0, -2 if op.name in ("GLOBAL", "INST") else -1)
        else:
            table[ord(op.code)] = (op.name, max(n, 0), prefixes.get(n, 0))
    return table


def _text_int(text: bytes, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PickleShape(f"{name}'s argument is not a number") from None


_OPCODES = _opcode_table()
_SIGNED = {"BINSTRING", "LONG4"}  # their 4-byte lengths are signed


class _Scan:
    """The unpickler's stack and memo, holding value numbers; ``depth[v]`` is how deeply value
    ``v`` nests, ``inside[v]`` whether another value holds it (plain arrays, no object per value:
    millions of small lists would keep the garbage collector busy for seconds)."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.stack: list[int] = []
        self.marks: list[int] = []
        self.memo: dict[Any, int] = {}
        self.depth = array.array("q")
        self.inside = bytearray()

    def new(self, depth: int) -> None:
        self.stack.append(len(self.depth))
        self.depth.append(depth)
        self.inside.append(0)

    def handler(self, name: str) -> Any:
        """What opcode ``name`` does to the stack, as a function of its argument (None: STOP)."""
        simple = {
            "MARK": lambda _: self.marks.append(len(self.stack)),
            "STACK_GLOBAL": lambda _: (self.pop(2), self.new(0)),
            "POP": self.pop_top,
            "POP_MARK": lambda _: self.since_mark(),
            "DUP": lambda _: self.stack.append(self.top()),
            "MEMOIZE": lambda _: self.memo.__setitem__(len(self.memo), self.top()),
            "STOP": None,
        }
        if name in simple:
            return simple[name]
        if name in ("PROTO", "FRAME"):
            return lambda _: None
        if name in _EMPTY:
            return lambda _: self.new(1)
        if name in _FROM_MARK:
            return lambda _: self.new(self.depth_over(self.since_mark()))
        if name in _TAKES:
            n = _TAKES[name]
            return lambda _: self.new(self.depth_over(self.pop(n)))
        if name in _GROWS:
            n = _GROWS[name]
            return lambda _: self.grow(self.pop(n))
        if name in _GROWS_FROM_MARK:
            return lambda _: self.grow(self.since_mark())
        if name in _PUT:
            return lambda arg: self.memo.__setitem__(arg, self.top())
        if name in _GET:
            return self.get
        if name in _REFUSED:
            return lambda _: self.refuse(name)
        return lambda _: self.new(0)  # a number, a string, None, a bool: a value holding nothing

    def refuse(self, name: str) -> None:
        raise PickleShape(f"it uses {name}, which metadata never does")

    def get(self, arg: int) -> None:
        if arg not in self.memo:
            raise PickleShape(f"it fetches memo entry {arg}, which it never stored")
        self.stack.append(self.memo[arg])

    def pop_top(self, _: Any) -> None:
        if len(self.stack) > (self.marks[-1] if self.marks else 0):
            self.stack.pop()
        elif self.marks:
            self.marks.pop()

    def top(self) -> int:
        if not self.stack:
            raise PickleShape("an opcode needs a value and the stack is empty")
        return self.stack[-1]

    def pop(self, n: int) -> list[int]:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) - n < floor:
            raise PickleShape("an opcode takes more values than the stack holds")
        items = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return items

    def since_mark(self) -> list[int]:
        if not self.marks:
            raise PickleShape("an opcode needs a MARK and there is none")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def grow(self, items: list[int]) -> None:
        """``items`` into the container below them (APPEND, SETITEM, BUILD...)."""
        container = self.top()
        if self.inside[container]:
            raise PickleShape("a value grows after it was put inside another (a recursive structure)")
        self.depth[container] = max(self.depth[container], self.depth_over(items))

    def depth_over(self, items: list[int]) -> int:
        """The depth of a container holding ``items``; they are now inside it."""
        depth = 1
        for item in items:
            self.inside[item] = 1
            depth = max(depth, self.depth[item] + 1)
        if depth > self.max_depth:
            raise PickleShape(f"it nests more than {self.max_depth} containers deep")
        return depth
