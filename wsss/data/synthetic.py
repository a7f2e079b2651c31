"""The built-in benchmark: a synthetic dataset that shows the two failures WSSS methods attack.

A classifier trained from image-level labels localises only what separates the classes. Its
class activation maps (CAMs) therefore (1) *under-activate*: they fire on the small, most
discriminative part of an object and miss the rest of it, and (2) *over-activate* on context
that co-occurs with a class ("railroad is not a train"): if boats nearly always float on water,
water is evidence for "boat" and the CAM spreads onto it. Erasing, contrastive and
saliency-based methods (ECS, KTSE, CPN, FBR, EPS) exist to fix exactly these two failures. This
generator builds images where both are guaranteed and the ground truth is exact:

* backgrounds: random crops (random scale, flip, colour shift) of the photographs and textures
  bundled with scikit-image (astronaut, chelsea, coffee, rocket, brick, grass, gravel, ...);
* 10 object classes (:data:`SYNTHETIC_CLASSES`). Every object has a large *body* with a
  rounded relief (it reads as an object against any photograph) whose colour comes from one of
  three shared families and whose shape and faint texture differ only subtly between classes,
  plus a small *part* (4-9 % of the object, off the body's centre) with a saturated
  class-specific colour and pattern. The part alone identifies the class, so a plain CAM fires
  on it and under-activates on the far end of the body;
* co-occurrence: "boat" floats on a water band (wavy blue ripples) and "train" stands on rails
  (a striped band) in 95 % of their images; the context is background (0) in the ground truth
  and appears in only 1 % of the images without the object, so a classifier learns to use it;
* 1-3 objects per image (multi-class images are common), occlusion (later objects are painted
  over earlier ones; the mask shows what is visible), object size 40-85 % of the image side;
* an imperfect class-agnostic saliency map (``Saliency/``): a blurred union of the objects that
  misses some objects (p=0.15), fires partly on the co-occurring context (p=0.3) and is noisy,
  like an off-the-shelf detector (EPS, FBR I+S);
* a thin 255 ignore band on object borders like VOC (1 px by default).

The dataset is written once per configuration into ``<cache>/synthetic-<hash>/`` in the VOC
layout (read back with :class:`wsss.data.voc.VOCSource`), plus ``Context/<id>.png`` (1 = water,
2 = rails, 3 = distinctive part, where visible; ``wsss.diagnostics`` measures CAMs on them) and
``synthetic.json`` (configuration, class names and statistics). The same configuration gives
byte-identical files.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wsss.constants import BACKGROUND, IGNORE_INDEX, voc_palette
from wsss.data.base import DatasetError

GENERATOR_VERSION = 3  # bump when the images change, so old caches are not reused
DONE_MARKER = "DONE"
METADATA_FILE = "synthetic.json"
CONTEXT_DIR = "Context"
WATER, RAILS, PART = 1, 2, 3  # values in Context/<id>.png (PART: visible distinctive part)

# Skimage images that ship inside the wheel (no network needed).
_BACKGROUND_SOURCES = (
    "astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "camera", "coins", "moon",
    "clock", "brick", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "cell",
)  # fmt: skip


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines the generated files (the cache folder is named by its hash).

    The defaults are the benchmark (generator v3, calibrated on the baseline; README "The
    built-in benchmark" gives the measurements behind each choice).
    """

    seed: int = 0
    image_size: int | tuple[int, int] = 128  # side, or (height, width)
    n_train: int = 320
    n_val: int = 100
    max_objects: int = 3  # 1..max_objects objects per image
    # Object extent / image side. Large objects (51-109 px at 128 px, 6-14 CAM cells at output
    # stride 8) leave room between a part and the far end of its body (v2's 0.2-0.6 did not).
    object_scale: tuple[float, float] = (0.4, 0.85)
    part_fraction: tuple[float, float] = (0.04, 0.09)  # part area / object area
    # Part centre's distance from the body centre along the long axis, as a fraction of the
    # half-length (1 = at the tip): off-centre, so one end of the body lies far from it.
    part_position: tuple[float, float] = (0.45, 0.65)
    # Amplitude of the class texture on the body (shade factor). Faint: the body's class shows
    # in its colour family, texture and shape only weakly, the part strongly (v2's 0.14 let the
    # classifier read bodies as well as parts).
    body_texture: float = 0.04
    # Darkening of the body towards its outline (0 = flat): objects stand out from the
    # photographs as objects, whatever their class (v2's flat bodies in photo-like colours left
    # full supervision at 47.5 % foreground IoU).
    body_relief: float = 0.35
    context_prob: float = 0.95  # P(water | boat), P(rails | train)
    context_alone_prob: float = 0.01  # P(water | no boat), P(rails | no train)
    saliency_miss_prob: float = 0.15  # an object missing from the saliency map
    saliency_context_prob: float = 0.3  # saliency firing on visible context
    ignore_border: int = 1  # width in px of the 255 band on object borders; 0 = none
    aspect_jitter: float = 0.0  # width *= exp(U(-j, j)) per image; 0 = fixed size
    jpeg_quality: int = 95

    def size(self) -> tuple[int, int]:
        """(height, width) of an image before aspect jitter."""
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        height, width = self.image_size
        return int(height), int(width)

    def key(self) -> str:
        """Short hash naming the cache folder (configuration + generator version)."""
        payload = json.dumps({"v": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class ClassStyle:
    """How one class is drawn. ``family`` is shared by several classes (weakly distinctive)."""

    name: str
    shapes: tuple[str, ...]  # "ellipse" | "rrect" | "polygon"
    aspect: tuple[float, float]  # body width / height range before rotation
    tilt: float  # max rotation, degrees
    family: int  # body colour family, see _FAMILIES
    texture: str  # "stripes" | "blotches" | "speckle"
    period: float  # texture period as a fraction of the object size
    part_colors: tuple[tuple[int, int, int], tuple[int, int, int]]  # distinctive mark colours
    part_pattern: str  # "solid" | "checker" | "rings" | "stripes" | "dots"
    context: int = 0  # WATER or RAILS when the class co-occurs with a context
    sides: tuple[int, int] = (5, 8)  # vertex count range of the "polygon" shape


# Body colour families as (hue range [deg], saturation range, value range).
_FAMILIES = (
    ((22.0, 42.0), (0.30, 0.50), (0.40, 0.70)),  # earth: browns
    ((195.0, 225.0), (0.10, 0.25), (0.40, 0.70)),  # slate: blue-greys
    ((55.0, 85.0), (0.25, 0.45), (0.35, 0.60)),  # moss: olives
)

_STYLES: tuple[ClassStyle, ...] = (
    ClassStyle("bird", ("ellipse", "polygon"), (1.3, 1.8), 35, 0, "speckle", 0.15,
               ((220, 30, 30), (250, 250, 250)), "solid", sides=(7, 9)),
    ClassStyle("boat", ("polygon",), (2.0, 2.8), 6, 1, "stripes", 0.25,
               ((250, 215, 20), (20, 20, 20)), "checker", context=WATER, sides=(5, 6)),
    ClassStyle("bottle", ("rrect", "ellipse"), (0.35, 0.55), 20, 2, "blotches", 0.30,
               ((20, 220, 230), (10, 40, 120)), "rings"),
    ClassStyle("car", ("rrect",), (1.6, 2.2), 10, 1, "blotches", 0.25,
               ((230, 30, 200), (250, 250, 250)), "stripes"),
    ClassStyle("cat", ("ellipse",), (1.1, 1.5), 35, 0, "stripes", 0.18,
               ((120, 240, 30), (20, 20, 20)), "dots"),
    ClassStyle("chair", ("polygon", "rrect"), (0.8, 1.2), 15, 2, "stripes", 0.22,
               ((255, 130, 0), (250, 250, 250)), "rings", sides=(4, 5)),
    ClassStyle("cow", ("rrect", "ellipse"), (1.3, 1.7), 20, 0, "blotches", 0.35,
               ((30, 60, 240), (250, 250, 250)), "stripes"),
    ClassStyle("dog", ("ellipse", "polygon"), (1.4, 1.9), 30, 2, "speckle", 0.12,
               ((245, 245, 245), (220, 20, 20)), "stripes", sides=(6, 8)),
    ClassStyle("sheep", ("ellipse",), (1.0, 1.4), 25, 1, "speckle", 0.10,
               ((140, 40, 210), (150, 250, 40)), "solid"),
    ClassStyle("train", ("rrect",), (2.4, 3.2), 3, 0, "stripes", 0.30,
               ((255, 120, 170), (40, 20, 30)), "dots", context=RAILS),
)  # fmt: skip

SYNTHETIC_CLASSES: tuple[str, ...] = (BACKGROUND, *(s.name for s in _STYLES))


def describe() -> str:
    """Plain-text description of the benchmark (for READMEs, reports and ``--help``)."""
    lines = [
        (__doc__ or "").strip(),
        "",
        "Classes (index: name, body family, part colour/pattern):",
    ]
    names = ("earth", "slate", "moss")
    for index, style in enumerate(_STYLES, start=1):
        context = {WATER: ", on water", RAILS: ", on rails"}.get(style.context, "")
        lines.append(
            f"  {index:2d}: {style.name:7s} body={names[style.family]}/{style.texture} "
            f"part={style.part_colors[0]}/{style.part_pattern}{context}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- backgrounds

_BANK: list[Image.Image] | None = None


def _background_bank() -> list[Image.Image]:
    """RGB PIL images of the bundled skimage photographs/textures that load offline."""
    global _BANK
    if _BANK is None:
        import skimage.data

        bank = []
        for name in _BACKGROUND_SOURCES:
            try:
                array = getattr(skimage.data, name)()
            except Exception:  # noqa: BLE001 - a missing optional image is skipped
                continue
            array = array[0] if isinstance(array, tuple) else array
            array = np.asarray(array)
            if array.dtype != np.uint8 or array.ndim not in (2, 3):
                continue
            if array.ndim == 2:
                array = np.repeat(array[..., None], 3, axis=2)
            bank.append(Image.fromarray(np.ascontiguousarray(array[..., :3])))
        _BANK = bank
    return _BANK


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 [H, W, 3] in 0..1: a random crop, scale, flip and colour shift of a photo."""
    bank = _background_bank()
    if not bank:  # no skimage images: smooth colour noise keeps the generator usable
        return np.clip(0.5 + 0.25 * _noise(rng, height, width, 4, channels=3), 0, 1)
    source = bank[int(rng.integers(len(bank)))]
    sw, sh = source.size
    ch = rng.uniform(0.3, 1.0) * min(sh, sw * height / width)
    cw = ch * width / height
    x0, y0 = rng.uniform(0, sw - cw), rng.uniform(0, sh - ch)
    crop = source.resize((width, height), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    image = np.asarray(crop, dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        image = image[:, ::-1]
    gain = rng.uniform(0.8, 1.2, size=3).astype(np.float32) * rng.uniform(0.8, 1.1)
    if np.ptp(image.reshape(-1, 3).mean(axis=0)) < 0.02:  # grey source: tint it
        gain *= rng.uniform(0.7, 1.3, size=3).astype(np.float32)
    return np.clip(image * gain, 0, 1)


# ----------------------------------------------------------------------------- helpers


def _noise(
    rng: np.random.Generator, height: int, width: int, cells: int, channels: int = 0
) -> np.ndarray:
    """Smooth noise, float32 [H, W] (or [H, W, channels]), roughly in -1..1."""
    shape = (channels or 1, max(2, cells), max(2, round(cells * width / height)))
    grid = rng.standard_normal(shape).astype(np.float32)
    planes = [
        np.asarray(Image.fromarray(g, mode="F").resize((width, height), Image.BICUBIC))
        for g in grid
    ]
    out = np.stack(planes, axis=-1) if channels else planes[0]
    return out.astype(np.float32)


def _hsv(rng: np.random.Generator, family: int) -> np.ndarray:
    """A random colour of a body family, float32 [3] in 0..1."""
    (h0, h1), (s0, s1), (v0, v1) = _FAMILIES[family]
    rgb = colorsys.hsv_to_rgb(rng.uniform(h0, h1) / 360.0, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return np.asarray(rgb, dtype=np.float32)


def _rasterise(points: np.ndarray, height: int, width: int, s: int = 4) -> np.ndarray:
    """Polygon [N, 2] (x, y in pixel-edge coordinates) -> float32 coverage [H, W] in 0..1."""
    canvas = Image.new("L", (width * s, height * s), 0)
    xy = points * s - 0.5
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in xy.tolist()], fill=255)
    return np.asarray(canvas.reduce(s), dtype=np.float32) / 255.0


def _outline(rng: np.random.Generator, style: ClassStyle, hw: float, hh: float) -> np.ndarray:
    """Body outline [N, 2] in object coordinates (x right, y down), half-extents hw x hh."""
    shape = style.shapes[int(rng.integers(len(style.shapes)))]
    if shape == "rrect":
        radius = rng.uniform(0.15, 0.5) * min(hw, hh)
        arcs = []
        for k, (sx, sy) in enumerate(((1, 1), (-1, 1), (-1, -1), (1, -1))):
            t = np.linspace(0, np.pi / 2, 7) + k * np.pi / 2
            centre = (sx * (hw - radius), sy * (hh - radius))
            arcs.append(
                np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], 1)
            )
        return np.concatenate(arcs)
    if shape == "polygon":
        n = int(rng.integers(style.sides[0], style.sides[1] + 1))
        t = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi / n)
        t = t + rng.uniform(-0.2, 0.2, n) * 2 * np.pi / n
        r = rng.uniform(0.85, 1.1, n)
        points = np.stack([np.cos(t) * r, np.sin(t) * r], 1)
    else:  # ellipse with a smooth radial wobble
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        wobble = sum(rng.uniform(-0.05, 0.05) * np.cos(k * t + rng.uniform(0, 6.3)) for k in (2, 3))
        points = np.stack([np.cos(t), np.sin(t)], 1) * (1 + wobble)[:, None]
    points = points / np.abs(points).max(axis=0)
    return points * [hw, hh]


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# ----------------------------------------------------------------------------- context bands


@dataclass
class _Scene:
    """Work arrays of one image. rgb float32 [H, W, 3]; label/inst/context uint8 [H, W]."""

    rgb: np.ndarray
    label: np.ndarray
    inst: np.ndarray
    context: np.ndarray
    part: np.ndarray  # bool [H, W], visible distinctive parts
    yy: np.ndarray  # float32 [H, 1] pixel-centre rows
    xx: np.ndarray  # float32 [1, W] pixel-centre columns
    water_top: np.ndarray | None = None  # float32 [W], water line per column
    rails_y: float | None = None  # rails band centre row
    rails_h: float = 0.0
    objects: list[dict] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.label.shape


def _paint(scene: _Scene, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-composites colour [H, W, 3] (or [3]) over the scene with coverage alpha [H, W]."""
    a = alpha[..., None]
    scene.rgb *= 1.0 - a
    scene.rgb += a * colour


def _draw_water(rng: np.random.Generator, scene: _Scene, y0: float) -> None:
    """A wavy blue band from the water line ~y0 to the bottom of the image."""
    h, w = scene.shape
    x = scene.xx[0]
    top = y0 + 0.025 * h * np.sin(2 * np.pi * x / (rng.uniform(0.3, 0.7) * w) + rng.uniform(0, 6.3))
    top += 0.01 * h * np.sin(2 * np.pi * x / (rng.uniform(0.08, 0.15) * w) + rng.uniform(0, 6.3))
    alpha = np.clip(scene.yy - top[None, :] + 0.5, 0, 1)
    base = np.asarray([rng.uniform(0.1, 0.25), rng.uniform(0.3, 0.45), rng.uniform(0.6, 0.8)])
    period = rng.uniform(0.035, 0.06) * h
    bend = 0.02 * h * np.sin(2 * np.pi * scene.xx / (rng.uniform(0.15, 0.3) * w))
    ripples = np.sin(2 * np.pi * (scene.yy + bend) / period)
    depth = (scene.yy - y0) / h
    shade = 1 + 0.18 * ripples - 0.3 * depth + 0.08 * _noise(rng, h, w, 6)
    colour = base.astype(np.float32) * shade[..., None]
    colour = colour + 0.25 * np.clip(ripples - 0.85, 0, None)[..., None]  # glints
    _paint(scene, alpha, np.clip(colour, 0, 1))
    scene.context[alpha >= 0.5] = WATER
    scene.water_top = top.astype(np.float32)


def _draw_rails(rng: np.random.Generator, scene: _Scene, yc: float, band: float) -> None:
    """A horizontal track: ballast, dark sleepers (stripes) and two bright rails."""
    h, w = scene.shape
    y0, y1 = yc - band / 2, yc + band / 2
    alpha = np.clip(scene.yy - y0 + 0.5, 0, 1) * np.clip(y1 - scene.yy + 0.5, 0, 1)
    alpha = np.broadcast_to(alpha, (h, w))
    ballast = np.asarray([0.45, 0.42, 0.38]) * rng.uniform(0.8, 1.15)
    grit = 1 + 0.15 * _noise(rng, h, w, max(4, w // 3))
    colour = np.broadcast_to(ballast.astype(np.float32), (h, w, 3)) * grit[..., None]
    period = rng.uniform(0.05, 0.08) * w
    phase = rng.uniform(0, period)
    sleeper = (((scene.xx + phase) % period) < 0.4 * period) & (np.abs(scene.yy - yc) < 0.42 * band)
    colour = np.where(sleeper[..., None], np.float32([0.3, 0.2, 0.12]), colour)
    thick = max(1.0, 0.09 * band)
    rail = (np.abs(scene.yy - (yc - 0.22 * band)) < thick) | (
        np.abs(scene.yy - (yc + 0.22 * band)) < thick
    )
    colour = np.where(
        np.broadcast_to(rail, (h, w))[..., None], np.float32([0.8, 0.8, 0.83]), colour
    )
    _paint(scene, alpha, np.clip(colour, 0, 1))
    scene.context[alpha >= 0.5] = RAILS
    scene.rails_y, scene.rails_h = yc, band


# ----------------------------------------------------------------------------- objects


def _body_colour(
    rng: np.random.Generator,
    style: ClassStyle,
    u: np.ndarray,
    v: np.ndarray,
    size: float,
    texture: float,
) -> np.ndarray:
    """Weakly distinctive body texture, float32 [H, W, 3]; u, v are object coordinates."""
    h, w = u.shape
    base = _hsv(rng, style.family)
    period = style.period * size * rng.uniform(0.85, 1.15)
    if style.texture == "stripes":
        angle = rng.uniform(-0.3, 0.3)
        pattern = np.sin(2 * np.pi * (u * np.cos(angle) + v * np.sin(angle)) / period)
    elif style.texture == "blotches":
        pattern = _noise(rng, h, w, max(2, round(max(h, w) / period)))
    else:
        pattern = _noise(rng, h, w, max(3, round(2 * max(h, w) / period)))
    shading = 1 - 0.25 * np.clip(v / (0.5 * size), -1, 1)  # lit from above
    shade = (1 + texture * pattern) * shading + 0.04 * rng.standard_normal((h, w)).astype(
        np.float32
    )
    return base * shade[..., None].astype(np.float32)


def _part_colour(style: ClassStyle, du: np.ndarray, dv: np.ndarray, radius: float) -> np.ndarray:
    """Highly distinctive mark, float32 [H, W, 3]; du, dv relative to the part centre."""
    c1, c2 = (np.asarray(c, dtype=np.float32) / 255.0 for c in style.part_colors)
    p = max(3.0, 0.8 * radius)
    if style.part_pattern == "checker":
        second = (np.floor(du / p) + np.floor(dv / p)) % 2 == 1
    elif style.part_pattern == "rings":
        second = np.sin(2 * np.pi * np.hypot(du, dv) / p) > 0.3
    elif style.part_pattern == "stripes":
        second = np.sin(2 * np.pi * du / p) > 0.3
    elif style.part_pattern == "dots":
        second = (np.sin(2 * np.pi * du / p) > 0.4) & (np.sin(2 * np.pi * dv / p) > 0.4)
    else:  # solid with a thin contrasting rim
        second = np.hypot(du, dv) > 0.8 * radius
    return np.where(second[..., None], c2, c1)


def _object_geometry(
    rng: np.random.Generator, style: ClassStyle, side: float, scale: tuple[float, float]
) -> tuple[np.ndarray, float, float, float]:
    """Outline [N, 2], half extents (hw, hh) and rotation (radians) of a new object."""
    extent = rng.uniform(*scale) * side
    aspect = rng.uniform(*style.aspect)
    hw, hh = (extent / 2, extent / 2 / aspect) if aspect >= 1 else (extent / 2 * aspect, extent / 2)
    theta = np.deg2rad(rng.uniform(-style.tilt, style.tilt))
    return _outline(rng, style, hw, hh), hw, hh, theta


def _centre(
    rng: np.random.Generator, scene: _Scene, style: ClassStyle, ext: tuple[float, float], hh: float
) -> tuple[float, float]:
    """Object centre: on the water line / rails when the context is drawn, else anywhere."""
    h, w = scene.shape
    bx, by = ext
    cx = rng.uniform(0.5 * bx, w - 0.5 * bx) if w > bx else w / 2
    if style.context == WATER and scene.water_top is not None:
        col = int(np.clip(cx, 0, w - 1))
        return cx, float(scene.water_top[col]) + rng.uniform(0.0, 0.4) * hh
    if style.context == RAILS and scene.rails_y is not None:
        return cx, scene.rails_y - hh + rng.uniform(0.0, 0.25) * scene.rails_h
    cy = rng.uniform(0.5 * by, h - 0.5 * by) if h > by else h / 2
    return cx, cy


def _render_object(
    rng: np.random.Generator, scene: _Scene, cls: int, cfg: SyntheticConfig, tries: int = 8
) -> None:
    """Draws one object into the scene, retrying positions that hide earlier objects."""
    style = _STYLES[cls - 1]
    h, w = scene.shape
    outline, hw, hh, theta = _object_geometry(rng, style, min(h, w), cfg.object_scale)
    rot = np.asarray([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    turned = outline @ rot  # rows: x' = x cos - y sin, y' = x sin + y cos
    ext = tuple(np.ptp(turned, axis=0) / 2)
    best, best_score = None, -1.0
    for _ in range(tries):
        cx, cy = _centre(rng, scene, style, ext, hh)
        body = _rasterise(turned + [cx, cy], h, w)
        score = _visibility_after(scene, body >= 0.5)
        if score > best_score:
            best, best_score = (cx, cy, body), score
        if score >= 0.5:
            break
    cx, cy, body = best
    dx, dy = scene.xx - cx, scene.yy - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)  # object coordinates
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    area = _polygon_area(outline)
    radius = float(np.sqrt(rng.uniform(*cfg.part_fraction) * area / np.pi))
    axis_u = hw >= hh
    offset = rng.choice([-1.0, 1.0]) * (hw if axis_u else hh) * rng.uniform(*cfg.part_position)
    du, dv = (u - offset, v) if axis_u else (u, v - offset)
    part = body * np.clip(radius - np.hypot(du, dv) + 0.5, 0, 1)
    colour = _body_colour(rng, style, u, v, 2 * max(hw, hh), cfg.body_texture)
    if cfg.body_relief > 0:  # rounded look: darker towards the outline
        edge = np.clip(1 - np.hypot(u / hw, v / hh), 0, 1) ** 0.5
        colour = colour * (1 - cfg.body_relief * (1 - edge))[..., None]
    _paint(scene, body, colour)
    _paint(scene, part, _part_colour(style, du, dv, radius))
    hard = body >= 0.5
    scene.label[hard] = cls
    scene.inst[hard] = len(scene.objects) + 1
    scene.context[hard] = 0
    scene.part[hard] = False
    scene.part[hard & (part >= 0.5)] = True
    scene.objects.append({"cls": cls, "area": area, "part_area": float((part >= 0.5).sum())})


def _visibility_after(scene: _Scene, new: np.ndarray) -> float:
    """Smallest visible fraction among earlier objects if ``new`` [H, W] bool were painted."""
    if not scene.objects or not new.any():
        return 1.0 if new.any() else 0.0
    ids = scene.inst[new]
    hidden = np.bincount(ids, minlength=len(scene.objects) + 1)[1:]
    visible = np.bincount(scene.inst.ravel(), minlength=len(scene.objects) + 1)[1:]
    shown = visible > 0  # objects already hidden entirely do not veto every position
    if not shown.any():
        return 1.0
    return float(((visible - hidden)[shown] / visible[shown]).min())


# ----------------------------------------------------------------------------- one image


def _choose_classes(rng: np.random.Generator, first: int, cfg: SyntheticConfig) -> list[int]:
    """Class indices (1..10) of an image's objects; the first is given (round robin)."""
    probs = np.asarray([0.4, 0.35, 0.25][: cfg.max_objects], dtype=np.float64)
    n = 1 + int(rng.choice(len(probs), p=probs / probs.sum())) if cfg.max_objects > 1 else 1
    others = rng.integers(1, len(_STYLES) + 1, size=n - 1).tolist()
    return [first, *others]


def _draw_context(
    rng: np.random.Generator, scene: _Scene, classes: list[int], cfg: SyntheticConfig
) -> None:
    """Water/rails: with the object (p=context_prob) or alone (p=context_alone_prob)."""
    h, w = scene.shape
    wants = {}
    for kind in (WATER, RAILS):
        present = any(_STYLES[c - 1].context == kind for c in classes)
        p = cfg.context_prob if present else cfg.context_alone_prob
        wants[kind] = rng.random() < p
    if wants[WATER]:
        low = 0.6 if wants[RAILS] else 0.45
        _draw_water(rng, scene, rng.uniform(low, 0.8) * h)
    if wants[RAILS]:
        band = rng.uniform(0.12, 0.18) * h
        high = (0.45 * h) if wants[WATER] else (0.85 * h)
        _draw_rails(rng, scene, rng.uniform(0.35 * h, max(0.36 * h, high - band / 2)), band)


def _ignore_band(label: np.ndarray, width: int) -> np.ndarray:
    """bool [H, W]: object pixels next to a different label, dilated to ``width`` px."""
    edge = np.zeros(label.shape, dtype=bool)
    dv = label[1:, :] != label[:-1, :]
    dh = label[:, 1:] != label[:, :-1]
    edge[1:, :] |= dv
    edge[:-1, :] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    edge &= label > 0
    if width > 1:
        from scipy.ndimage import binary_dilation

        edge = binary_dilation(edge, iterations=width - 1)
    return edge


def _saliency(
    rng: np.random.Generator, scene: _Scene, cfg: SyntheticConfig
) -> tuple[np.ndarray, int]:
    """Imperfect class-agnostic saliency uint8 [H, W] and the number of objects it missed."""
    from scipy.ndimage import gaussian_filter

    h, w = scene.shape
    sal = np.zeros((h, w), dtype=np.float32)
    missed = 0
    for k in range(1, len(scene.objects) + 1):
        visible = scene.inst == k
        if not visible.any():
            continue
        if rng.random() < cfg.saliency_miss_prob:
            missed += 1
            continue
        patchy = np.clip(0.85 + 0.35 * _noise(rng, h, w, 5), 0.35, 1.0)  # incomplete coverage
        sal = np.maximum(sal, visible * patchy * rng.uniform(0.8, 1.0))
    context = scene.context > 0
    if context.any() and rng.random() < cfg.saliency_context_prob:
        blobs = _noise(rng, h, w, 4) > rng.uniform(-0.3, 0.3)
        sal = np.maximum(sal, (context & blobs) * rng.uniform(0.35, 0.75))
    if rng.random() < 0.1:  # a spurious blob on the background
        sal = np.maximum(sal, np.clip(_noise(rng, h, w, 3) - 0.9, 0, 1) * 0.8)
    sal = gaussian_filter(sal, sigma=rng.uniform(0.8, 2.0) * min(h, w) / 128)
    sal = sal + 0.04 * _noise(rng, h, w, 8)
    return (np.clip(sal, 0, 1) * 255 + 0.5).astype(np.uint8), missed


def render_image(cfg: SyntheticConfig, split: str, index: int, first_class: int) -> dict:
    """One image of the benchmark, deterministic in (cfg, split, index).

    Returns {"image": uint8 [H, W, 3], "mask" / "saliency" / "context": uint8 [H, W],
    "part": bool [H, W] (visible distinctive parts), "info": classes present, classes drawn,
    context flags, part fractions, saliency misses}.
    ``first_class`` (1..10) is the class of the first object drawn.
    """
    split_code = {"train": 0, "val": 1}.get(split, 2)
    rng = np.random.default_rng([cfg.seed, split_code, index])
    h, w = cfg.size()
    if cfg.aspect_jitter > 0:
        w = max(8, round(w * float(np.exp(rng.uniform(-cfg.aspect_jitter, cfg.aspect_jitter)))))
    scene = _Scene(
        rgb=_background(rng, h, w),
        label=np.zeros((h, w), np.uint8),
        inst=np.zeros((h, w), np.uint8),
        context=np.zeros((h, w), np.uint8),
        part=np.zeros((h, w), bool),
        yy=(np.arange(h, dtype=np.float32) + 0.5)[:, None],
        xx=(np.arange(w, dtype=np.float32) + 0.5)[None, :],
    )
    classes = _choose_classes(rng, first_class, cfg)
    _draw_context(rng, scene, classes, cfg)
    for cls in classes:
        _render_object(rng, scene, cls, cfg)
    mask = scene.label.copy()
    if cfg.ignore_border > 0:
        mask[_ignore_band(scene.label, cfg.ignore_border)] = IGNORE_INDEX
    saliency, missed = _saliency(rng, scene, cfg)
    present = sorted({int(c) for c in np.unique(mask)} - {0, IGNORE_INDEX})
    image = (np.clip(scene.rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    info = {
        "classes": present,
        "drawn": classes,
        "water": bool((scene.context == WATER).any()),
        "rails": bool((scene.context == RAILS).any()),
        "part_fraction": [o["part_area"] / max(o["area"], 1.0) for o in scene.objects],
        "saliency_missed": missed,
    }
    return {
        "image": image,
        "mask": mask,
        "saliency": saliency,
        "context": scene.context,
        "part": scene.part,
        "info": info,
    }


# ----------------------------------------------------------------------------- writing


def _save_png(array: np.ndarray, path: Path, palette: list[int] | None = None) -> None:
    image = Image.fromarray(array, mode="P" if palette else "L")
    if palette:
        image.putpalette(palette)
    image.save(path, format="PNG")


def _first_classes(cfg: SyntheticConfig, split: str, n: int) -> np.ndarray:
    """Class of the first object of each of a split's n images: shuffled rounds of 1..10."""
    perm_rng = np.random.default_rng([cfg.seed, {"train": 0, "val": 1}[split], 2**31])
    n_cls = len(_STYLES)
    return np.concatenate([perm_rng.permutation(n_cls) + 1 for _ in range(n // n_cls + 1)])


def benchmark_figure(cfg: SyntheticConfig, n: int = 6, tile: int = 128):
    """The first ``n`` training images as a PIL montage: image, ground truth, the diagnostic
    regions (parts red, water blue, rails grey) and the saliency map."""
    from wsss.visualize import colorize_mask, montage

    rows = []
    for i, first in enumerate(_first_classes(cfg, "train", n)[:n]):
        item = render_image(cfg, "train", i, int(first))
        regions = np.zeros_like(item["image"])
        regions[item["context"] == WATER] = (40, 90, 230)
        regions[item["context"] == RAILS] = (150, 150, 150)
        regions[item["part"]] = (230, 30, 30)
        saliency = np.repeat(item["saliency"][..., None], 3, axis=2)
        rows.append([item["image"], colorize_mask(item["mask"]), regions, saliency])
    titles = ["image", "ground truth", "parts / water / rails", "saliency"]
    return montage(rows, titles, tile=tile)


def _write_split(cfg: SyntheticConfig, out: Path, split: str, n: int, progress: bool) -> dict:
    """Writes the images of one split; returns its statistics."""
    order = _first_classes(cfg, split, n)
    palette = voc_palette(256)
    ids, labels, infos = [], {}, []
    indices = range(n)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"synthetic {split}", unit="img")
    for i in indices:
        name = f"{split}_{i:05d}"
        item = render_image(cfg, split, i, int(order[i]))
        Image.fromarray(item["image"]).save(
            out / "JPEGImages" / f"{name}.jpg", quality=cfg.jpeg_quality, subsampling=0
        )
        _save_png(item["mask"], out / "SegmentationClass" / f"{name}.png", palette)
        _save_png(item["saliency"], out / "Saliency" / f"{name}.png")
        regions = np.where(item["part"], PART, item["context"]).astype(np.uint8)
        _save_png(regions, out / CONTEXT_DIR / f"{name}.png")
        ids.append(name)
        labels[name] = item["info"]["classes"]
        infos.append(item["info"])
    (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return {"labels": labels, "stats": _stats(infos)}


def _stats(infos: list[dict]) -> dict:
    """Per-split counts: images per class, co-occurrence rates, part size, saliency misses."""
    n_cls = len(_STYLES)
    per_class = [sum(c in i["classes"] for i in infos) for c in range(1, n_cls + 1)]
    boat, train = SYNTHETIC_CLASSES.index("boat"), SYNTHETIC_CLASSES.index("train")

    def rate(key: str, cls: int, with_cls: bool) -> float | None:
        group = [i for i in infos if (cls in i["classes"]) == with_cls]
        return round(sum(i[key] for i in group) / len(group), 4) if group else None

    fractions = [f for i in infos for f in i["part_fraction"]]
    return {
        "images": len(infos),
        "images_per_class": dict(zip(SYNTHETIC_CLASSES[1:], per_class, strict=True)),
        "mean_classes_per_image": round(float(np.mean([len(i["classes"]) for i in infos])), 3)
        if infos
        else 0.0,
        "water_given_boat": rate("water", boat, True),
        "water_without_boat": rate("water", boat, False),
        "rails_given_train": rate("rails", train, True),
        "rails_without_train": rate("rails", train, False),
        "mean_part_fraction": round(float(np.mean(fractions)), 4) if fractions else None,
        "saliency_missed_objects": int(sum(i["saliency_missed"] for i in infos)),
    }


def _generate(cfg: SyntheticConfig, out: Path, progress: bool) -> None:
    for sub in (
        "JPEGImages",
        "SegmentationClass",
        "Saliency",
        CONTEXT_DIR,
        "ImageSets/Segmentation",
    ):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in SYNTHETIC_CLASSES))
    labels, stats = {}, {}
    for split, n in (("train", cfg.n_train), ("val", cfg.n_val)):
        result = _write_split(cfg, out, split, n, progress)
        labels.update(result["labels"])
        stats[split] = result["stats"]
    (out / "cls_labels.json").write_text(json.dumps(labels, sort_keys=True) + "\n")
    meta = {
        "generator_version": GENERATOR_VERSION,
        "config": asdict(cfg),
        "class_names": list(SYNTHETIC_CLASSES),
        "stats": stats,
    }
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (out / DONE_MARKER).write_text("ok\n")


def synthetic_dir(cfg: SyntheticConfig, cache_dir: str | Path) -> Path:
    """The folder ``ensure_synthetic`` uses for ``cfg``."""
    return Path(cache_dir).expanduser() / f"synthetic-{cfg.key()}"


def ensure_synthetic(
    cfg: SyntheticConfig, cache_dir: str | Path, progress: bool | None = None
) -> Path:
    """Generates the dataset for ``cfg`` unless it is already cached; returns its folder.

    Files are written into a temporary folder beside the target and renamed at the end, so an
    interrupted run leaves no half-written dataset and concurrent runs (torchrun ranks) do not
    collide. progress: a tqdm bar; None = when stderr is a terminal and $WSSS_NO_PROGRESS unset.
    """
    _validate(cfg)
    target = synthetic_dir(cfg, cache_dir)
    if target.exists():
        if (target / DONE_MARKER).is_file():
            return target
        shutil.rmtree(target)  # no marker: left by an interrupted non-atomic writer
    if progress is None:
        progress = sys.stderr.isatty() and not os.environ.get("WSSS_NO_PROGRESS")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _generate(cfg, tmp, progress)
        os.chmod(tmp, 0o755)  # mkdtemp made it private; the cache may be shared
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / DONE_MARKER).is_file():  # not a concurrent winner: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _validate(cfg: SyntheticConfig) -> None:
    h, w = cfg.size()
    problems = []
    if min(h, w) < 16:
        problems.append(f"image_size {cfg.image_size} is below 16 px")
    if cfg.n_train < 0 or cfg.n_val < 0 or cfg.seed < 0:
        problems.append("seed, n_train and n_val must be >= 0")
    if not 1 <= cfg.max_objects <= 3:
        problems.append("max_objects must be 1..3")
    lo, hi = cfg.object_scale
    if not 0 < lo <= hi <= 1:
        problems.append(f"object_scale {cfg.object_scale} must satisfy 0 < lo <= hi <= 1")
    if problems:
        raise DatasetError("invalid SyntheticConfig: " + "; ".join(problems))
