"""PyTorch datasets over an ImageSource: classification crops and segmentation crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from wsss.data import transforms as T
from wsss.data.base import DatasetError, ImageSource


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] in 0..255 (normalisation happens in the network)."""
    return torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1)).float()


def _rng() -> np.random.Generator:
    """A generator drawn from torch's RNG, so worker seeding and torch.manual_seed apply."""
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))


class ClassificationDataset(Dataset):
    """Random resize-long, flip, colour jitter and crop; returns image [3, S, S], labels [C].

    With ``with_saliency`` the sample's saliency map goes through the same geometry and is
    returned as float [1, S, S] in [0, 1] (EPS); crop padding gets saliency 0.
    """

    def __init__(
        self,
        source: ImageSource,
        ids: list[str],
        crop: int,
        resize_long: tuple[int, int],
        color_jitter: float = 0.0,
        with_saliency: bool = False,
        hue_jitter: float = 0.0,
        saliency_resize: str = "nearest",
    ):
        if saliency_resize not in T.MASK_FILTERS:
            raise ValueError(
                f"saliency_resize must be one of {', '.join(T.MASK_FILTERS)}, "
                f"got {saliency_resize!r}"
            )
        self.source, self.ids, self.crop = source, ids, crop
        self.resize_long, self.color_jitter = resize_long, color_jitter
        self.hue_jitter, self.saliency_resize = hue_jitter, saliency_resize
        self.with_saliency = with_saliency

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        sample = self.source.load(self.ids[index])
        rng = _rng()
        aux = None
        if self.with_saliency:
            if sample.saliency is None:
                raise DatasetError(f"{sample.name}: this method needs saliency maps, none found")
            aux = sample.saliency
        image, aux = T.random_resize_long(
            sample.image, aux, *self.resize_long, rng, self.saliency_resize
        )
        image, aux = T.random_hflip(image, aux, rng)
        image = T.color_jitter(image, self.color_jitter, rng, self.hue_jitter)
        if aux is not None:
            aux = aux.copy()
            aux[aux == 255] = 254  # keep 255 free: the crop pads with it, mapped to 0 below
        image, aux = T.random_crop(image, aux, self.crop, rng)
        item = {
            "name": sample.name,
            "image": image_to_tensor(image),
            "labels": torch.from_numpy(sample.labels.astype(np.float32)),
        }
        if aux is not None:
            sal = np.where(aux == 255, 0, aux).astype(np.float32) / 254.0
            item["saliency"] = torch.from_numpy(sal)[None]
        return item


class SegmentationDataset(Dataset):
    """Random rescale, flip and crop of image and mask; image [3, S, S], mask int64 [S, S].

    Masks come from ``mask_dir`` (pseudo masks, ``<id>.png``) or, when it is None, from the
    source's ground truth (the fully supervised upper bound).
    """

    def __init__(
        self,
        source: ImageSource,
        ids: list[str],
        crop: int,
        scale_range: tuple[float, float],
        mask_dir: Path | None = None,
    ):
        self.source, self.ids, self.crop = source, ids, crop
        self.scale_range, self.mask_dir = scale_range, mask_dir

    def __len__(self) -> int:
        return len(self.ids)

    def _mask(self, sample) -> np.ndarray:
        if self.mask_dir is None:
            if sample.mask is None:
                raise DatasetError(f"{sample.name}: no ground-truth mask")
            return sample.mask
        path = self.mask_dir / f"{sample.name}.png"
        if not path.exists():
            raise DatasetError(f"pseudo mask missing: {path}")
        return np.asarray(Image.open(path))

    def __getitem__(self, index: int) -> dict:
        sample = self.source.load(self.ids[index])
        rng = _rng()
        image, mask = T.random_scale(sample.image, self._mask(sample), *self.scale_range, rng)
        image, mask = T.random_hflip(image, mask, rng)
        image, mask = T.random_crop(image, mask, self.crop, rng)
        return {
            "name": sample.name,
            "image": image_to_tensor(image),
            "mask": torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
        }
