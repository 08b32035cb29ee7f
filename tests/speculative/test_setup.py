import pytest
import torch

from sglang_dspark.speculative.setup import load_calibration
from sglang_dspark.speculative.sts import STSCalibration


def test_load_calibration_applies_the_drafter_dirs_sts_files_with_their_biases(tmp_path):
    STSCalibration((2.0, 1.0), (0.5, -0.5)).save(tmp_path / "sts_greedy.json")
    STSCalibration((1.0, 4.0)).save(tmp_path / "sts_t1.json")
    calibration = load_calibration(None, tmp_path, block_size=2)
    logits = torch.tensor([[1.0, 2.0], [1.0, 2.0]])  # [R, G]
    out = calibration(logits, torch.tensor([False, True]))
    torch.testing.assert_close(out[0], torch.sigmoid(torch.tensor([1.0 / 2 + 0.5, 2.0 - 0.5])))
    torch.testing.assert_close(out[1], torch.sigmoid(torch.tensor([1.0, 2.0 / 4])))


def test_load_calibration_without_files_uses_raw_confidences_and_rejects_bad_ones(tmp_path):
    logits = torch.tensor([[1.0, -2.0]])
    torch.testing.assert_close(
        load_calibration(None, tmp_path, 2)(logits, torch.tensor([False])), torch.sigmoid(logits)
    )
    STSCalibration((1.0,)).save(tmp_path / "short.json")
    with pytest.raises(ValueError, match="has 1 temperatures, the drafter drafts 2"):
        load_calibration(str(tmp_path / "short.json"), tmp_path, 2)
    with pytest.raises(ValueError, match="does not exist"):
        load_calibration(str(tmp_path / "missing.json"), tmp_path, 2)
