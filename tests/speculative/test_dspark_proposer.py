"""DSparkProposer: the grammar mask of every sequential draft step, drafts after forced tokens.

See docs/design.md "Grammar-aware drafting".
"""

from dataclasses import dataclass, field

import pytest
import torch
from tiny_drafter import features, make_drafter
from transformers import AutoTokenizer

from sglang_dspark.grammar import create_backend
from sglang_dspark.grammar.base import Constraint, allocate_bitmask
from sglang_dspark.grammar.mask import allowed_from_bitmask
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.models.tiny import tiny_random_model
from sglang_dspark.sampling.sampling_params import SamplingParams
from sglang_dspark.speculative.dspark_proposer import ConfidenceCalibration, DraftGrammarWalk, DSparkProposer

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
    g = grammar(backend, json_schema='{"type": "string"}')  # no token ever forces a run of tokens
    reference = g.fork()
    start = allowed_of(g)
    walk = DraftGrammarWalk([Request(None), Request(g)], VOCAB, BLOCK)
    tokens = tokenizer.encode('"Paris"') + [EOS]
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
    # every token of the string has alternatives; once it is closed only EOS is allowed
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


def test_forced_tokens_take_the_first_steps_then_the_grammar_after_them(backend, tokenizer):
    """A jump-forward request's grammar has accepted its forced tokens: the walk allows exactly those at the
    first steps, then continues from the grammar's state after them."""
    tokens = tokenizer.encode('{"city":"Paris"}')
    g = grammar(backend, json_schema=SCHEMA)
    for tok in tokens[:2]:
        assert g.accept_token(tok)
    reference = g.fork()
    walk = DraftGrammarWalk([Request(g), Request(None)], VOCAB, BLOCK, forced=[tokens[:2], []])
    drafted = torch.zeros(2, 0, dtype=torch.int64)
    for step, tok in enumerate(tokens[:4]):
        allowed = walk(step, drafted)
        if step < 2:
            assert allowed[0].sum() == 1 and allowed[0, tok] and walk.forced[0, step]
        else:
            assert torch.equal(allowed[0], allowed_of(reference))
            assert reference.accept_token(tok)
        assert allowed[1].all() and not walk.forced[1, step]
        drafted = torch.cat([drafted, torch.tensor([[tok], [0]])], dim=1)


def test_a_drafted_token_that_forces_a_run_pins_the_next_steps_to_it(backend, tokenizer):
    """After '{' the schema forces '"city":"': the next steps allow exactly its jump-forward tokenization
    (the tokens plain decoding appends), each marked forced, and then the grammar's mask after them."""
    g = grammar(backend, json_schema=SCHEMA)
    reference = g.fork()
    (brace,) = tokenizer.encode("{")
    assert reference.accept_token(brace)
    run = reference.jump_forward_tokens()
    assert run and tokenizer.decode(run) == '"city":"'
    assert reference.accept_tokens(run) == len(run)
    walk = DraftGrammarWalk([Request(g)], VOCAB, len(run) + 2)
    drafted = torch.zeros(1, 0, dtype=torch.int64)
    for step, tok in enumerate([brace, *run]):
        allowed = walk(step, drafted)
        if step > 0:
            assert allowed[0].sum() == 1 and allowed[0, tok] and walk.forced[0, step]
        drafted = torch.cat([drafted, torch.tensor([[tok]])], dim=1)
    assert torch.equal(walk(len(run) + 1, drafted)[0], allowed_of(reference))
    assert not walk.forced[0, len(run) + 1]


@dataclass
class DecodingRequest:  # what the proposer reads of a scheduler request (SpecRequest)
    rid: str
    origin_input_ids: list[int]
    output_ids: list[int]
    kv_len: int
    sampling_params: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0))
    generator: torch.Generator | None = None
    grammar: object | None = None
    req_pool_idx: int = 0


def test_drafts_after_forced_tokens_continue_the_block_from_the_last_token_with_kv():
    """Forcing the tokens the drafter would draft anyway leaves the rest of its block unchanged: a request
    whose jump-forward appended d_1..d_m (no KV yet) gets d_m+1..d_G with the same confidences, in one
    batch with a request drafting normally; with G forced tokens there is nothing left to draft."""
    target = tiny_random_model()
    drafter = make_drafter(target)
    g = drafter.config.block_size
    ids = torch.randint(0, 97, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    proposer = DSparkProposer(drafter, torch.arange(64)[None], 64, ConfidenceCalibration(), seed=0)
    proposer.store_features([features(target, ids)], torch.arange(len(ids)))

    def request(rid: str, forced: list[int]) -> DecodingRequest:  # KV for ids[:19]; ids[19] is the anchor
        return DecodingRequest(rid, ids[:16], ids[16:] + forced, kv_len=len(ids) - 1)

    (plain,) = proposer.propose([request("plain", [])], [g])
    assert len(plain.tokens) == g
    for m in (1, 2):
        normal, after = proposer.propose([request(f"n{m}", []), request(f"f{m}", plain.tokens[:m])], [g, g])
        assert normal.tokens == plain.tokens
        assert after.tokens == plain.tokens[m:]
        assert after.confidences == pytest.approx(plain.confidences[m:], abs=1e-5)
    (short,) = proposer.propose([request("short", plain.tokens[:1])], [1])
    assert short.tokens == plain.tokens[1:2]
    (none,) = proposer.propose([request("none", plain.tokens)], [g])
    assert none.tokens == []
