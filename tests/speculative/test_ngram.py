import json
import random
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from sglang_dspark.grammar import Constraint, allocate_bitmask, create_backend
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.speculative.ngram import NGramIndex, NGramProposer, propose

COLOR = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "blue"]}, "size": {"type": "integer"}},
    "required": ["color", "size"],
    "additionalProperties": False,
}


def ids(text):
    """Character-level token ids: enough structure for JSON and code patterns."""
    return [ord(ch) for ch in text]


def text(tokens):
    return "".join(chr(t) for t in tokens)


def test_repeated_json_keys_are_proposed():
    ctx = NGramIndex.build(
        ids('[{"name": "alice", "age": 30, "city": "paris"}, {"name": "bob", "age": 25, "city": "rome"}, {"'),
        max_n=8,
    )
    p = propose(ctx, 8)
    assert text(p.tokens) == 'name": "' and p.match_len == 6  # '"}, {"' occurred once before
    ctx.extend(ids('name": "carol", "'))
    p = propose(ctx, 6)
    assert text(p.tokens) == 'age": '  # both earlier '", "' continue with the age key
    assert p.confidences[0] == pytest.approx(2 / 3)  # 2 votes, prior 1


def test_code_pattern_is_proposed():
    code = "x = config.get('alpha', None)\ny = config.get('beta', None)\nz = config.get('gamma', "
    p = propose(NGramIndex.build(ids(code), max_n=6), 6)
    assert text(p.tokens) == "None)\n" and p.match_len == 4  # "a', " after alpha and beta
    assert p.confidences == [pytest.approx(2 / 3)] * 6


def test_longest_suffix_wins_and_ties_go_to_the_most_recent():
    ctx = NGramIndex.build([1, 2, 3, 9, 2, 3, 7, 5, 2, 3, 8, 1, 2, 3], min_n=1, max_n=3)
    p = propose(ctx, 2)
    assert p.match_len == 3 and p.tokens == [9, 2]  # only (1, 2, 3) at the start matches 3 tokens
    ctx = NGramIndex.build([4, 2, 3, 9, 5, 2, 3, 7, 6, 2, 3], min_n=1, max_n=3)
    p = propose(ctx, 1)
    assert p.match_len == 2 and p.tokens == [7]  # (2, 3) -> 9 or 7: one vote each, the recent one wins
    assert p.confidences == [pytest.approx(1 / 3)]


def test_confidence_reflects_agreement():
    ctx = NGramIndex.build([5, 1, 2, 5, 1, 2, 5, 1, 3, 5], max_n=1)
    p = propose(ctx, 2, prior=0.0)
    assert p.tokens == [1, 2]
    assert p.confidences == [pytest.approx(1.0), pytest.approx(2 / 3)]  # 3 of 3 agree, then 2 of 3


def test_no_match():
    assert propose(NGramIndex.build([1, 2, 3], min_n=2), 4).tokens == []
    assert propose(NGramIndex(), 4).match_len == 0


def test_max_matches_caps_the_voters():
    ctx = NGramIndex.build([7, 1] * 3 + [7, 2] * 2 + [7], max_n=1)
    assert propose(ctx, 1).tokens == [1]  # 3 votes against 2
    assert propose(ctx, 1, max_matches=2).tokens == [2]  # only the 2 latest occurrences vote


def test_incremental_index_equals_a_fresh_one():
    rng = random.Random(0)
    tokens = [rng.randrange(6) for _ in range(300)]
    inc = NGramIndex(min_n=2, max_n=5)
    for start in range(0, 300, 7):
        inc.extend(tokens[start : start + 7])
        fresh = NGramIndex.build(tokens[: start + 7], min_n=2, max_n=5)
        assert inc == fresh
        assert propose(inc, 4) == propose(fresh, 4)


def test_extra_corpora_static_and_callable():
    doc = ids("def area(r):\n    return 3.14159 * r * r\n")
    ctx = NGramIndex.build(ids("print(area(2))  # uses 3.14"), max_n=6)
    assert propose(ctx, 4).tokens == []  # nothing earlier in the context follows '3.14'
    assert text(propose(ctx, 4, corpora=[NGramIndex.build(doc, max_n=6)]).tokens) == "159 "
    seen = []

    def radix_paths(context_tokens):  # e.g. cached paths in the radix tree sharing the context's tail
        seen.append(len(context_tokens))
        return [doc]

    assert text(propose(ctx, 4, corpora=radix_paths).tokens) == "159 "
    assert seen == [len(ctx.tokens)]


