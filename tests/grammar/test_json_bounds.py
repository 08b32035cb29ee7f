"""JSON length bounds: the lexer, and the narrowed masks of a real xgrammar grammar on SmolLM2's vocabulary."""

from __future__ import annotations

import json

import pytest
import torch

from sglang_dspark.grammar import Constraint, GrammarError, JsonBounds, allocate_bitmask
from sglang_dspark.grammar.json_bounds import CLOSING_RESERVE, OBJECT, LexState, lex, string_growth
from sglang_dspark.grammar.mask import allowed_from_bitmask

VOCAB, EOS = 49152, 2  # as in conftest.py


def test_lex_tracks_strings_escapes_and_array_items():
    state = lex(LexState(), '{"a": ["x\\"y", "é'.encode())
    assert state == LexState(in_string=True, escaped=False, chars=1, stack=(OBJECT, 1))
    assert lex(state, b'", [1, 2], 3').stack == (OBJECT, 3)  # commas of the inner array are its own
    assert lex(state, b'"]}') == LexState()
    assert lex(LexState(), b'"ab\\').escaped


def test_string_growth_counts_up_to_the_closing_quote():
    assert string_growth(b"abc", escaped=False) == 3
    assert string_growth(b'ab",', escaped=False) == 2
    assert string_growth(b'"', escaped=False) == 0
    assert string_growth(b'",x', escaped=True) == 3  # an escaped quote is a character
    assert string_growth(b"a\\", escaped=False) == 2  # the trailing backslash begins a character
    assert string_growth("é".encode(), escaped=False) == 1


def test_bounds_are_checked():
    with pytest.raises(ValueError, match="max_json_array_items"):
        JsonBounds(max_array_items=1)
    with pytest.raises(ValueError, match="max_json_string_length"):
        JsonBounds(max_string_length=0)
    assert not JsonBounds()


def allowed_texts(grammar, tokenizer) -> list[bytes]:
    bitmask = allocate_bitmask(1, VOCAB)
    grammar.fill_mask(bitmask, 0)
    ids = allowed_from_bitmask(bitmask, VOCAB)[0].nonzero().flatten().tolist()
    return [tokenizer.decode([i]).encode() for i in ids]


def feed(grammar, tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert grammar.accept_tokens(ids) == len(ids), text


def schema_grammar(backends, schema: dict, bounds: JsonBounds):
    xgr = backends["xgrammar"]
    return xgr.make_grammar(xgr.compile(Constraint.from_fields(json_schema=json.dumps(schema))), bounds)


def string_chars(text: bytes) -> int:
    """Characters a token without backslashes adds to an open string."""
    return sum(1 for b in text.split(b'"')[0] if b & 0xC0 != 0x80)


def test_a_string_stays_within_its_bound(backends, tokenizer):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    grammar = schema_grammar(backends, schema, JsonBounds(max_string_length=6))
    feed(grammar, tokenizer, '{"a":"abc')
    texts = [t for t in allowed_texts(grammar, tokenizer) if b"\\" not in t]
    assert max(string_chars(t) for t in texts) == 3  # room for 3 more characters
    feed(grammar, tokenizer, "def")
    texts = allowed_texts(grammar, tokenizer)
    assert texts and all(t.startswith(b'"') for t in texts)  # 6: only closing tokens
    grammar.rollback(1)  # back to 3 characters
    assert any(not t.startswith(b'"') for t in allowed_texts(grammar, tokenizer))


def test_a_string_the_schema_keeps_open_is_not_narrowed(backends, tokenizer):
    schema = {"type": "object", "properties": {"a": {"type": "string", "minLength": 10}}, "required": ["a"]}
    grammar = schema_grammar(backends, schema, JsonBounds(max_string_length=4))
    feed(grammar, tokenizer, '{"a":"abcdef')
    texts = allowed_texts(grammar, tokenizer)
    assert texts and not any(t.startswith(b'"') for t in texts)  # the grammar's own mask: it must go on


def test_a_long_array_may_only_close(backends, tokenizer):
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}
    grammar = schema_grammar(backends, schema, JsonBounds(max_array_items=3))
    feed(grammar, tokenizer, '{"a":[1,2')
    assert b"," in allowed_texts(grammar, tokenizer)
    feed(grammar, tokenizer, ",3")
    texts = allowed_texts(grammar, tokenizer)
    assert texts and all(t.startswith(b"]") for t in texts)


