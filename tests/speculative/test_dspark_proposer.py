"""DraftGrammarWalk: the grammar mask of every sequential DSpark draft step (DESIGN.md 4.1)."""

from dataclasses import dataclass

import pytest
import torch
from transformers import AutoTokenizer

from sglang_dspark.grammar import create_backend
from sglang_dspark.grammar.base import Constraint, allocate_bitmask
from sglang_dspark.grammar.mask import allowed_from_bitmask
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.speculative.dspark_proposer import DraftGrammarWalk

VOCAB, EOS, BLOCK = 49152, 2, 7
SCHEMA = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'


@dataclass
class Request:  # what the walk reads of a scheduler request
    grammar: object | None


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path(None))


@pytest.fixture(scope="module")
def backend(tokenizer):
    return create_backend("xgrammar", tokenizer, VOCAB, [EOS])


def grammar(backend, **fields):
    return backend.make_grammar(backend.compile(Constraint.from_fields(**fields)))


def allowed_of(g) -> torch.Tensor:
    bitmask = allocate_bitmask(1, VOCAB)
    g.fill_mask(bitmask, 0)
    return allowed_from_bitmask(bitmask, VOCAB)[0]


def test_each_step_gets_the_mask_after_the_drafted_tokens(backend, tokenizer):
    g = grammar(backend, json_schema=SCHEMA)
    reference = g.fork()
    start = allowed_of(g)
    walk = DraftGrammarWalk([Request(None), Request(g)], VOCAB, BLOCK)
    tokens = tokenizer.encode('{"city":"Paris"}') + [EOS]  # xgrammar's JSON has no optional whitespace
    drafted = torch.zeros(2, 0, dtype=torch.int64)
    forced_steps = []
    for step, tok in enumerate(tokens):
        allowed = walk(step, drafted)
        assert allowed[0].all()  # no grammar: unconstrained
        assert torch.equal(allowed[1], allowed_of(reference))
        assert allowed[1, tok]
        forced_steps.append(int(allowed[1].sum()) == 1)
        assert reference.accept_token(tok)
        drafted = torch.cat([drafted, torch.tensor([[0], [tok]])], dim=1)
    assert walk.forced[1, : len(tokens)].tolist() == forced_steps[:BLOCK]
    # every token of the object has alternatives ('{' or '{"', ...); once it is closed only EOS is allowed
    assert forced_steps == [False] * (len(tokens) - 1) + [True]
    assert not walk.forced[0].any()
    assert torch.equal(allowed_of(g), start)  # the request's own grammar did not move


def test_a_terminated_or_rejecting_fork_leaves_the_row_unconstrained(backend, tokenizer):
    (ab,) = tokenizer.encode("ab")
    (b,) = tokenizer.encode("b")
    walk = DraftGrammarWalk([Request(grammar(backend, regex="ab")), Request(grammar(backend, regex="ab"))], VOCAB, 3)
    first = walk(0, torch.zeros(2, 0, dtype=torch.int64))
    assert first[0, ab] and not first[0, b] and torch.equal(first[0], first[1])
    allowed = walk(1, torch.tensor([[ab], [b]]))  # row 1 drafted a token its grammar rejects: unconstrained
    assert allowed[1].all()
    assert allowed[0].sum() == 1 and allowed[0, EOS] and walk.forced[0, 1]  # "ab" must end here
    allowed = walk(2, torch.tensor([[ab, EOS], [b, b]]))
    assert allowed.all() and not walk.active  # terminated: nothing left to constrain
    assert walk.forced.tolist() == [[False, True, False], [False, False, False]]
