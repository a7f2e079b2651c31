"""imagenet section: the ``imagenet`` source (ImageNet MobileNetV2 CAMs over the VOC classes,
no training) on real photos shipped in installed packages, in process, through the served
pipeline's own code: the preprocess resize, the exported wrappers in PyTorch and the
``densecrf`` model's CRF with the checked-in settings.

- photos: top ImageNet classes, the VOC classes found present (probability mass above the
  served score threshold) and the share of pixels each gets in the label map;
- choices: the combination of member CAMs (``weighted`` / ``top``) x the background threshold,
  scored on the two reference regions (quokka mask IoU, with ImageNet's marsupials grouped as
  one class; the cat photo's cat and background boxes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from wsss.bench.common import markdown_table

BG_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4)


class Pipeline:
    """photo RGB uint8 [H, W, 3] -> (label map [H, W], class probabilities [C], ImageNet
    probabilities [1000]) in process."""

    def __init__(self, table_path: Path, combination: str, score_threshold: float):
        from wsss.bench.serving_checks import preprocess_sides, served_crf
        from wsss.export.ensembles import source_repository
        from wsss.imagenet.network import ImagenetCamNet
        from wsss.imagenet.table import load_table

        self.net = ImagenetCamNet(load_table(table_path), combination)
        self.score_threshold = score_threshold
        repository = source_repository()  # the checked-in shared models' settings, as served
        self.crf = served_crf(repository)  # densecrf's, side cap included
        self.sides = preprocess_sides(repository)  # preprocess's resize policy

    def run(self, image: np.ndarray, bg_threshold: float) -> tuple[np.ndarray, ...]:
        import torch

        from wsss.export.wrappers import CamSegExport
        from wsss.serving.imaging import network_input, network_size

        size = network_size(*image.shape[:2], *self.sides)
        x = torch.from_numpy(network_input(image, size))
        seg = CamSegExport(self.net, self.score_threshold, bg_threshold)
        with torch.inference_mode():
            probs = seg(x)[0].numpy()
            out = self.net(x)
        labels, _ = self.crf.refine(image, probs)
        scores = out["logits"].sigmoid()[0].numpy()
        return labels, scores, out["imagenet_logits"].softmax(1)[0].numpy()


def _photo_rows(pipeline: Pipeline, bg_threshold: float, say) -> list[dict]:
    from wsss.imagenet.photos import PHOTOS, PhotoMissing

    classes = pipeline.net.table.classes
    names = pipeline.net.table.names
    rows = []
    for item in PHOTOS:
        try:
            image = item.load()
        except PhotoMissing as exc:
            say(f"imagenet: skipped {item.name}: {exc}")
            continue
        labels, scores, p = pipeline.run(image, bg_threshold)
        top3 = [[names[i], round(float(p[i]), 3)] for i in np.argsort(-p)[:3]]
        found = {
            classes[c]: {
                "probability": round(float(scores[c]), 3),
                "pixels": round(float(np.mean(labels == c + 1)), 3),
            }
            for c in np.flatnonzero(scores > pipeline.score_threshold)
        }
        rows.append({
            "photo": item.name,
            "size": list(image.shape[:2]),
            "expected": list(item.expected),
            "note": item.note,
            "imagenet_top3": top3,
            "found": found,
            "largest_absent": max(
                (round(float(scores[c]), 3), classes[c])
                for c in range(len(classes)) if classes[c] not in found
            ),
        })  # fmt: skip
        say(f"imagenet: {item.name}: {', '.join(found) or 'no VOC class'}")
    return rows


def _choice_rows(score_threshold: float, say) -> list[dict]:
    from wsss.imagenet.network import COMBINATIONS
    from wsss.imagenet.photos import (
        CHELSEA_BACKGROUND_BOX,
        CHELSEA_CAT_BOX,
        MARSUPIAL_TABLE,
        PhotoMissing,
        box_mask,
        photo,
        quokka_mask,
    )
    from wsss.imagenet.table import DEFAULT_TABLE

    cat = photo("chelsea").load()
    inside = box_mask(cat.shape[:2], CHELSEA_CAT_BOX)
    outside = box_mask(cat.shape[:2], CHELSEA_BACKGROUND_BOX)
    try:
        quokka, truth = photo("quokka").load(), quokka_mask()
    except PhotoMissing as exc:
        say(f"imagenet: no quokka rows: {exc}")
        quokka = truth = None
    rows = []
    for combination in COMBINATIONS:
        voc = Pipeline(DEFAULT_TABLE, combination, score_threshold)
        marsupial = Pipeline(MARSUPIAL_TABLE, combination, score_threshold)
        cat_label = voc.net.table.classes.index("cat") + 1
        for bg in BG_THRESHOLDS:
            labels = voc.run(cat, bg)[0]
            row = {
                "combination": combination,
                "bg_threshold": bg,
                "cat_box_cat": round(float(np.mean(labels[inside] == cat_label)), 3),
                "background_box_cat": round(float(np.mean(labels[outside] == cat_label)), 3),
            }
            if quokka is not None:
                found = marsupial.run(quokka, bg)[0] == 1
                row["quokka_iou"] = round(float((found & truth).sum() / (found | truth).sum()), 3)
            rows.append(row)
            say(f"imagenet: {row}")
    return rows


def section(out_dir: Path, say: Callable[[str], None]) -> dict:
    import torch

    from wsss.imagenet.export import BG_THRESHOLD, SCORE_THRESHOLD
    from wsss.imagenet.network import COMBINATIONS
    from wsss.imagenet.table import DEFAULT_TABLE

    torch.set_num_threads(1)
    served = Pipeline(DEFAULT_TABLE, COMBINATIONS[0], SCORE_THRESHOLD)
    return {
        "score_threshold": SCORE_THRESHOLD,
        "bg_threshold": BG_THRESHOLD,
        "combination": COMBINATIONS[0],
        "photos": _photo_rows(served, BG_THRESHOLD, say),
        "choices": _choice_rows(SCORE_THRESHOLD, say),
    }


def markdown(results: dict) -> str:
    photos = [
        [
            r["photo"],
            ", ".join(r["expected"]) or "–",
            ", ".join(f"{n} {p:.2f}" for n, p in r["imagenet_top3"]),
            ", ".join(
                f"{c} (p {f['probability']:.2f}, {100 * f['pixels']:.0f} % of pixels)"
                for c, f in r["found"].items()
            ) or "none",
            f"{r['largest_absent'][1]} {r['largest_absent'][0]:.2f}",
        ]
        for r in results["photos"]
    ]  # fmt: skip
    choices = [
        [
            r["combination"],
            f"{r['bg_threshold']:.2f}",
            f"{r.get('quokka_iou', float('nan')):.3f}",
            f"{100 * r['cat_box_cat']:.1f}",
            f"{100 * r['background_box_cat']:.1f}",
        ]
        for r in results["choices"]
    ]
    return (
        "Served settings: combination `{combination}`, a class is present when its ImageNet "
        "probability mass exceeds {score_threshold}, background threshold {bg_threshold}.\n\n"
    ).format(**results) + markdown_table(
        ["photo", "a person sees", "ImageNet top 3", "VOC classes found", "largest absent"], photos
    ) + "\n" + markdown_table(
        ["CAM combination", "bg threshold", "quokka mask IoU", "cat box: cat %",
         "background box: cat %"],
        choices,
    ) + (
        "\nQuokka: imgaug's polygon mask, ImageNet's marsupials (wallaby, koala, wombat) grouped "
        "as one class (`tests/data/imagenet_marsupial.tsv`); cat boxes: "
        "`wsss/imagenet/photos.py`. Every row runs the served code in process (preprocess "
        "resize, the exported wrappers in PyTorch, the densecrf model's CRF settings).\n"
    )  # fmt: skip
