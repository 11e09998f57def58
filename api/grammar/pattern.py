"""JSON Schema `pattern` -> a deterministic automaton -> GBNF rules for the inside of a JSON string.

A pattern matches anywhere in the string unless anchored, so the automaton is built for `[^]* R [^]*`, with ^ and $
as assertions (^ holds only before the first character, $ only after the last). Lookaheads right after a leading ^
(zod's hostname, password rules) and min/maxLength are further automata intersected with the pattern's (a negative
lookahead complemented); a lookahead anywhere else is refused.

The automaton is deterministic and minimal, so llama.cpp's grammar sampler keeps one stack per candidate while
matching, and bounded (MAX_NFA_STATES, MAX_DFA_STATES; the parser bounds pattern length and counts). The rendering
writes JSON escapes: a `"` of the pattern's language is generated as `\\"`; control characters other than tab,
newline and return are never generated.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from herd.api.grammar.regex import (
    UNIVERSE,
    Alt,
    Anchor,
    Chars,
    Look,
    Node,
    PatternError,
    Ranges,
    Repeat,
    Seq,
    intersect,
    normalize,
    parse,
    subtract,
)

MAX_NFA_STATES = 20_000
MAX_DFA_STATES = 1000
MAX_STEPS = 100_000  # transitions computed while building the automaton
MAX_MINIMIZE_WORK = 2_000_000
_NEVER_GENERATED: Ranges = ((0x00, 0x08), (0x0B, 0x0C), (0x0E, 0x1F))


class _Nfa:
    """Thompson automaton: per state, epsilon edges, ^ and $ assertion edges, and character edges."""

    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.bol: list[list[int]] = []
        self.eol: list[list[int]] = []
        self.edges: list[list[tuple[Ranges, int]]] = []

    def state(self) -> int:
        if len(self.eps) >= MAX_NFA_STATES:
            raise PatternError(f"the pattern is too large (more than {MAX_NFA_STATES} automaton states)")
        self.eps.append([])
        self.bol.append([])
        self.eol.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def build(self, node: Node, entry: int) -> int:
        """Adds `node` after `entry` (edges leave `entry`, none enter it) and returns its exit state."""
        if isinstance(node, Chars):
            exit_ = self.state()
            self.edges[entry].append((node.ranges, exit_))
            return exit_
        if isinstance(node, Seq):
            for item in node.items:
                entry = self.build(item, entry)
            return entry
        if isinstance(node, Alt):
            exit_ = self.state()
            for option in node.options:
                start = self.state()
                self.eps[entry].append(start)
                self.eps[self.build(option, start)].append(exit_)
            return exit_
        if isinstance(node, Anchor):
            exit_ = self.state()
            (self.eol if node.end else self.bol)[entry].append(exit_)
            return exit_
        if isinstance(node, Repeat):
            for _ in range(node.lo):
                entry = self.build(node.node, entry)
            if node.hi is None:
                loop = self.state()
                self.eps[entry].append(loop)
                self.eps[self.build(node.node, loop)].append(loop)
                return loop
            exit_ = self.state()
            for _ in range(node.hi - node.lo):
                self.eps[entry].append(exit_)
                entry = self.build(node.node, entry)
            self.eps[entry].append(exit_)
            return exit_
        raise PatternError("lookahead is supported only at the start of the pattern, right after ^")

    def anything(self, entry: int) -> int:
        loop = self.state()
        self.eps[entry].append(loop)
        self.edges[loop].append((UNIVERSE, loop))
        return loop

    def closure(self, states: Iterable[int], at_start: bool, at_end: bool) -> frozenset[int]:
        seen = set(states)
        stack = list(seen)
        while stack:
            s = stack.pop()
            for t in (*self.eps[s], *(self.bol[s] if at_start else ()), *(self.eol[s] if at_end else ())):
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return frozenset(seen)


@dataclass(frozen=True)
class Dfa:
    """State 0 is the start; `moves[s]` maps each target to the characters leading there; dead ends are removed."""

    accepting: tuple[bool, ...]
    moves: tuple[dict[int, Ranges], ...]


def _split(tree: Node) -> tuple[Node, list[Look]]:
    """The pattern without its leading lookaheads (those directly after a leading ^), and those lookaheads."""
    items = tree.items if isinstance(tree, Seq) else (tree,)
    if not items or items[0] != Anchor(end=False):
        return tree, []
    n = 1
    while n < len(items) and isinstance(items[n], Look):
        n += 1
    looks = [item for item in items[1:n] if isinstance(item, Look)]
    return Seq((items[0], *items[n:])), looks


def _classes(sets: list[Ranges]) -> tuple[list[Ranges], dict[Ranges, list[int]]]:
    """The alphabet split into classes no set tells apart, and each set as a list of class ids."""
    points = sorted({p for r in sets for lo, hi in r for p in (lo, hi + 1)})
    by_signature: dict[tuple[int, ...], int] = {}
    classes: list[list[tuple[int, int]]] = []
    for lo, nxt in itertools.pairwise(points):
        signature = tuple(i for i, r in enumerate(sets) if any(a <= lo <= b for a, b in r))
        if not signature:
            continue
        cid = by_signature.setdefault(signature, len(classes))
        if cid == len(classes):
            classes.append([])
        classes[cid].append((lo, nxt - 1))
    members: dict[Ranges, list[int]] = {r: [] for r in sets}
    for signature, cid in by_signature.items():
        for i in signature:
            members[sets[i]].append(cid)
    return [normalize(c) for c in classes], members


def compile_pattern(pattern: str, min_length: int = 0, max_length: int | None = None) -> Dfa:
    """The automaton of the strings (of the given length) in which `pattern` finds a match."""
    main, looks = _split(parse(pattern))
    if min_length or max_length is not None:
        looks.append(Look(Seq((Repeat(Chars(UNIVERSE), min_length, max_length), Anchor(end=True))), False))
    nfa = _Nfa()
    start = nfa.state()
    accepts = [nfa.anything(nfa.build(main, nfa.anything(start)))]
    starts, negative = [start], [False]
    for look in looks:
        entry = nfa.state()
        starts.append(entry)
        accepts.append(nfa.anything(nfa.build(look.node, entry)))
        negative.append(look.negative)
    classes, members = _classes([UNIVERSE, *{r for table in nfa.edges for r, _ in table}])
    classes = [subtract(c, _NEVER_GENERATED) for c in classes]
    usable = [cid for cid, c in enumerate(classes) if c]
    edges = [[(members[r], t) for r, t in table] for table in nfa.edges]

    def done(parts: tuple[frozenset[int], ...]) -> bool:
        ends = [accepts[i] in nfa.closure(p, at_start=False, at_end=True) for i, p in enumerate(parts)]
        return all(e != neg for e, neg in zip(ends, negative, strict=True))

    def settle(i: int, part: frozenset[int]) -> frozenset[int] | None:
        """None when the component can no longer be satisfied; a single state once it always is."""
        if accepts[i] in part:
            return None if negative[i] else frozenset((accepts[i],))
        return None if not part and not negative[i] else part

    opening = [settle(i, nfa.closure((s,), at_start=True, at_end=False)) for i, s in enumerate(starts)]
    first = tuple(p for p in opening if p is not None)
    if len(first) != len(opening):
        raise PatternError("no string matches the pattern")
    index: dict[tuple[frozenset[int], ...], int] = {first: 0}
    order: list[tuple[frozenset[int], ...]] = [first]
    moves: list[dict[int, int]] = []
    closures: dict[frozenset[int], frozenset[int]] = {}
    queue = deque([first])
    work = 0
    while queue:
        parts = queue.popleft()
        steps: list[dict[int, set[int]]] = []
        for part in parts:
            step: dict[int, set[int]] = {}
            for s in part:
                for cids, t in edges[s]:
                    for cid in cids:
                        step.setdefault(cid, set()).add(t)
            steps.append(step)
        out: dict[int, int] = {}
        work += len(usable) * len(parts)
        if work > MAX_STEPS:
            raise PatternError("the pattern is too complex to compile into a grammar")
        for cid in usable:
            nxt_parts = []
            for i, step in enumerate(steps):
                moved = frozenset(step.get(cid, ()))
                if moved not in closures:
                    closures[moved] = nfa.closure(moved, at_start=False, at_end=False)
                settled = settle(i, closures[moved])
                if settled is None:
                    break
                nxt_parts.append(settled)
            else:
                nxt = tuple(nxt_parts)
                if nxt not in index:
                    if len(order) >= MAX_DFA_STATES:
                        raise PatternError(f"the pattern needs more than {MAX_DFA_STATES} grammar states")
                    index[nxt] = len(order)
                    order.append(nxt)
                    queue.append(nxt)
                out[cid] = index[nxt]
        moves.append(out)
    return _prune([done(p) for p in order], moves, classes)


def _prune(accepting: list[bool], moves: list[dict[int, int]], classes: list[Ranges]) -> Dfa:
    """Drops the states from which no accepting state can be reached, merges equivalent states (Moore's
    refinement) and the classes leading to one target."""
    back: list[list[int]] = [[] for _ in accepting]
    for s, out in enumerate(moves):
        for t in out.values():
            back[t].append(s)
    live = {s for s, a in enumerate(accepting) if a}
    stack = list(live)
    while stack:
        for s in back[stack.pop()]:
            if s not in live:
                live.add(s)
                stack.append(s)
    if 0 not in live:
        raise PatternError("no string matches the pattern")
    targets: dict[int, dict[int, list[int]]] = {s: {} for s in live}  # per state: target -> classes
    for s in live:
        for cid, t in moves[s].items():
            if t in live:
                targets[s].setdefault(t, []).append(cid)
    block = {s: int(accepting[s]) for s in live}
    rounds = 0
    while sum(len(moves[s]) for s in live) * rounds < MAX_MINIMIZE_WORK:  # else the unminimized one is as correct
        rounds += 1
        signatures: dict[tuple[object, ...], int] = {}
        refined = {}
        for s in sorted(live):  # state 0 first, so the start's block is block 0
            by_block: dict[int, list[int]] = {}
            for t, cids in targets[s].items():
                by_block.setdefault(block[t], []).extend(cids)
            leaving = tuple(sorted((b, tuple(sorted(cids))) for b, cids in by_block.items()))
            refined[s] = signatures.setdefault((block[s], leaving), len(signatures))
        stable = len(signatures) == len(set(block.values()))
        block = refined
        if stable:
            break
    else:
        block = {s: i for i, s in enumerate(sorted(live))}
    first = {b: s for s, b in sorted(block.items(), reverse=True)}  # a representative of each block
    merged: list[dict[int, Ranges]] = []
    for b in range(len(first)):
        by_target: dict[int, list[tuple[int, int]]] = {}
        for cid, t in moves[first[b]].items():
            if t in live:
                by_target.setdefault(block[t], []).extend(classes[cid])
        merged.append({t: normalize(r) for t, r in by_target.items()})
    return Dfa(tuple(accepting[first[b]] for b in range(len(first))), tuple(merged))


def _code(c: int) -> str:
    if c < 0x80 and chr(c).isalnum():
        return chr(c)
    return f"\\x{c:02X}" if c < 0x100 else (f"\\u{c:04X}" if c < 0x10000 else f"\\U{c:08X}")


_JSON_ESCAPED: Ranges = ((0x09, 0x0A), (0x0D, 0x0D), (0x22, 0x22), (0x5C, 0x5C))
_NOT_RAW: Ranges = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C))


def _encoded(ranges: Ranges) -> list[str]:
    """GBNF alternatives producing the JSON string encoding of each character in `ranges`."""
    raw = subtract(ranges, _NOT_RAW)
    out = ["[" + "".join(_code(lo) if lo == hi else f"{_code(lo)}-{_code(hi)}" for lo, hi in raw) + "]"] if raw else []
    for lo, hi in intersect(ranges, _JSON_ESCAPED):
        out += [json.dumps(json.dumps(chr(c))[1:-1]) for c in range(lo, hi + 1)]
    return out


def gbnf_rules(dfa: Dfa, name: Callable[[int], str]) -> dict[int, str]:
    """The GBNF body of each state that needs a rule (one with moves), keyed by state; `name(s)` names them.

    An accepting state without moves needs no rule: a move into it ends the pattern (see `reference`)."""

    def reference(s: int) -> str:
        return name(s) if dfa.moves[s] else ""

    rules = {}
    for s, out in enumerate(dfa.moves):
        if not out:
            continue
        alts = []
        for t, ranges in out.items():
            pieces = _encoded(ranges)
            head = pieces[0] if len(pieces) == 1 else "(" + " | ".join(pieces) + ")"
            alts.append(f"{head} {reference(t)}".strip())
        body = " | ".join(alts)
        rules[s] = f"({body})?" if dfa.accepting[s] else body
    return rules
