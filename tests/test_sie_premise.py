"""The SIE-premise probe: partners share a class; a local network's anchor half equals its
single-image map, a network with image-global competition weakens it."""

import numpy as np
import pytest
import torch
from torch import nn

from wsss.bench.sie_premise import anchor_vs_single, main, pick_partners, summarize


class PointwiseCams(nn.Module):
    """cams = 1x1 conv of the image: no position depends on any other."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        nn.init.constant_(self.conv.weight, 1.0)

    def forward(self, x):
        return {"cams": self.conv(x)}


class GlobalCompetition(PointwiseCams):
    """cams = 1x1 conv minus its image-wide mean: a brighter partner lowers the anchor's map."""

    def forward(self, x):
        cams = self.conv(x)
        return {"cams": cams - cams.mean(dim=(2, 3), keepdim=True)}


def test_pick_partners_share_a_class_and_are_not_the_anchor():
    labels = np.array([[1, 0], [1, 0], [0, 1], [1, 1]], dtype=bool)
    partners = pick_partners(labels, np.random.default_rng(0))
    for i, j in enumerate(partners):
        if i == 2:  # class 1 is shared with image 3 only
            assert j == 3
        else:
            assert j != i and (labels[i] & labels[j]).any()
    alone = pick_partners(np.array([[1, 0], [0, 1]], dtype=bool), np.random.default_rng(0))
    assert alone.tolist() == [0, 1]


def test_a_local_network_keeps_the_anchor_map_unchanged():
    torch.manual_seed(0)
    anchor, partner = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8) + 1.0
    [record] = anchor_vs_single(PointwiseCams(), anchor, partner, np.array([0]))
    assert record["mass"] == pytest.approx(1.0)
    assert record["peak"] == pytest.approx(1.0)
    assert np.allclose(record["row_change"], 0.0)


def test_global_competition_weakens_the_anchor_half():
    torch.manual_seed(0)
    anchor = torch.rand(1, 3, 8, 8)
    partner = anchor + 1.0  # brighter everywhere: raises the stacked image's mean
    [record] = anchor_vs_single(GlobalCompetition(), anchor, partner, np.array([1]))
    assert record["mass"] < 0.5
    assert record["cover_half"] < record["cover_single"]
    summary = summarize([record])
    assert summary["classes"] == 1 and summary["mass_ratio_q25_median_q75"][1] < 0.5


def test_classes_without_a_positive_map_are_skipped_and_empty_summaries_refused():
    anchor = -torch.ones(1, 3, 4, 4)  # the pointwise map is negative everywhere
    assert anchor_vs_single(PointwiseCams(), anchor, anchor, np.array([0, 1])) == []
    with pytest.raises(ValueError, match="no present class"):
        summarize([])


def test_cli_refuses_a_run_without_a_classifier(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "classifier.pt not found" in capsys.readouterr().err
