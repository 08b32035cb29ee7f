import random

import pytest

from sglang_dspark.speculative.ngram import NGramIndex, propose


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
