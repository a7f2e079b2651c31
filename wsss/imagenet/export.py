"""Export and serving of the ``imagenet`` source: ``imagenet_cam_net`` and ``imagenet_cam_seg``.

    python export/onnx.py --imagenet [--imagenet-table TABLE.tsv] [--repository REPO]

writes, parity-checked like every export (:func:`wsss.export.onnx.export_module`):

- ``imagenet_cam_net``: IMAGES -> SCORES [B, C] (log-odds of each class's ImageNet probability
  mass), CAMS [B, C, H, W] (:class:`wsss.imagenet.network.ImagenetCamNet`, max-normalised);
- ``imagenet_cam_seg``: IMAGES -> PROBS [B, C + 1, H, W] (:class:`wsss.export.wrappers.
  CamSegExport`: the CAMs of the classes whose probability exceeds ``SCORE_THRESHOLD`` beside
  the constant background score ``BG_THRESHOLD``),

then the shared models and the ensembles: ``imagenet_cam`` and ``imagenet_segment`` (decode ->
preprocess -> imagenet_cam_seg -> densecrf), the same endpoints a trained method has.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from wsss.constants import BACKGROUND, IMAGENET_MEAN, IMAGENET_STD
from wsss.export.onnx import Exported, Network, export_module, network_named
from wsss.export.parity import Tolerance
from wsss.export.wrappers import SEG_OUTPUTS, CamSegExport
from wsss.imagenet.network import ImagenetCamNet
from wsss.imagenet.table import DEFAULT_TABLE, ImagenetTable, load_table

METHOD = "imagenet"
# A class is present when its ImageNet probability mass exceeds this (sigmoid of SCORES).
# Measured (docs/imagenet.md, python -m wsss.bench --only imagenet): present classes 0.99-1.00 on
# the photos, the largest absent class 0.08 (bottle on the astronaut photo).
SCORE_THRESHOLD = 0.3
# Background score against the max-normalised CAMs: the best of 0.1-0.4 on the quokka's mask
# and the cat photo's boxes (docs/imagenet.md).
BG_THRESHOLD = 0.2


def method_for_table(table_path: Path) -> str:
    """``imagenet`` for the default VOC table, else the table's file stem (another grouping is
    served beside it as ``<stem>_cam`` / ``<stem>_segment``)."""
    if Path(table_path).resolve() == DEFAULT_TABLE.resolve():
        return METHOD
    stem = Path(table_path).stem
    if not stem.replace("_", "").isalnum():
        raise ValueError(
            f"{table_path}: the file stem must be letters, digits and _ (a model name)"
        )
    return stem


def _no_checkpoint(path: Path):
    raise NotImplementedError(f"imagenet_cam_seg has no checkpoint of its own ({path})")


def cam_seg_network(score_threshold: float, bg_threshold: float) -> Network:
    """The ``cam_seg`` network description (no checkpoint of its own: built in memory)."""
    return Network(
        "cam_seg",
        "",
        _no_checkpoint,
        lambda model: CamSegExport(model, score_threshold, bg_threshold),
        SEG_OUTPUTS,
        False,
        "IMAGES float32 [B, 3, H, W] RGB 0..255 -> PROBS [B, C+1, H, W]: CAMs of the classes "
        f"scored above {score_threshold} beside a constant background {bg_threshold}, "
        "normalised over the channel axis",
        {"PROBS": Tolerance()},
    )


def imagenet_meta(
    method: str, table: ImagenetTable, model: ImagenetCamNet, thresholds: dict
) -> dict:
    """Export metadata, in the form :func:`wsss.export.onnx.onnx_metadata` reads."""
    return {
        "method": method,
        "class_names": [BACKGROUND, *table.classes],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "backbone": {"name": "mobilenetv2", "output_stride": model.backbone.output_stride},
        "export_metadata": {
            "imagenet_table": table.path.name,
            "imagenet_members": {c: list(m) for c, m in table.members.items()},
            "combination": model.combination,
            **thresholds,
        },
    }


def export_imagenet(
    repository: Path,
    table_path: Path = DEFAULT_TABLE,
    *,
    score_threshold: float = SCORE_THRESHOLD,
    bg_threshold: float = BG_THRESHOLD,
    say: Callable[[str], None] = print,
    **options,
) -> list[Exported]:
    """Exports both networks into ``repository`` as ``<method>_cam_net`` and ``<method>_cam_seg``
    (:func:`method_for_table`); ``options``: those of ``export_module``."""
    table = load_table(table_path)
    model = ImagenetCamNet(table)
    thresholds = {"score_threshold": score_threshold, "bg_threshold": bg_threshold}
    meta = imagenet_meta(method_for_table(table_path), table, model, thresholds)
    networks = (network_named("cam_net"), cam_seg_network(score_threshold, bg_threshold))
    return [
        export_module(n, model, meta, model.checkpoint, repository, say=say, **options)
        for n in networks
    ]


def repository_for_imagenet(
    repository: str | Path,
    table_path: Path = DEFAULT_TABLE,
    say: Callable[[str], None] = print,
    **options,
) -> str:
    """A servable repository with the imagenet source: shared models, export (``options``: those
    of ``export_module``), ensembles; returns the method name of its endpoints."""
    from wsss.export.ensembles import copy_shared_models, write_method

    repository = Path(repository)
    copy_shared_models(repository)
    export_imagenet(repository, table_path, say=say, **options)
    method = method_for_table(table_path)
    for name in write_method(repository, method):
        say(f"wrote {repository / name}")
    return method


__all__ = ["METHOD", "export_imagenet", "method_for_table", "repository_for_imagenet"]
