"""Stage pseudo: CAMs -> pseudo masks ``pseudo/<id>.png`` (threshold or dense CRF)."""

from __future__ import annotations

from pathlib import Path

from wsss.config import crf_params
from wsss.io import save_label_png
from wsss.refine.pseudo import pseudo_mask
from wsss.stages.cams import load_cams
from wsss.stages.context import Context, run_per_image

OUTPUT = "pseudo"


def run(ctx: Context) -> dict:
    cfg = ctx.cfg.pseudo
    if cfg.mode not in ("threshold", "crf"):
        raise ValueError(f"pseudo.mode must be threshold or crf, got {cfg.mode!r}")
    crf = crf_params(cfg.crf_preset, ctx.cfg.crf) if cfg.mode == "crf" else None
    ids = ctx.union_ids(ctx.cfg.data.train_split, ctx.cfg.data.seed_split)

    def work(image_id: str, folder: Path) -> None:
        keys, cams = load_cams(ctx.out, image_id)
        mask = pseudo_mask(
            ctx.source.load(image_id).image,
            cams,
            keys,
            bg_threshold=ctx.cfg.cam.bg_threshold,
            crf=crf,
            crf_gt_prob=cfg.crf_gt_prob,
            ignore_uncertain=cfg.ignore_uncertain,
            conf_fg=cfg.conf_fg,
            conf_bg=cfg.conf_bg,
        )
        save_label_png(mask, folder / f"{image_id}.png")

    run_per_image(ctx, OUTPUT, ids, work)
    return {"images": len(ids), "mode": cfg.mode}
