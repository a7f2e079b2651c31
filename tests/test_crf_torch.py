"""The PyTorch dense CRF (wsss.refine.crf_torch) against pydensecrf2, and the impl switch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from wsss.refine import crf_select, crf_torch
from wsss.refine.crf import CRF_PRESETS, CRFParams, dense_crf, dense_crf_labels

dcrf = pytest.importorskip("pydensecrf.densecrf")
eigen = pytest.importorskip("pydensecrf.eigen")


def _photo(name: str, h: int, w: int) -> np.ndarray:
    """A scikit-image photograph resized to uint8 [h, w, 3] (writable, as pydensecrf needs)."""
    image = getattr(data, name)()
    return np.array(Image.fromarray(image).convert("RGB").resize((w, h), Image.BILINEAR))


def _smooth_probs(rng: np.random.Generator, k: int, h: int, w: int) -> np.ndarray:
    """Network-like probabilities float32 [K, h, w]: upsampled coarse logits plus pixel noise."""
    coarse = torch.from_numpy(rng.normal(0, 3, (1, k, max(h // 16, 2), max(w // 16, 2))))
    logits = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0].numpy()
    logits += rng.normal(0, 1, logits.shape)
    p = np.exp(logits - logits.max(0))
    return (p / p.sum(0)).astype(np.float32)


def _reference(
    image: np.ndarray, unary: np.ndarray, params: CRFParams
) -> tuple[np.ndarray, Callable[[np.ndarray], float]]:
    """pydensecrf2 marginals float32 [K, H, W] and its KL energy of any marginals [K, H, W]."""
    k, h, w = unary.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(k, -1), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=image,
        compat=params.bilateral_compat,
    )  # fmt: skip
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(k, h, w)

    def energy(marginals: np.ndarray) -> float:
        flat = np.ascontiguousarray(marginals.reshape(k, -1), dtype=np.float32)
        return crf.klDivergence(eigen.matrixXf(flat))

    return q, energy


def _ours(image: np.ndarray, unary: np.ndarray, params: CRFParams) -> tuple[np.ndarray, float]:
    """Our marginals float32 [K, H, W] and our KL energy of them."""
    x = torch.from_numpy(image)[None]
    pairwise = crf_torch.build_pairwise(x, params)
    u = crf_torch._pixel_major(torch.from_numpy(unary)[None])
    q = crf_torch.mean_field(u, pairwise, params.iterations)
    k, h, w = unary.shape
    return q.T.reshape(k, h, w).numpy(), crf_torch.kl_divergence(u, q, pairwise)


def _assert_close(image, unary, params) -> None:
    """Labels agree on >= 99 % of pixels, marginals within 2e-3, mean-field energies close."""
    ref, energy = _reference(image, unary, params)
    ours, our_energy = _ours(image, unary, params)
    agreement = (ours.argmax(0) == ref.argmax(0)).mean()
    assert agreement >= 0.99, agreement
    assert np.abs(ours - ref).max() < 2e-3
    e_ref = energy(ref)
    # pydensecrf's energy of our marginals: as low as of its own (same fixed point).
    assert abs(energy(ours) - e_ref) <= 1e-5 * abs(e_ref)
    # Our energy (float64 sums) vs pydensecrf's (float32 sums, off by ~1e-3 on large images).
    assert abs(our_energy - e_ref) <= 2e-3 * abs(e_ref)


@pytest.mark.parametrize("preset", ["psa", "irn", "deeplab"])
def test_random_unary_and_image_match_pydensecrf(preset):
    rng = np.random.default_rng(1)
    h, w, k = 45, 61, 5  # H*W not a multiple of 4: densecrf's SSE padding point
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    probs = rng.random((k, h, w)).astype(np.float32) ** 3
    unary = -np.log(np.clip(probs / probs.sum(0), 1e-8, 1.0))
    _assert_close(image, unary, CRF_PRESETS[preset])


@pytest.mark.parametrize(
    ("photo", "preset", "k"),
    [("astronaut", "deeplab", 21), ("coffee", "deeplab", 11), ("coffee", "psa", 4),
     ("chelsea", "irn", 3)],
)  # fmt: skip
def test_photographs_match_pydensecrf(photo, preset, k):
    rng = np.random.default_rng(2)
    h, w = 96, 128
    image = _photo(photo, h, w)
    unary = -np.log(np.clip(_smooth_probs(rng, k, h, w), 1e-8, 1.0))
    _assert_close(image, unary, CRF_PRESETS[preset])
    # The CRF does change the labels: the comparison is not trivially the unary's argmax.
    ref = dense_crf(image, np.exp(-unary), CRF_PRESETS[preset])
    assert (ref.argmax(0) != unary.argmin(0)).mean() > 0.01


@pytest.mark.parametrize("k", [2, 11, 21, 40])
def test_softmax_matches_float64(k):
    """Both softmax paths (torch's kernel, the in-place passes) for label counts in and out
    of the window where torch's is used."""
    t = torch.randn(1000, k, generator=torch.Generator().manual_seed(k)) * 20
    expected = torch.softmax(t.double(), 1).float()
    torch.testing.assert_close(crf_torch._softmax_(t.clone()), expected, rtol=1e-5, atol=1e-7)


def test_select_numpy_api_matches_reference():
    rng = np.random.default_rng(3)
    image = _photo("astronaut", 50, 70)
    probs = _smooth_probs(rng, 6, 50, 70)
    params = CRF_PRESETS["deeplab"]
    ref = dense_crf(image, probs, params)
    ours = crf_select.dense_crf(image, probs, params, impl="torch", device="cpu")
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 2e-3
    assert np.array_equal(crf_select.dense_crf(image, probs, params), ref)

    labels = probs.argmax(0)
    ref_labels = dense_crf_labels(image, labels, 6, CRF_PRESETS["irn"])
    ours_labels = crf_select.dense_crf_labels(
        image, labels, 6, CRF_PRESETS["irn"], impl="torch", device="cpu"
    )
    assert ours_labels.dtype == labels.dtype
    assert (ours_labels == ref_labels).mean() >= 0.99


@pytest.mark.parametrize("pixels_per_batch", [1, 40 * 56 * 3])
def test_batch_equals_single_images(monkeypatch, pixels_per_batch):
    monkeypatch.setattr(crf_torch, "CPU_BATCH_PIXELS", pixels_per_batch)
    rng = np.random.default_rng(4)
    names = ["astronaut", "coffee", "chelsea"]
    images = np.stack([_photo(n, 40, 56) for n in names])
    probs = np.stack([_smooth_probs(rng, 4, 40, 56) for _ in names])
    params = CRF_PRESETS["psa"]
    batch = crf_select.dense_crf_batch(images, probs, params, device="cpu")
    for i in range(len(names)):
        single = crf_select.dense_crf(images[i], probs[i], params, impl="torch", device="cpu")
        np.testing.assert_allclose(batch[i], single, atol=1e-5)
    looped = crf_select.dense_crf_batch(images, probs, params, impl="pydensecrf")
    assert (batch.argmax(1) == looped.argmax(1)).mean() >= 0.99


def test_key_overflow_splits_the_batch(monkeypatch):
    monkeypatch.setattr(crf_torch, "CPU_BATCH_PIXELS", 3 * 20 * 24)
    rng = np.random.default_rng(5)
    images = torch.from_numpy(rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8))
    probs = torch.from_numpy(rng.random((3, 3, 20, 24)).astype(np.float32))
    params = CRF_PRESETS["psa"]
    whole = crf_torch.dense_crf(images, probs, params)
    single = crf_torch.dense_crf(images[:1], probs[:1], params)
    limit = 1 << 8
    while True:  # the smallest code limit one image fits in: a batch must be split
        monkeypatch.setattr(crf_torch, "_CODE_LIMIT", limit)
        crf_torch._grid_kernel.cache_clear()
        try:
            crf_torch.build_pairwise(images[:1], params)
            break
        except crf_torch.LatticeKeyOverflow:
            limit *= 2
    crf_torch._grid_kernel.cache_clear()
    split = crf_torch.dense_crf(images, probs, params)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=0)
    monkeypatch.setattr(crf_torch, "_CODE_LIMIT", 2)
    crf_torch._grid_kernel.cache_clear()
    with pytest.raises(ValueError, match="62 bits"):
        crf_torch.dense_crf(images[:1], probs[:1], params)
    crf_torch._grid_kernel.cache_clear()
    assert single.shape == (1, 3, 20, 24)


