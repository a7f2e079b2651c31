import numpy as np

from wsss.diagnostics import PART, RAILS, WATER, RegionCounter


def test_region_counts_on_a_hand_made_case():
    gt = np.array([[0, 0, 0, 0], [0, 2, 2, 2], [0, 2, 2, 255]])
    regions = np.array([[WATER, WATER, RAILS, 0], [0, PART, 0, 0], [0, 0, 0, 0]], np.uint8)
    pred = np.array([[2, 0, 0, 0], [2, 2, 0, 0], [0, 0, 2, 2]])
    counter = RegionCounter()
    counter.update("a", gt, pred, regions)
    s = counter.summary()
    assert s["fg_rate_on_context"] == round(100 / 3, 2)  # 1 of 3 context pixels
    assert s["fg_rate_on_plain_background"] == round(100 / 3, 2)  # (1, 0) of 3 plain bg pixels
    assert s["recall_on_parts"] == 100.0
    assert s["recall_on_bodies"] == 25.0  # body: (1,2) (1,3) (2,1) (2,2) -> only (2,2) hit
    assert counter.worst_over_activation(1) == ["a"]
    assert counter.worst_under_activation(1) == ["a"]


def test_empty_regions_give_none():
    counter = RegionCounter()
    counter.update("a", np.zeros((2, 2), int), np.zeros((2, 2), int), np.zeros((2, 2), np.uint8))
    assert counter.summary()["fg_rate_on_context"] is None
    assert counter.worst_over_activation(3) == []
