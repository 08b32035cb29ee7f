"""Every backend behind the one interface, on SmolLM2's real tokenizer (no model)."""

import json

import jsonschema
import pytest
import torch

from sglang_dspark.grammar import Constraint, ConstraintKind, GrammarError, allocate_bitmask
from sglang_dspark.grammar.mask import allowed_from_bitmask
from sglang_dspark.grammar.vocab import token_bytes

VOCAB, EOS = 49152, 2  # as in conftest.py
NAMES = ["xgrammar", "llguidance", "outlines"]
REGEX = Constraint(ConstraintKind.REGEX, r"(yes|no), because [a-z ]{1,20}\.")
PERSON = Constraint(
    ConstraintKind.JSON_SCHEMA,
    json.dumps(
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": False,
        }
    ),
)


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def allowed(grammar) -> torch.Tensor:
    bitmask = allocate_bitmask(1, VOCAB)
    grammar.fill_mask(bitmask, 0)
    return allowed_from_bitmask(bitmask, VOCAB)[0]


@pytest.fixture(params=NAMES)
def backend(request, backends):
    return backends[request.param]


@pytest.mark.parametrize("constraint,text", [(REGEX, "no, because it is late."), (PERSON, '{"name":"Bo","age":7}')])
def test_walk_accepts_text_and_stops_only_at_the_end(backend, tokenizer, constraint, text):
    grammar = backend.make_grammar(backend.compile(constraint))
    for tok in encode(tokenizer, text):
        mask = allowed(grammar)
        assert mask[tok] and not mask[EOS]
        assert not mask[1] and not mask[0]  # special tokens never match grammar text
        assert grammar.accept_token(tok)
    assert allowed(grammar)[EOS]
    assert not grammar.is_terminated()
    assert grammar.accept_token(EOS) and grammar.is_terminated()
    assert not allowed(grammar).any()
    grammar.rollback(1)  # un-terminate
    assert not grammar.is_terminated() and allowed(grammar)[EOS]


def test_reject_rollback_fork(backend, tokenizer):
    grammar = backend.make_grammar(backend.compile(REGEX))
    yes = encode(tokenizer, "yes, because")
    assert not grammar.accept_token(encode(tokenizer, "maybe")[0])
    assert not grammar.accept_token(EOS)  # cannot end yet
    start = allowed(grammar)
    assert grammar.accept_tokens(yes) == len(yes)
    fork = grammar.fork()
    more = encode(tokenizer, " ab")
    assert fork.accept_tokens(more) == len(more)
    grammar.rollback(len(yes))
    assert torch.equal(allowed(grammar), start)
    assert fork.accept_tokens(encode(tokenizer, "c.")) == len(encode(tokenizer, "c.")) and fork.accept_token(EOS)
    assert grammar.validate_tokens([*yes, EOS]) == len(yes)  # state unchanged by validate
    assert torch.equal(allowed(grammar), start)


def test_jump_forward_tokens_are_valid_and_not_accepted(backend, tokenizer):
    grammar = backend.make_grammar(backend.compile(PERSON))
    start = allowed(grammar)
    forced = grammar.jump_forward_tokens()
    assert torch.equal(allowed(grammar), start)
    if backend.name != "outlines":  # outlines forces single-token states only; '{' and '{"' are both allowed
        assert tokenizer.decode(forced).startswith('{"')
    assert grammar.accept_tokens(forced) == len(forced)
    assert EOS not in forced


def test_jump_forward_inside_a_multibyte_character(backend, tokenizer):
    """After a byte token that ends inside a UTF-8 character, the forced rest of it is not decodable text:
    jump-forward forces nothing or valid tokens, and never raises (an exception here killed the scheduler)."""
    emoji = "\U0001f600"  # three byte-level tokens here: its first two bytes, then one byte each
    grammar = backend.make_grammar(backend.compile(Constraint(ConstraintKind.REGEX, emoji + "{4}")))
    lead = encode(tokenizer, emoji)[0]
    assert "\ufffd" in tokenizer.decode([lead])  # a partial character
    assert grammar.accept_token(lead)
    forced = grammar.jump_forward_tokens()
    assert grammar.accept_tokens(forced) == len(forced)


def sequential_draft_masks(grammar, draft):
    fork, masks = grammar.fork(), [allowed(grammar)]
    for tok in draft:
        if fork.is_terminated() or not fork.accept_token(tok):
            break
        masks.append(allowed(fork))
    return masks


@pytest.mark.parametrize("draft_text,extra", [("yes, because it", []), ("no, b", [EOS]), ("yes, because x.", [EOS])])
def test_draft_chain_masks_match_token_by_token(backend, tokenizer, draft_text, extra):
    """One call fills the masks of a whole draft; it stops at an invalid token (EOS too early) or after
    a stop token, and leaves the grammar where it was."""
    grammar = backend.make_grammar(backend.compile(REGEX))
    draft = encode(tokenizer, draft_text) + extra
    expected = sequential_draft_masks(grammar, draft)
    bitmask = allocate_bitmask(len(draft) + 3, VOCAB)
    filled = backend.fill_draft_masks([grammar], [draft], bitmask, [2])
    assert filled == [len(expected)]
    got = allowed_from_bitmask(bitmask[2 : 2 + len(expected)], VOCAB)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    assert torch.equal(allowed(grammar), expected[0])


