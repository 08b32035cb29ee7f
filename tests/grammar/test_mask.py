import pytest
import torch

from sglang_dspark.grammar.base import allocate_bitmask
from sglang_dspark.grammar.mask import (
    allow_token_,
    allowed_from_bitmask,
    apply_bitmask_,
    banned_from_bitmask,
    single_allowed_token,
)


def reference_allowed(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1  # [R, W, 32]
    return bits.flatten(1)[:, :vocab].bool()


@pytest.mark.parametrize("vocab", [32, 50, 49152])
def test_unpack_matches_shift_reference(vocab):
    g = torch.Generator().manual_seed(vocab)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, (vocab + 31) // 32), generator=g, dtype=torch.int32)
    expected = reference_allowed(bitmask, vocab)
    assert torch.equal(allowed_from_bitmask(bitmask, vocab), expected)
    assert torch.equal(banned_from_bitmask(bitmask, vocab), ~expected)


@pytest.mark.parametrize("contiguous", [True, False])  # xgrammar's kernel / the torch fallback
@pytest.mark.parametrize("rows", [None, [0, 2]])
def test_apply_bitmask_in_place(contiguous, rows):
    vocab = 49152
    g = torch.Generator().manual_seed(0)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, vocab // 32), generator=g, dtype=torch.int32)
    logits = torch.randn(3, vocab, generator=g)
    target = logits.clone() if contiguous else logits.t().contiguous().t()  # same values, column-major
    assert apply_bitmask_(target, bitmask, rows) is target
    expected = logits.masked_fill(~reference_allowed(bitmask, vocab), float("-inf"))
    if rows is not None:
        expected[1] = logits[1]
    assert torch.equal(target, expected)


def test_single_allowed_token_and_allow_token():
    row = allocate_bitmask(1, 100)[0].zero_()
    assert single_allowed_token(row) is None
    allow_token_(row, 63)  # bit 31: the int32 sign bit
    assert int(row[1]) == -(2**31) and single_allowed_token(row) == 63
    allow_token_(row, 5)
    assert single_allowed_token(row) is None
    assert allowed_from_bitmask(row.unsqueeze(0), 100)[0].nonzero().flatten().tolist() == [5, 63]