@pytest.mark.parametrize("d", [2, 5])
def test_lattice_is_a_global_gaussian_filter(d):
    """Splat-blur-slice approximates exp(-|f_i - f_j|^2 / 2) over all points, near and far."""
    gen = torch.Generator().manual_seed(d)
    n = 300
    features = torch.rand(d, n, generator=gen) * 4
    lattice = crf_torch.build_lattice(features, torch.zeros(n, dtype=torch.int64), 1, None)
    values = torch.rand(n, 1, generator=gen)
    out = crf_torch.LatticeFilter.build(lattice)(values)[:, 0]
    dist = ((features[:, :, None] - features[:, None, :]) ** 2).sum(0)
    errors = {}
    for var in (0.5, 1.0, 2.0):
        exact = (torch.exp(-dist / (2 * var)) @ values)[:, 0]
        scale = (out @ exact) / (exact @ exact)
        errors[var] = float((out - scale * exact).norm() / out.norm())
    assert errors[1.0] < (0.05 if d == 2 else 0.15)
    assert errors[1.0] < min(errors[0.5], errors[2.0])


@pytest.mark.parametrize("spread", [3, 1 << 40])
def test_find_matches_a_dictionary(spread):
    """Both lookups (direct-address table for dense keys, hash table for sparse ones)."""
    gen = torch.Generator().manual_seed(spread % 97)
    keys = torch.unique(torch.randint(0, 3000 * spread, (3000,), generator=gen))
    queries = torch.cat([keys + 1, keys[torch.randperm(len(keys), generator=gen)], keys * 0])
    queries = queries.view(3, -1)
    where = {int(k): i for i, k in enumerate(keys)}
    expected = torch.tensor([where.get(int(q), -1) for q in queries.view(-1)]).view_as(queries)
    found = crf_torch._find(keys, queries)
    assert torch.equal(found, expected)
    assert (found < 0).any() and (found >= 0).any()


