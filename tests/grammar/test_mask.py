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
    logits = torch.randn(3, vocab)
    masked = apply_bitmask_(logits.clone(), bitmask)
    assert torch.equal(masked, logits.masked_fill(~expected, float("-inf")))


def test_single_allowed_token_and_allow_token():
    row = allocate_bitmask(1, 100)[0].zero_()
    assert single_allowed_token(row) is None
    allow_token_(row, 63)  # bit 31: the int32 sign bit
    assert int(row[1]) == -(2**31) and single_allowed_token(row) == 63
    allow_token_(row, 5)
    assert single_allowed_token(row) is None
    assert allowed_from_bitmask(row.unsqueeze(0), 100)[0].nonzero().flatten().tolist() == [5, 63]
