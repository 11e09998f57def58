"""ECMAScript regular expressions (the dialect of JSON Schema `pattern`) parsed into a small tree of code point sets.

Parsed: literals, classes, escapes (\\d \\w \\s and their negations, \\x \\u \\c, identity escapes), `.`, groups
(capturing, named, non-capturing), alternation, greedy and lazy quantifiers, ^ and $, lookaheads. Refused with
PatternError: what a grammar cannot express (backreferences, lookbehind, word boundaries), Unicode property escapes,
group modifiers, and counts above MAX_COUNT. Characters are code points; lone surrogates are left out, since a JSON
string cannot hold them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_PATTERN_CHARS = 1000
MAX_COUNT = 256  # {n,m} bounds: each repetition is a copy in the automaton

Ranges = tuple[tuple[int, int], ...]
UNIVERSE: Ranges = ((0, 0xD7FF), (0xE000, 0x10FFFF))  # code points a JSON string can hold (no lone surrogates)


class PatternError(ValueError):
    """The pattern is not an ECMAScript regex, or uses what the grammar cannot express, or is too large."""


def normalize(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return intersect(tuple(out), UNIVERSE)


def intersect(a: Ranges, b: Ranges) -> Ranges:
    out = []
    for lo, hi in a:
        for blo, bhi in b:
            if max(lo, blo) <= min(hi, bhi):
                out.append((max(lo, blo), min(hi, bhi)))
    return tuple(out)


def subtract(a: Ranges, b: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in a:
        for blo, bhi in b:
            if bhi < lo or blo > hi:
                continue
            if blo > lo:
                out.append((lo, blo - 1))
            lo = bhi + 1
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return tuple(out)


def _one(c: int) -> Ranges:
    return ((c, c),)


_DIGIT: Ranges = ((0x30, 0x39),)
_WORD: Ranges = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACE = normalize(
    [
        *((0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029)),
        *((0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)),
    ]
)
_CLASS_ESCAPES: dict[str, Ranges] = {
    "d": _DIGIT,
    "D": subtract(UNIVERSE, _DIGIT),
    "w": _WORD,
    "W": subtract(UNIVERSE, _WORD),
    "s": _SPACE,
    "S": subtract(UNIVERSE, _SPACE),
}
_DOT = subtract(UNIVERSE, normalize([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]))
_CONTROL_ESCAPES = {"t": 9, "n": 10, "v": 11, "f": 12, "r": 13}
_COUNT = re.compile(r"\{(\d+)(?:(,)(\d*))?\}")


@dataclass(frozen=True)
class Chars:
    ranges: Ranges


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Repeat:
    node: Node
    lo: int
    hi: int | None


@dataclass(frozen=True)
class Anchor:
    end: bool  # False: ^, True: $


@dataclass(frozen=True)
class Look:
    node: Node
    negative: bool


Node = Chars | Seq | Alt | Repeat | Anchor | Look


class Parser:
    """Recursive descent over ECMAScript's pattern grammar (without flags, with Annex B's lenient literals)."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def error(self, message: str) -> PatternError:
        return PatternError(f"{message} (at offset {self.i})")

    def peek(self, k: int = 0) -> str:
        return self.s[self.i + k] if self.i + k < len(self.s) else ""

    def parse(self) -> Node:
        node = self.alternation()
        if self.i < len(self.s):
            raise self.error("unmatched ')'")
        return node

    def alternation(self) -> Node:
        options = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def sequence(self) -> Node:
        items: list[Node] = []
        while self.i < len(self.s) and self.peek() not in "|)":
            items.append(self.quantified(self.atom()))
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def count(self, advance: bool) -> tuple[int, int | None] | None:
        match = _COUNT.match(self.s, self.i)
        if match is None:
            return None
        lo = int(match[1])
        hi = lo if match[2] is None else (int(match[3]) if match[3] else None)
        if advance:
            if lo > MAX_COUNT or (hi is not None and hi > MAX_COUNT):
                raise self.error(f"repetition counts above {MAX_COUNT} are not supported")
            if hi is not None and hi < lo:
                raise self.error("numbers out of order in {} quantifier")
            self.i = match.end()
        return lo, hi

    def quantified(self, atom: Node) -> Node:
        c = self.peek()
        bounds: tuple[int, int | None] | None = {"*": (0, None), "+": (1, None), "?": (0, 1)}.get(c)
        if bounds is not None:
            self.i += 1
        elif c == "{":
            bounds = self.count(advance=True)
        if bounds is None:
            return atom
        if isinstance(atom, (Anchor, Look)):
            raise self.error("a quantifier after an assertion")
        if self.peek() == "?":
            self.i += 1  # lazy: the same language
        if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self.count(advance=False)):
            raise self.error("nothing to repeat")
        return Repeat(atom, bounds[0], bounds[1])

    def atom(self) -> Node:
        c = self.s[self.i]
        if c in "*+?" or (c == "{" and self.count(advance=False)):
            raise self.error("nothing to repeat")
        self.i += 1
        if c == "(":
            return self.group()
        if c == "[":
            return Chars(self.char_class())
        if c == ".":
            return Chars(_DOT)
        if c in "^$":
            return Anchor(end=c == "$")
        if c == "\\":
            return Chars(self.escape(in_class=False))
        return Chars(normalize([(ord(c), ord(c))]))

    def group(self) -> Node:
        negative: bool | None = None
        if self.s.startswith("?:", self.i):
            self.i += 2
        elif self.s.startswith(("?=", "?!"), self.i):
            negative = self.s[self.i + 1] == "!"
            self.i += 2
        elif self.s.startswith(("?<=", "?<!"), self.i):
            raise self.error("lookbehind cannot be enforced by the grammar")
        elif self.s.startswith("?<", self.i):
            end = self.s.find(">", self.i)
            if end < 0:
                raise self.error("unterminated group name")
            self.i = end + 1
        elif self.peek() == "?":
            raise self.error("group modifiers are not supported")
        node = self.alternation()
        if self.peek() != ")":
            raise self.error("missing ')'")
        self.i += 1
        return node if negative is None else Look(node, negative)

    def hex(self, digits: int) -> int | None:
        text = self.s[self.i : self.i + digits]
        if len(text) != digits or any(ch not in "0123456789abcdefABCDEF" for ch in text):
            return None
        self.i += digits
        return int(text, 16)

    def escape(self, in_class: bool) -> Ranges:
        if self.i >= len(self.s):
            raise self.error("the pattern ends with '\\'")
        c = self.s[self.i]
        self.i += 1
        if c in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[c]
        if c == "b" and in_class:
            return _one(8)
        if c in "bB":
            raise self.error("word boundaries (\\b, \\B) cannot be enforced by the grammar")
        if c in "123456789" or (c == "k" and self.peek() == "<"):
            raise self.error("backreferences cannot be enforced by the grammar")
        if c in "pP" and self.peek() == "{":
            raise self.error("Unicode property escapes (\\p{...}) are not supported")
        if c == "0" and not self.peek().isdigit():
            return _one(0)
        if c in _CONTROL_ESCAPES:
            return _one(_CONTROL_ESCAPES[c])
        if c == "c" and self.peek().isascii() and self.peek().isalpha():
            self.i += 1
            return _one(ord(self.s[self.i - 1]) % 32)
        if c == "x" and (code := self.hex(2)) is not None:
            return _one(code)
        if c == "u":
            return normalize([(code, code)]) if (code := self.unicode()) is not None else _one(ord("u"))
        if c.isdigit():
            raise self.error("octal escapes are not supported")
        return normalize([(ord(c), ord(c))])  # identity escape: \. \/ \- \[ ...

    def unicode(self) -> int | None:
        if self.peek() == "{":
            end = self.s.find("}", self.i)
            text = self.s[self.i + 1 : end] if end > 0 else ""
            if not text or any(ch not in "0123456789abcdefABCDEF" for ch in text) or int(text, 16) > 0x10FFFF:
                raise self.error("bad \\u{...} escape")
            self.i = end + 1
            return int(text, 16)
        code = self.hex(4)
        if code is not None and 0xD800 <= code <= 0xDBFF and self.s.startswith("\\u", self.i):
            mark = self.i
            self.i += 2
            low = self.hex(4)
            if low is not None and 0xDC00 <= low <= 0xDFFF:
                return 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
            self.i = mark
        return code

    def class_atom(self) -> tuple[Ranges, int | None]:
        c = self.s[self.i]
        self.i += 1
        if c != "\\":
            return normalize([(ord(c), ord(c))]), ord(c)
        ranges = self.escape(in_class=True)
        single = ranges[0][0] if len(ranges) == 1 and ranges[0][0] == ranges[0][1] else None
        return ranges, single

    def char_class(self) -> Ranges:
        negated = self.peek() == "^"
        self.i += negated
        parts: list[tuple[int, int]] = []
        while True:
            if self.i >= len(self.s):
                raise self.error("missing ']'")
            if self.peek() == "]":
                self.i += 1
                break
            low, low_char = self.class_atom()
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.i += 1
                high, high_char = self.class_atom()
                if low_char is None or high_char is None:  # [\d-z]: Annex B reads the '-' literally
                    parts += [*low, (0x2D, 0x2D), *high]
                elif high_char < low_char:
                    raise self.error("range out of order in character class")
                else:
                    parts.append((low_char, high_char))
            else:
                parts += low
        ranges = normalize(parts)
        return subtract(UNIVERSE, ranges) if negated else ranges


def parse(pattern: str) -> Node:
    """The tree of `pattern`, or PatternError saying what is wrong or not supported, and where."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"the pattern is longer than {MAX_PATTERN_CHARS} characters")
    return Parser(pattern).parse()
