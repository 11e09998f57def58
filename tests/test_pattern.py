"""JSON Schema `pattern` and string formats compiled into the grammar: the automaton against Python's `re`, the
grammar against llama.cpp's own parser, refusals naming the place, and a real generation under such a schema."""

from __future__ import annotations

import json
import random
import re
from typing import Annotated, Any

import openai
import pydantic
import pytest
from herd.api.grammar.pattern import MAX_DFA_STATES, Dfa, compile_pattern
from herd.api.grammar.schema import schema_grammar
from herd.errors import InvalidRequest

from tests.conftest import MODEL, HerdServer
from tests.gbnf import parses

# What zod 4's toJSONSchema emits for z.email(), z.uuid(), z.guid(), z.iso.datetime(), z.iso.date(), z.iso.time(),
# z.ipv4(), z.ipv6(), z.cidrv4(), z.ulid(), z.nanoid(), z.cuid(), z.base64(), z.hex(), with strings each matches
# and one each does not.
ZOD: dict[str, tuple[str, list[str], list[str]]] = {
    "email": (
        r"^(?:[A-Za-z0-9_'+\-]+\.)*[A-Za-z0-9_'+\-]*[A-Za-z0-9_+-]@(?:[A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$",
        ["john.doe@example.com", "a+b@x.io"],
        ["john..doe@example.com", "@example.com", "a@b.c"],
    ),
    "uuid": (
        r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
        r"|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff)$",
        ["123e4567-e89b-42d3-a456-426614174000", "00000000-0000-0000-0000-000000000000"],
        ["123e4567-e89b-02d3-a456-426614174000"],
    ),
    "guid": (
        r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$",
        ["123e4567-e89b-02d3-a456-426614174000"],
        ["123e4567e89b02d3a456426614174000"],
    ),
    "datetime": (
        r"^(?:(?:\d\d[2468][048]|\d\d[13579][26]|\d\d0[48]|[02468][048]00|[13579][26]00)-02-29|\d{4}-(?:(?:0[13578]"
        r"|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)|(?:02)-(?:0[1-9]|1\d|2[0-8])))T(?:(?:"
        r"[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?(?:Z))$",
        ["2024-02-29T12:30:00Z", "1999-12-31T23:59:59.123Z"],
        ["2023-02-29T12:30:00Z", "2024-04-31T00:00:00Z"],
    ),
    "date": (
        r"^(?:(?:\d\d[2468][048]|\d\d[13579][26]|\d\d0[48]|[02468][048]00|[13579][26]00)-02-29|\d{4}-(?:(?:0[13578]"
        r"|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)|(?:02)-(?:0[1-9]|1\d|2[0-8])))$",
        ["2000-02-29", "2025-12-05"],
        ["1900-02-29"],
    ),
    "time": (r"^(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?$", ["23:59", "00:00:00.5"], ["24:00"]),
    "ipv4": (
        r"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])\.){3}"
        r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])$",
        ["192.168.0.1", "255.255.255.255"],
        ["256.1.1.1", "01.1.1.1"],
    ),
    "ipv6": (
        r"^(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}"
        r"|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}"
        r"|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}"
        r"|[0-9a-fA-F]{1,4}:((:[0-9a-fA-F]{1,4}){1,6})|:((:[0-9a-fA-F]{1,4}){1,7}|:))$",
        ["::1", "fe80::1:2", "2001:db8:0:0:0:0:2:1"],
        ["1:2:3:4:5:6:7:8:9", "12345::"],
    ),
    "cidrv4": (
        r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
        r"\/([0-9]|[1-2][0-9]|3[0-2])$",
        ["10.0.0.0/8"],
        ["10.0.0.0/33"],
    ),
    "ulid": (
        r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$",
        ["01ARZ3NDEKTSV4RRFFQ69G5FAV"],
        ["01ARZ3NDEKTSV4RRFFQ69G5FAI"],
    ),
    "nanoid": (r"^[a-zA-Z0-9_-]{21}$", ["V1StGXR8_Z5jdHi6B-myT"], ["V1StGXR8_Z5jdHi6B-my"]),
    "cuid": (r"^[cC][0-9a-z]{6,}$", ["cjld2cjxh0000qzrmn831i7rn"], ["xjld2cjxh"]),
    "base64": (
        r"^$|^(?:[0-9a-zA-Z+/]{4})*(?:(?:[0-9a-zA-Z+/]{2}==)|(?:[0-9a-zA-Z+/]{3}=))?$",
        ["", "aGVsbG8=", "aGk="],
        ["aGVsbG8", "a==="],
    ),
    "hex": (r"^[0-9a-fA-F]*$", ["", "deadBEEF"], ["0xdead"]),
    # written by hand, as in pydantic's constr(pattern=...): unanchored, a lookahead rule set, JSON escapes
    "contains": (r"ab+c", ["xxabbcxx", "abc"], ["ac", "abx"]),
    "password": (r"^(?=.*[A-Z])(?=.*\d)(?!.*\s).{8,}$", ["Passw0rdd"], ["password1", "Pass w0rd", "Pa1"]),
    "quoted": (r'^"[^"\\]*"\\?$', ['"hi"', '"a b"\\'], ['"a"b"']),
    "alternation": (r"^(?:cat|dog)s?$|^$", ["cats", "dog", ""], ["cow"]),
    "unicode": (r"^[à-ÿ]+\u00e9\u{1F600}$", ["àé😀"], ["aé😀"]),
}