def test_the_last_tokens_of_the_budget_close_what_is_open(backends, tokenizer):
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}}
    opening = tokenizer.encode('{"a":["x', add_special_tokens=False)
    # the reserve: CLOSING_RESERVE tokens plus one per open container (here an object and an array)
    budget = len(opening) + CLOSING_RESERVE + 3
    grammar = schema_grammar(backends, schema, JsonBounds(max_string_length=100, token_budget=budget))
    feed(grammar, tokenizer, '{"a":["x')
    assert any(not t.startswith(b'"') for t in allowed_texts(grammar, tokenizer))  # outside the reserve: free
    grammar = schema_grammar(backends, schema, JsonBounds(max_string_length=100, token_budget=budget - 1))
    feed(grammar, tokenizer, '{"a":["x')
    # inside: the string closes, then the array, then the object, with tokens that open nothing new
    # (not `", "`, which would start another item)
    for text, close in (('"', b'"'), ("]", b"]"), ("}", b"}")):
        texts = allowed_texts(grammar, tokenizer)
        assert texts and all(t.startswith(close) and not any(b in b'{[",' for b in t[1:]) for t in texts)
        feed(grammar, tokenizer, text)


def test_where_nothing_may_close_yet_the_output_takes_a_shortest_way(backends, tokenizer):
    """In the closing reserve, a string that must still match its pattern gets the first token of a shortest
    path of single-byte tokens to where it may close."""
    pattern = {"type": "string", "pattern": "^ab/[0-9]+$"}
    schema = {"type": "object", "properties": {"s": pattern}, "required": ["s"]}
    opening = '{"s":"ab'
    budget = len(tokenizer.encode(opening, add_special_tokens=False)) + 4
    grammar = schema_grammar(backends, schema, JsonBounds(max_string_length=100, token_budget=budget))
    feed(grammar, tokenizer, opening)
    assert allowed_texts(grammar, tokenizer) == [b"/"]
    feed(grammar, tokenizer, "/")
    (digit,) = allowed_texts(grammar, tokenizer)
    assert digit.isdigit() and len(digit) == 1
    feed(grammar, tokenizer, digit.decode())
    texts = allowed_texts(grammar, tokenizer)
    assert texts and all(t.startswith(b'"') and not any(b in b'{[",' for b in t[1:]) for t in texts)


def test_in_the_reserve_the_output_ends_instead_of_beginning_another_call(backends, tokenizer):
    call = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    tag = {"type": "tag", "begin": "<c>", "content": {"type": "json_schema", "json_schema": call}, "end": "</c>"}
    calls = {"type": "tags_with_separator", "tags": [tag], "separator": "\n", "at_least_one": True}
    constraint = Constraint.from_fields(structural_tag=json.dumps({"type": "structural_tag", "format": calls}))
    xgr = backends["xgrammar"]
    text = '<c>{"a": 1}</c>'
    n = len(tokenizer.encode(text, add_special_tokens=False))
    for budget, more_calls in ((n + CLOSING_RESERVE + 1, True), (n + CLOSING_RESERVE, False)):
        grammar = xgr.make_grammar(xgr.compile(constraint), JsonBounds(max_string_length=100, token_budget=budget))
        feed(grammar, tokenizer, text)
        texts = allowed_texts(grammar, tokenizer)
        assert (b"\n" in texts) == more_calls and tokenizer.decode([EOS]).encode() in texts


@pytest.mark.parametrize(
    "properties, text",
    [
        ({"a": {"type": "string"}, "b": {"type": "array"}}, '{"a":"abcd'),
        ({"s": {"type": "string", "pattern": "^ab/[0-9]+$"}}, '{"s":"ab/1'),  # rows that search
    ],
)
def test_draft_chain_masks_equal_step_by_step_masks(backends, tokenizer, properties, text):
    """fill_draft_masks (what verification reads) narrows each row as fill_mask does after the same tokens."""
    schema = {"type": "object", "properties": properties, "required": list(properties)[:1]}
    grammar = schema_grammar(backends, schema, JsonBounds(3, 2, token_budget=CLOSING_RESERVE + 4))
    draft = tokenizer.encode(text, add_special_tokens=False)  # into the closing reserve
    chain = allocate_bitmask(len(draft) + 1, VOCAB)
    assert grammar.fill_draft_masks(draft, chain, 0) == len(draft) + 1
    fork = grammar.fork()
    for i, tok in enumerate([None, *draft]):
        if tok is not None:
            assert fork.accept_token(tok)
        step = allocate_bitmask(1, VOCAB)
        fork.fill_mask(step, 0)
        assert torch.equal(chain[i], step[0]), i
    assert grammar.bounds.states == [grammar.bounds.states[0]]  # the chain left the grammar where it was


def test_bounds_need_xgrammar(backends):
    llg = backends["llguidance"]
    compiled = llg.compile(Constraint.from_fields(json_schema='{"type": "object"}'))
    with pytest.raises(GrammarError, match="xgrammar"):
        llg.make_grammar(compiled, JsonBounds(max_string_length=8))