def test_batched_fill_matches_single(backend, tokenizer):
    grammars = [backend.make_grammar(backend.compile(c)) for c in (REGEX, PERSON, REGEX)]
    grammars[2].accept_tokens(encode(tokenizer, "no"))
    bitmask = allocate_bitmask(4, VOCAB)
    backend.fill_masks(grammars, bitmask, [3, 0, 1])
    got = allowed_from_bitmask(bitmask, VOCAB)
    assert torch.equal(got[3], allowed(grammars[0]))
    assert torch.equal(got[0], allowed(grammars[1]))
    assert torch.equal(got[1], allowed(grammars[2]))
    assert got[2].all()  # untouched


@pytest.mark.parametrize(
    "constraint,reason",
    [
        (Constraint(ConstraintKind.JSON_SCHEMA, '{"type": "objekt"}'), "objekt"),
        (Constraint(ConstraintKind.JSON_SCHEMA, '{"type": "array", "uniqueItems": true}'), "uniqueItems"),
        (Constraint(ConstraintKind.JSON_SCHEMA, '{"$ref": "#/$defs/missing"}'), "(?i)(missing|reference)"),
        (Constraint(ConstraintKind.REGEX, "(a"), "(?i)(paren|unclosed|NFA)"),
        (Constraint(ConstraintKind.REGEX, r"(\w)\1"), "(?i)(backreference|NFA)"),
    ],
)
def test_bad_constraints_raise_grammar_error(backend, constraint, reason):
    with pytest.raises(GrammarError, match=reason):
        backend.compile(constraint)


def test_ebnf(backends, tokenizer):
    ebnf = Constraint(ConstraintKind.EBNF, 'root ::= "(" digit+ ")"\ndigit ::= [0-9]')
    for name in ("xgrammar", "llguidance"):
        grammar = backends[name].make_grammar(backends[name].compile(ebnf))
        assert grammar.accept_tokens(encode(tokenizer, "(42)")) == len(encode(tokenizer, "(42)"))
        assert grammar.accept_token(EOS)
        with pytest.raises(GrammarError):
            backends[name].compile(Constraint(ConstraintKind.EBNF, 'root ::= "a" | undefined_rule'))
    with pytest.raises(GrammarError, match="does not support EBNF"):
        backends["outlines"].compile(ebnf)


def test_token_bytes_match_xgrammar_decoding(tokenizer):
    import xgrammar

    ours = token_bytes(tokenizer, VOCAB)
    theirs = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=VOCAB).decoded_vocab
    assert ours[:3] == [b"", b"", b""]  # <|endoftext|>, <|im_start|>, <|im_end|>
    assert all(o == t for o, t in zip(ours, theirs) if o)
    assert ours[encode(tokenizer, " hello")[0]] == b" hello"


def _accepts_whole(backend, compiled, tokenizer, text) -> bool:
    grammar = backend.make_grammar(compiled)
    ids = encode(tokenizer, text)
    return grammar.accept_tokens(ids) == len(ids) and grammar.accept_token(EOS)


def test_any_of_next_to_other_keywords_is_enforced_or_refused(backend, tokenizer):
    """From JSONSchemaBench (Github_easy/o65451): xgrammar enforced only the anyOf branches, outlines only the
    siblings, so both produced objects that do not validate; they must refuse such schemas instead."""
    schema = {
        "anyOf": [{"required": ["title"]}, {"required": ["description"]}],
        "properties": {"date": {"type": "string"}, "title": {"type": "string"}, "description": {"type": "string"}},
        "required": ["date"],
        "type": "object",
    }
    try:
        compiled = backend.compile(Constraint.from_fields(json_schema=json.dumps(schema)))
    except GrammarError as e:
        assert backend.name in ("xgrammar", "outlines") and "anyOf" in str(e)
        return
    assert _accepts_whole(backend, compiled, tokenizer, '{"date":"d","title":"t"}')
    assert not _accepts_whole(backend, compiled, tokenizer, '{"x":1}')  # no date, no title/description
    assert not _accepts_whole(backend, compiled, tokenizer, '{"date":"d"}')  # no title/description


def _object_with(node: dict) -> dict:
    return {"type": "object", "properties": {"x": node}, "required": ["x"], "additionalProperties": False}


@pytest.mark.parametrize(
    "schema,invalid",
    [
        (_object_with({"type": "string", "pattern": "^[a-z]+$", "minLength": 5}), '{"x":"ab"}'),
        (_object_with({"type": "string", "pattern": "^[a-z]+$", "maxLength": 2}), '{"x":"abcdef"}'),
        (_object_with({"type": "string", "format": "email", "minLength": 30}), '{"x":"a@b.co"}'),
        (_object_with({"type": "string", "pattern": "^(?!abc)[a-z]+$"}), '{"x":"abcd"}'),
        (_object_with({"type": "string", "enum": ["a", "bb"], "minLength": 2}), '{"x":"a"}'),
        (_object_with({"type": "string", "pattern": "[0-9]{2}|x{3}"}), '{"x":"12}'),  # as in the 280-schema set
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]}, '{"a":1}'),  # same
    ],
)
def test_keywords_a_backend_would_ignore_are_enforced_or_refused(backend, tokenizer, schema, invalid):
    """Left to the backend, each of these lets it accept a value that does not validate (xgrammar ignores the
    keyword; outlines generates enum values regardless of their siblings and leaves a top-level pattern alternation
    ungrouped; neither requires `required` names missing from `properties`): so they are refused instead."""
    try:
        assert not jsonschema.Draft202012Validator(schema).is_valid(json.loads(invalid))
    except json.JSONDecodeError:
        pass  # not even JSON
    try:
        compiled = backend.compile(Constraint.from_fields(json_schema=json.dumps(schema)))
    except GrammarError:
        return
    assert not _accepts_whole(backend, compiled, tokenizer, invalid)
