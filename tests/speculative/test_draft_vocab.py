"""Draft vocabulary: token frequencies, the K ids the drafter may propose, and how the server picks them."""

from __future__ import annotations

import pytest
import torch

from sglang_dspark.server_args import ServerArgs
from sglang_dspark.speculative.dspark.draft_vocab import FREQUENCIES_NAME, TokenFrequencies
from sglang_dspark.speculative.setup import load_draft_vocab


def test_counts_rank_tokens_by_frequency_then_id():
    freqs = TokenFrequencies.count([[5, 7, 7, 9], [9, 7, 2]])
    assert freqs.token_ids == (7, 9, 2, 5) and freqs.counts == (3, 2, 1, 1)
    assert freqs.counted_tokens == 7 and freqs.coverage(2) == pytest.approx(5 / 7)


def test_draft_vocab_takes_the_most_frequent_and_fills_up_by_id():
    freqs = TokenFrequencies((40, 3, 17), (9, 5, 1))
    assert freqs.draft_vocab(2, 50).tolist() == [3, 40]
    assert freqs.draft_vocab(5, 50).tolist() == [0, 1, 3, 17, 40]  # 0 and 1: never counted, lowest ids
    for k in (0, 51):
        with pytest.raises(ValueError, match="size must be in"):
            freqs.draft_vocab(k, 50)
    with pytest.raises(ValueError, match="beyond the vocabulary"):
        freqs.draft_vocab(2, 20)
    with pytest.raises(ValueError, match="distinct"):
        TokenFrequencies((1, 1), (2, 2))


def test_save_load_round_trip(tmp_path):
    freqs = TokenFrequencies.count([[1, 2, 2, 3, 3, 3]])
    freqs.save(tmp_path / FREQUENCIES_NAME)
    assert TokenFrequencies.load(tmp_path / FREQUENCIES_NAME) == freqs


def test_server_flag_picks_the_draft_vocabulary(tmp_path):
    assert load_draft_vocab(None, tmp_path, 100) is None  # no frequencies: the whole vocabulary
    with pytest.raises(ValueError, match="token_frequencies.json"):
        load_draft_vocab(10, tmp_path, 100)
    TokenFrequencies.count([list(range(100)) * 2, [7, 7]]).save(tmp_path / FREQUENCIES_NAME)
    assert load_draft_vocab(0, tmp_path, 100) is None  # 0: the whole vocabulary
    assert load_draft_vocab(None, tmp_path, 100).shape == (100,)  # the default 8192, capped at the vocabulary
    ten = load_draft_vocab(10, tmp_path, 100)
    assert ten.dtype == torch.int64 and ten.tolist() == sorted(ten.tolist()) and 7 in ten.tolist()


def test_negative_draft_vocab_size_is_refused():
    with pytest.raises(ValueError, match="--speculative-dspark-draft-vocab-size"):
        ServerArgs(speculative_dspark_draft_vocab_size=-1)