def accepts(dfa: Dfa, text: str) -> bool:
    state = 0
    for char in text:
        code = ord(char)
        state = next((t for t, ranges in dfa.moves[state].items() if any(a <= code <= b for a, b in ranges)), -1)
        if state < 0:
            return False
    return dfa.accepting[state]


def sample(dfa: Dfa, rng: random.Random) -> str:
    """A random walk from the start to an accepting state: a string the grammar lets the model write. Printable
    ASCII where there is a choice, where Python's \\s, \\d and `.` agree with ECMAScript's."""
    state, out = 0, []
    while not (dfa.accepting[state] and (not dfa.moves[state] or rng.random() < 0.2)):
        state, ranges = rng.choice(list(dfa.moves[state].items()))
        ascii_ = [(max(a, 0x20), min(b, 0x7E)) for a, b in ranges if max(a, 0x20) <= min(b, 0x7E)]
        lo, hi = rng.choice(ascii_ or list(ranges))
        out.append(chr(rng.randint(lo, min(hi, lo + 200))))
    return "".join(out)


@pytest.mark.parametrize("name", ZOD)
def test_the_automaton_is_the_regex(name: str) -> None:
    pattern, good, bad = ZOD[name]
    dfa = compile_pattern(pattern)
    assert [accepts(dfa, s) for s in good] == [True] * len(good)
    assert [accepts(dfa, s) for s in bad] == [False] * len(bad)
    rng = random.Random(name)
    for _ in range(200):
        text = sample(dfa, rng)
        assert re.search(pattern.replace(r"\u{1F600}", "\U0001f600"), text), (name, text)


@pytest.mark.parametrize("name", ZOD)
def test_pattern_grammars_parse_in_llama_cpp(vocab: Any, name: str) -> None:
    schema = {"type": "object", "properties": {"v": {"type": "string", "pattern": ZOD[name][0]}}, "required": ["v"]}
    assert parses(vocab, schema_grammar(schema, "s"))


class Contact(pydantic.BaseModel):
    email: pydantic.EmailStr
    code: Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Z]{3}-\d{3}$")]
    host: Annotated[str, pydantic.Field(json_schema_extra={"format": "hostname"})]
    addresses: list[Annotated[str, pydantic.Field(json_schema_extra={"format": "ipv6"})]]
    site: pydantic.AnyUrl
    short: Annotated[str, pydantic.StringConstraints(pattern=r"^[a-z]+$", min_length=2, max_length=5)]