def test_context_votes_before_corpora_on_ties():
    ctx = NGramIndex.build([1, 2, 5, 1, 2], max_n=2)
    corpus = NGramIndex.build([1, 2, 6], max_n=2)
    assert propose(ctx, 1, corpora=[corpus]).tokens == [5]


def test_rejects_bad_n():
    with pytest.raises(ValueError):
        NGramIndex(min_n=3, max_n=2)


@pytest.fixture(scope="module")
def color_grammar():
    """(a fresh xgrammar grammar of COLOR for SmolLM2's tokenizer, its encode)."""
    tok = AutoTokenizer.from_pretrained(resolve_model_path(None))
    backend = create_backend("xgrammar", tok, 49152, [tok.eos_token_id])
    compiled = backend.compile(Constraint.from_fields(json_schema=json.dumps(COLOR)))
    return (lambda: backend.make_grammar(compiled)), (lambda t: tok.encode(t, add_special_tokens=False))


def test_grammar_vote_skips_tokens_the_grammar_forbids_and_carries_forced_runs(color_grammar):
    """Two earlier "green" (not in the enum) outvote one "red": under the grammar the draft takes red, with
    the confidence of its votes among allowed tokens; the run the grammar forces after it (jump-forward) is
    drafted exactly, confidence 1, and the draft goes on with the continuation that agrees with it."""
    make, encode = color_grammar
    grammar = make()
    start = grammar.jump_forward_tokens()  # '{"color":"'
    grammar.accept_tokens(start)
    (red,), (green,) = encode("red"), encode("green")
    walk = grammar.fork()
    walk.accept_token(red)
    run = walk.jump_forward_tokens()  # '","size":' as plain decoding appends it after red
    assert run
    seen = start + [green] + run + encode("7}") + start + [green] + run + encode("7}") + start + [red] + run
    ctx = NGramIndex.build(seen + encode("5}") + start, max_n=3)
    assert propose(ctx, 1).tokens == [green]
    p = propose(ctx, len(run) + 2, grammar=grammar.fork())
    assert p.tokens == [red, *run, *encode("5")]
    assert p.confidences == pytest.approx([1 / 2] + [1.0] * len(run) + [1 / 2])


def test_grammar_vote_looks_up_again_after_a_forced_run(color_grammar):
    """No earlier red is followed by the forced run: after the run the draft continues from the run's own
    earlier occurrence; without a grammar it would follow the red it matched."""
    make, encode = color_grammar
    grammar = make()
    start = grammar.jump_forward_tokens()
    grammar.accept_tokens(start)
    (red,) = encode("red")
    walk = grammar.fork()
    walk.accept_token(red)
    run = walk.jump_forward_tokens()
    after_red = encode(" is red.") + start
    ctx = NGramIndex.build(run + encode("8}") + start + [red] + after_red, max_n=3)
    assert propose(ctx, len(run) + 2).tokens == [red, *after_red[: len(run) + 1]]
    assert propose(ctx, len(run) + 2, grammar=grammar.fork()).tokens == [red, *run, *encode("8")]


def test_ngram_proposer_walks_a_fork_of_the_request_grammar(color_grammar):
    make, encode = color_grammar
    grammar = make()
    start = grammar.jump_forward_tokens()
    grammar.accept_tokens(start)
    (red,), (green,) = encode("red"), encode("green")
    req = SimpleNamespace(rid="a", origin_input_ids=start + [green] + start + [red], output_ids=start, grammar=grammar)
    before, after = allocate_bitmask(1, 49152), allocate_bitmask(1, 49152)
    grammar.fill_mask(before, 0)
    assert NGramProposer(max_n=3).propose([req], [1])[0].tokens == [red]  # green: 1 of 2 votes, the recent red 1
    grammar.fill_mask(after, 0)
    assert torch.equal(before, after)
    req.origin_input_ids = start + [green] + start + [green] + start + [red]
    assert NGramProposer(max_n=3).propose([req], [1])[0].tokens == [red]  # green outvotes red, but is forbidden
