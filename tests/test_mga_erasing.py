"""The MGA-erasing probe: the share of the object erased follows the threshold on a known map,
the erased image is scored on what is left, and bad input is refused."""

import numpy as np
import pytest
import torch
from torch import nn

from wsss.bench.mga_erasing import erase_record, main, parse_thresholds, summarize
from wsss.models.normalize import Normalize


class RedChannelCams(nn.Module):
    """One class; its CAM is the red channel (0..255) and its score the CAM's mean / 100."""

    def __init__(self):
        super().__init__()
        self.normalize = Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # fill colour 0

    def forward(self, x):
        cams = x[:, :1]
        return {"cams": cams, "logits": cams.mean(dim=(2, 3)) / 100.0}


def ramp_image() -> tuple[torch.Tensor, np.ndarray]:
    """8 x 8 image whose red channel is 0 on rows 0-3 and 40, 80, 120, 160 on rows 4-7 (an
    object on rows 4-7): min-max normalised 0, 0.25, 0.5, 0.75, 1.0."""
    image = torch.zeros(1, 3, 8, 8)
    for i, row in enumerate(range(4, 8)):
        image[0, 0, row] = 40.0 * (i + 1)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[4:] = 1
    return image, mask


def test_the_threshold_sets_the_share_of_the_object_erased():
    image, mask = ramp_image()
    labels = torch.ones(1, 1)
    model = RedChannelCams()
    # threshold 0.6: rows of 0.75 and 1.0 erased = half the object, a quarter of the image
    half = erase_record(model, image, labels, mask, 0.6)
    assert half["object_erased"] == pytest.approx(0.5)
    assert half["image_erased"] == pytest.approx(0.25)
    # score before: mean red (40 + 80 + 120 + 160) * 8 / 64 = 50 -> sigmoid(0.5); after erasing
    # the two brightest rows (fill 0): (40 + 80) * 8 / 64 = 15 -> sigmoid(0.15)
    assert half["anchor_probability"] == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item())
    assert half["erased_probability"] == pytest.approx(torch.sigmoid(torch.tensor(0.15)).item())
    whole = erase_record(model, image, labels, mask, 0.2)  # every object row >= 0.25
    assert whole["object_erased"] == pytest.approx(1.0)
    assert whole["erased_probability"] == pytest.approx(0.5)  # nothing left: score 0


def test_summary_counts_mostly_erased_images_and_refuses_none():
    records = [
        {
            "object_erased": share,
            "image_erased": 0.1,
            "anchor_probability": 0.9,
            "erased_probability": p,
        }
        for share, p in ((1.0, 0.2), (0.95, 0.4), (0.3, 0.8), (0.5, 0.7))
    ]
    summary = summarize(records)
    assert summary["images_mostly_erased"] == pytest.approx(0.5)
    assert summary["erased_still_recognised"] == pytest.approx(0.5)
    assert summary["object_erased_mean"] == pytest.approx(0.688, abs=1e-3)
    with pytest.raises(ValueError, match="no image"):
        summarize([])


def test_thresholds_outside_the_unit_interval_are_refused(tmp_path, capsys):
    assert parse_thresholds("0.6,0.8") == (0.6, 0.8)
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--thresholds", "1.5"])
    assert "thresholds must lie in (0, 1]" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "classifier.pt not found" in capsys.readouterr().err