def test_dropping_zero_blur_entries_keeps_the_sums():
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, 50, (40, 9), generator=gen, dtype=torch.int32)
    weight = torch.rand(40, 9, generator=gen) * (torch.rand(40, 9, generator=gen) < 0.4)
    weight[:, 0] = 1.0
    rows = crf_torch._RowSums(index, weight)
    sparse = rows.without_zeros()
    assert sparse.offsets is not None and sparse.index.numel() == int((weight != 0).sum())
    x = torch.rand(50, 7, generator=gen)
    assert torch.equal(sparse(x), rows(x))
    dense = crf_torch._RowSums(index, torch.ones(40, 9))
    assert dense.without_zeros() is dense  # nothing to drop: rows stay as they are


def test_blocked_tables_give_the_same_marginals(monkeypatch):
    """Large images write their vertex tables in row blocks (CPU): the same marginals as whole
    tables, up to float rounding (vectorised exp splits the rows differently)."""
    rng = np.random.default_rng(7)
    images = torch.from_numpy(np.stack([_photo("astronaut", 30, 40)]))
    probs = torch.from_numpy(_smooth_probs(rng, 5, 30, 40)[None])
    params = CRF_PRESETS["deeplab"]
    whole = crf_torch.dense_crf(images, probs, params)
    monkeypatch.setattr(crf_torch, "_BLOCK_BYTES", 4 * 5 * 64)  # 64 rows of 5 labels per block
    blocked = crf_torch.dense_crf(images, probs, params)
    torch.testing.assert_close(blocked, whole, atol=1e-6, rtol=0)
    assert torch.equal(blocked.argmax(1), whole.argmax(1))


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown CRF implementation"):
        crf_select.check_impl("densecrf")
    images = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        crf_torch.dense_crf(images.float(), torch.ones(1, 2, 8, 8), CRF_PRESETS["psa"])
    with pytest.raises(ValueError, match="unary must be"):
        crf_torch.dense_crf(images, torch.ones(1, 2, 8, 9), CRF_PRESETS["psa"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(6)
    images = torch.from_numpy(np.stack([_photo("astronaut", 64, 80), _photo("coffee", 64, 80)]))
    probs = torch.from_numpy(np.stack([_smooth_probs(rng, 5, 64, 80) for _ in range(2)]))
    params = CRF_PRESETS["deeplab"]
    cpu = crf_torch.dense_crf(images, probs, params)
    gpu = crf_torch.dense_crf(images.cuda(), probs.cuda(), params).cpu()
    assert (cpu.argmax(1) == gpu.argmax(1)).float().mean() >= 0.999
    assert (cpu - gpu).abs().max() < 1e-3