def test_pydantic_formats_and_constr_patterns_parse(vocab: Any) -> None:
    schema = Contact.model_json_schema()
    assert schema["properties"]["email"]["format"] == "email"  # what EmailStr sends
    assert parses(vocab, schema_grammar(schema, "s"))
    for fmt in ("email", "hostname", "ipv4", "ipv6", "uri", "date", "time", "date-time", "uuid"):
        assert parses(vocab, schema_grammar({"type": "string", "format": fmt}, "s")), fmt
    assert parses(vocab, schema_grammar({"type": "string", "format": "email", "minLength": 6, "maxLength": 40}, "s"))


def test_length_bounds_join_the_pattern() -> None:
    dfa = compile_pattern(r"^[a-z]+$", 2, 4)
    assert [accepts(dfa, s) for s in ("a", "ab", "abcd", "abcde", "a1")] == [False, True, True, False, False]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"^(a)\1$", "backreferences"),
        (r"^(?<x>a)\k<x>$", "backreferences"),
        (r"(?<=a)b", "lookbehind"),
        (r"^P(?:(\d+W)|(?!.*W)(?=\d|T\d)(\d+Y)?)$", "lookahead"),  # zod's z.iso.duration(): lookaheads inside
        (r"\bword\b", "word boundaries"),
        (r"^[\p{Extended_Pictographic}]+$", "Unicode property"),  # zod's z.emoji()
        (r"a{1000}", "above 256"),
        (r"(?:.{256}){256}", "too large"),
        (r"(a|b)*a(a|b){12}", f"more than {MAX_DFA_STATES}"),  # 2^13 states
        (r"^a(?=b)", "lookahead"),
        (r"^(?=.{1,253}\.?$)[a-z](?:[a-z-]{0,61}[a-z])?(?:\.[a-z](?:[a-z-]{0,61}[a-z])?)*$", "grammar states"),
        ("x" * 1001, "longer than"),
        (r"(ab", "missing ')'"),
        (r"ab)", "unmatched ')'"),
        (r"[b-a]", "out of order"),
        (r"a**", "nothing to repeat"),
        (r"^$x", "no string matches"),
        (r"(?i:a)", "modifiers"),
    ],
)
def test_patterns_the_grammar_cannot_hold_are_refused_naming_the_place(pattern: str, reason: str) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "string", "pattern": pattern}}}}
    with pytest.raises(InvalidRequest, match=re.escape(reason)) as caught:
        schema_grammar(schema, "response_format.json_schema.schema")
    assert caught.value.param == "response_format.json_schema.schema.properties.x.items.pattern"


def test_a_format_without_a_pattern_is_still_checked() -> None:
    with pytest.raises(InvalidRequest) as caught:
        schema_grammar({"type": "string", "format": "jwt"}, "s")
    assert caught.value.param == "s.format"
    assert schema_grammar({"type": "string", "format": "jwt", "pattern": "^[a-z]+$"}, "s")  # the pattern governs


class Person(pydantic.BaseModel):
    email: Annotated[str, pydantic.StringConstraints(pattern=ZOD["email"][0], max_length=40)]
    code: Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Z]{3}-\d{3}$")]
    id: Annotated[str, pydantic.StringConstraints(pattern=ZOD["uuid"][0])]
    ip: Annotated[str, pydantic.Field(json_schema_extra={"format": "ipv4"})]


def test_generation_under_patterns_matches_them(server: HerdServer) -> None:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=300) as sdk:
        completion = sdk.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": "Make up a person record as JSON: email, code, id, ip."}],
            response_format=Person,
            max_tokens=200,
            temperature=0.7,
            seed=3,
        )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    data = json.loads(choice.message.content or "")
    assert re.fullmatch(ZOD["email"][0], data["email"]) and len(data["email"]) <= 40
    assert re.fullmatch(r"[A-Z]{3}-\d{3}", data["code"])
    assert re.fullmatch(ZOD["uuid"][0], data["id"])
    assert re.fullmatch(ZOD["ipv4"][0], data["ip"])
    assert isinstance(choice.message.parsed, Person)
