"""Dense CRF mean-field inference in PyTorch (CPU and CUDA), batched, equivalent to pydensecrf2.

Krähenbühl and Koltun's fully connected CRF (NIPS 2011) as their ``densecrf`` library (the C++
inside pydensecrf2) computes it, with the presets of :mod:`wsss.refine.crf`: a Gaussian kernel
on (x/sxy, y/sxy) and a bilateral kernel on (x/sxy, y/sxy, r/srgb, g/srgb, b/srgb), Potts
compatibilities, NORMALIZE_SYMMETRIC kernels, ``iterations`` mean-field steps::

    Q = softmax(-U);  repeat: Q = softmax(-U + sum_k w_k * n_k * K_k(n_k * Q))

with n_k = 1 / sqrt(K_k(1)) and K_k the permutohedral-lattice Gaussian filter (self term
included, as densecrf does).

Method (a true 5-D / 2-D Gaussian filter, no local window). Both kernels are filtered on a
permutohedral lattice (Adams, Baek and Davis 2010), the very lattice densecrf builds, reproduced
with the same float32 operations in tensor ops: elevation onto the d-plane, nearest
remainder-0 point (round half to even, as its SSE code), ranks, barycentric weights, the d+1
simplex vertices, and the vertices of the zero padding point densecrf's SSE loop adds when
H*W is not a multiple of 4. Vertex keys are packed into one int32/int64 code (image, key
digits, remainder last for memory locality); one stable ``torch.sort`` numbers the vertices
and groups the splat entries; blur neighbours come from a direct-address table (the 2-D
lattice) or a vectorised open-addressing hash table (one direction looked up, the other its
inverse). Splat, the d+1 blur passes ([1/2, 1, 1/2] per axis, composed two at a time) and
slice (scaled by 1 / (1 + 2^-d)) are weighted row sums run by ``embedding_bag`` (FBGEMM on
CPU, a CUDA kernel on GPUs), built once per call and reused by every iteration; blur entries
that point at absent neighbours (weight 0, most of the sparse bilateral lattice's) are
dropped. The symmetric norms and Potts weights are folded into the splat and slice weights.
Images of a batch are disjoint blocks of one lattice (the image index is part of the key),
so a batch costs one set of calls per iteration on a GPU; on CPU a batch goes image by image
(``CPU_BATCH_PIXELS``: a shared table only adds cache misses). The Gaussian kernel's lattice
depends on the image size alone and is cached per size.

Error (measured against pydensecrf2 1.1; ``tests/test_crf_torch.py``, ``python -m
wsss.bench.crf``). The lattice, hence the filter, is densecrf's; what differs is float32
summation order, the folded norms and exp/log rounding. On random images and unaries and on
scikit-image photographs at 500 x 375 with the psa, irn and deeplab presets (21 labels) the
label maps agree on 100 % of pixels and marginals differ by 1e-8 on average; at most by 3e-6
(psa), 7e-5 (irn) and 1e-5 (deeplab) on photographs, while on random images with irn's narrow
colour kernel (srgb 5) ten iterations amplify float rounding at a few near-tied pixels to up
to 4e-2 (about 120 of 7.9 M marginals above 1e-4, labels unchanged). pydensecrf's own KL
energy of our marginals equals that of its marginals to 1e-5 relative (tests).
:func:`kl_divergence` sums in float64; pydensecrf sums in float32 and is off by up to 1e-3
relative on 500 x 375 x 21. The Gaussian (2-D) kernel uses the same lattice, not an exact
separable Gaussian: the lattice itself approximates exp(-|f_i - f_j|^2 / 2) only to ~2 %
(d = 2) and ~10 % (d = 5) relative error on random points, so an exact Gaussian would not
match pydensecrf. Inference only (no gradients).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.refine.crf import UNARY_CLIP, CRFParams

_CODE_LIMIT = 1 << 62
# CPU mean field: an operator whose result exceeds this many bytes writes it in row blocks into
# a table allocated once. A fresh tensor above glibc's 32 MiB mmap ceiling (1024 x 768 x 21
# floats) is mapped and page-faulted in anew on every call, which cost more than the filtering
# (2x at 1024 x 768); just below it, blocks only add copies (16 MiB: 6 % slower at 500 x 375).
_BLOCK_BYTES = 30 << 20
# On CPU a batch runs in groups of at most this many pixels (at least one image); GPUs take it
# whole. 0: image by image. A shared lattice only adds cache misses on CPU (per image, 5
# iterations, 1 thread: 4 x 256 x 192 118-127 ms one by one vs 143 ms in one lattice; 8 x 128 x
# 96 29 vs 38-42 ms; 2 x 500 x 375 1.2-1.8x slower), and the Gaussian lattice of a size is
# cached, so images after the first skip its build anyway. Tests raise it to run the shared
# lattice (the GPU path) on CPU.
CPU_BATCH_PIXELS = 0
# A blur pass whose entries are at least this fraction zero-weight drops them (CSR rows).
_SPARSE_BLUR = 0.25


class LatticeKeyOverflow(ValueError):
    """The packed lattice keys of a batch need more than 62 bits (split the batch)."""


def _f32(x: float) -> float:
    """``x`` rounded to float32, as a Python float: torch scalar ops then use the C++ constant."""
    return float(np.float32(x))


def _as_columns(columns: list[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """n tensors [M] -> [M, n] (of ``dtype``, default theirs), written column by column.

    ``torch.stack(dim=1)`` of float32 columns and ``.T.contiguous()`` were measured 2.5-4x
    slower on CPU (torch 2.13).
    """
    out = columns[0].new_empty(len(columns[0]), len(columns), dtype=dtype)
    for i, column in enumerate(columns):
        out[:, i] = column
    return out


def _elevate(features: Tensor) -> Tensor:
    """Features float32 [d, P] -> elevated [d+1, P] on the plane sum = 0 (y = E f).

    Same float32 operations as densecrf's SSE ``Permutohedral::init`` (Adams et al. 2010, p. 5).
    """
    d, p = features.shape
    inv_std_dev = _f32(math.sqrt(2.0 / 3.0) * (d + 1))
    elevated = features.new_empty(d + 1, p)
    sm = features.new_zeros(p)
    for j in range(d, 0, -1):
        cf = features[j - 1] * _f32(1.0 / math.sqrt((j + 1) * j) * inv_std_dev)
        elevated[j] = sm - cf * float(j)
        sm = sm + cf
    elevated[0] = sm
    return elevated


def _simplex(elevated: Tensor) -> tuple[Tensor, Tensor]:
    """Elevated [d+1, P] -> (rem0 float32 [d+1, P], rank int32 [d+1, P]).

    rem0: the nearest remainder-0 lattice point (round half to even, as SSE), moved back onto
    the plane; rank: the position of each coordinate of ``elevated - rem0`` in decreasing
    order, ties broken by densecrf's pairwise comparison.
    """
    d1 = elevated.shape[0]
    v = torch.round(elevated * _f32(np.float32(1.0) / np.float32(d1)))
    rem0 = v * float(d1)
    diff = elevated - rem0
    rank = torch.zeros(elevated.shape, dtype=torch.int32, device=elevated.device)
    for i in range(d1 - 1):
        for j in range(i + 1, d1):
            c = diff[i] < diff[j]
            rank[i] += c
            rank[j] += ~c
    rank += v.sum(0).int()
    wrap = (rank < 0).int() - (rank > d1 - 1).int()
    return rem0 + (wrap * d1).float(), rank + wrap * d1


def _barycentric(elevated: Tensor, rem0: Tensor, rank: Tensor) -> Tensor:
    """Barycentric weights float32 [d+1, P] of each point in its simplex (Adams et al., p. 10)."""
    d1, p = elevated.shape
    v = (elevated - rem0) * _f32(np.float32(1.0) / np.float32(d1))
    pos = ((d1 - 1) - rank).long()
    bary = elevated.new_zeros(d1 + 1, p)
    bary.scatter_add_(0, pos, v)
    bary.scatter_add_(0, pos + 1, -v)
    bary[0] = bary[0] + (1.0 + bary[d1])
    return bary[:d1]


@dataclass(frozen=True)
class _KeyCode:
    """Mixed-radix packing of a vertex key: (image, q_0 .. q_{d-1}, remainder r) -> an integer.

    densecrf's key of a vertex of remainder r has k_i = (d+1) q_i + r (i < d). ``lo`` int64 [d]
    is the smallest q_i minus 2, ``strides`` int64 [d] the weight of each q_i; ``stride_r`` (1:
    the remainder is the last digit, so a simplex's vertices lie close in memory) and
    ``stride_b`` weigh the remainder and the image. The margin of 2 keeps the codes of blur
    neighbours (q_i +- 1) inside their digit. Codes are stored as ``dtype``, less ``shift``:
    int32 whenever all of them fit in 32 bits (shifted by 2^31 above 2^31 - 1), for a 4x faster
    sort and lighter hashing; int64 otherwise.
    """

    lo: Tensor
    strides: Tensor
    stride_r: int
    stride_b: int
    dtype: torch.dtype
    shift: int


def _key_code(base: Tensor, n_images: int) -> _KeyCode:
    """Packing for remainder-0 points base int64 [d, P] (q of every vertex is base or base - 1).

    The zero feature vector (densecrf's padding point) is always inside the range.
    """
    d = base.shape[0]
    zero = torch.zeros_like(base[:, 0])
    lo = torch.minimum(base.min(1).values, zero) - 2
    hi = torch.maximum(base.max(1).values, zero) + 2
    strides, size = [], d + 1  # the remainder is the last digit (stride 1)
    for s in reversed((hi - lo + 1).tolist()):
        strides.append(size)
        size *= s
    total = size * n_images
    if total >= _CODE_LIMIT:
        raise LatticeKeyOverflow(f"lattice keys of {n_images} image(s) need more than 62 bits")
    dtype = torch.int32 if total <= 2**32 else torch.int64
    shift = 2**31 if dtype == torch.int32 and total > 2**31 else 0
    strides_t = torch.tensor(strides[::-1], dtype=torch.int64, device=base.device)
    return _KeyCode(lo, strides_t, 1, size, dtype, shift)


def _vertex_codes(rem0: Tensor, rank: Tensor, batch: Tensor, code: _KeyCode) -> Tensor:
    """Codes ``code.dtype`` [P, d+1] of each point's d+1 simplex vertices (column r: remainder r).

    densecrf: k_i = rem0_i + canonical[r][rank_i], canonical[r][k] = r - (d+1) [k > d - r], so
    q_i = rem0_i / (d+1) - [rank_i > d - r]; the sum of stride_i [rank_i > d - r] over i is
    the total stride minus a prefix sum of the strides ordered by rank.
    """
    d1, p = rem0.shape
    base = torch.round(rem0[:-1] / float(d1)).long()  # [d, P]
    digits = ((base - code.lo[:, None]) * code.strides[:, None]).sum(0)
    digits += batch * code.stride_b - code.shift
    by_rank = torch.zeros(d1, p, dtype=torch.int64, device=rem0.device)
    by_rank.scatter_(0, rank[:-1].long(), code.strides[:, None].expand(d1 - 1, p))
    prefix = by_rank.cumsum(0)
    total = int(code.strides.sum())
    others = [digits + (r * code.stride_r - total) + prefix[d1 - 1 - r] for r in range(1, d1)]
    return _as_columns([digits, *others], code.dtype)


def _blur_deltas(code: _KeyCode, d1: int) -> Tensor:
    """Code offsets [d+1 axes, d+1 remainders] from a vertex to its first blur neighbour.

    densecrf: along axis j the neighbours are k - 1 + (d+1) e_j and k + 1 - (d+1) e_j (e_d = 0);
    in (r, q) form the first one has remainder r - 1 (d when r = 0) and q_j + 1 (r > 0) or
    q_i - 1 for all i != j (r = 0). The second is the inverse map.
    """
    d = d1 - 1
    s = code.strides.tolist() + [0]
    total = sum(s)
    out = torch.zeros(d1, d1, dtype=torch.int64)
    for j in range(d1):
        for r in range(d1):
            out[j, r] = -code.stride_r + s[j] if r > 0 else d * code.stride_r - (total - s[j])
    return out.to(device=code.strides.device, dtype=code.dtype)


def _hash(codes: Tensor, bits: int) -> Tensor:
    """Slots int64 in [0, 2^bits) of codes in [-2^31, 2^62): multiplicative hashing, no overflow.

    Each 31-bit half is multiplied by a 32-bit odd constant (products < 2^63) and the middle
    bits of their xor are kept.
    """
    c = codes.long()
    mixed = ((c & 0x7FFFFFFF) * 0x9E3779B1) ^ ((c >> 31) * 0x7FEB352D)
    return (mixed >> 20) & ((1 << bits) - 1)


# Keys spanning at most this many slots per key are looked up in a direct-address table.
_DENSE_SPAN = 8


def _find(keys: Tensor, queries: Tensor) -> Tensor:
    """Index int64 of each query in unique int keys [M], -1 where absent; queries [...].

    Keys in a range of at most ``_DENSE_SPAN`` * M codes (the 2-D Gaussian lattice's) go into a
    direct-address table, one gather per query. Others go into a vectorised open-addressing hash
    table (linear probing, load <= 1/4): all keys, then all queries, probe one slot per round;
    O(M + Q) work, versus O(Q log M) for a binary search.
    """
    dev = keys.device
    if not len(keys):
        return torch.full(queries.shape, -1, dtype=torch.int64, device=dev)
    lo = int(torch.minimum(keys.min(), queries.min()))
    span = int(torch.maximum(keys.max(), queries.max())) + 1 - lo
    if span <= _DENSE_SPAN * len(keys):
        table = torch.full((span,), -1, dtype=torch.int64, device=dev)
        table[keys.long() - lo] = torch.arange(len(keys), device=dev)
        return table[queries.long() - lo]
    bits = max(4, math.ceil(math.log2(4 * max(len(keys), 1))))
    mask = (1 << bits) - 1
    slots = torch.full((1 << bits,), -1, dtype=torch.int32, device=dev)
    pending = torch.arange(len(keys), dtype=torch.int32, device=dev)
    pos = _hash(keys, bits)
    while len(pending):
        free = torch.nonzero(slots.index_select(0, pos) < 0).squeeze(1)
        slots.index_copy_(0, pos.index_select(0, free), pending.index_select(0, free))
        left = torch.nonzero(slots.index_select(0, pos) != pending).squeeze(1)
        pending, pos = pending.index_select(0, left), (pos.index_select(0, left) + 1) & mask
    # The first probe settles most queries: a hit, or an empty slot (absent).
    query = queries.reshape(-1)
    pos = _hash(query, bits)
    slot = slots.index_select(0, pos)
    occupied = slot >= 0
    hit = occupied & (keys.index_select(0, slot.clamp(min=0)) == query)
    out = torch.where(hit, slot.long(), -1)
    active = torch.nonzero(occupied ^ hit).squeeze(1)
    query, pos = query.index_select(0, active), (pos.index_select(0, active) + 1) & mask
    while len(active):
        slot = slots.index_select(0, pos)
        occupied = slot >= 0
        hit = occupied & (keys.index_select(0, slot.clamp(min=0)) == query)
        found = torch.nonzero(hit).squeeze(1)
        out.index_copy_(0, active.index_select(0, found), slot.index_select(0, found).long())
        more = torch.nonzero(occupied ^ hit).squeeze(1)
        active, query = active.index_select(0, more), query.index_select(0, more)
        pos = (pos.index_select(0, more) + 1) & mask
    return out.view_as(queries)


def _blur_neighbours(vertices: Tensor, code: _KeyCode, d1: int) -> Tensor:
    """Blur neighbours int64 [d+1, 2, M] (-1 where absent) of sorted vertex codes [M].

    The first neighbours are looked up; the second ones are their inverse (scattered back).
    """
    m = len(vertices)
    true_codes = vertices.long() + code.shift
    remainder = torch.div(true_codes, code.stride_r, rounding_mode="floor") % d1
    # Every neighbour code is inside the packing: the stored sum cannot overflow.
    first = _find(vertices, vertices + _blur_deltas(code, d1).index_select(1, remainder))
    second = torch.full((d1, m + 1), -1, dtype=torch.int64, device=vertices.device)
    own = torch.arange(m, device=vertices.device).expand(d1, m)
    second.scatter_(1, torch.where(first < 0, m, first), own)  # column m: a sink for misses
    return torch.stack([first, second[:, :m]], dim=1)


@dataclass
class Lattice:
    """A permutohedral lattice over P points of one or more images (kept apart in the keys).

    offsets int64 [P, d+1]: vertex of each simplex corner (column r: remainder r); weights
    float32 [P, d+1]: barycentric weights; splat_crow int64 [M+1], splat_point int64 [E],
    splat_weight float32 [E]: splatting as CSR rows (M x P; densecrf's zero padding points
    appear with weight 0); neighbours int64 [d+1, 2, M]: blur neighbours, -1 where absent.
    """

    offsets: Tensor
    weights: Tensor
    splat_crow: Tensor
    splat_point: Tensor
    splat_weight: Tensor
    neighbours: Tensor

    @property
    def dim(self) -> int:
        """d, the feature dimension."""
        return self.offsets.shape[1] - 1

    @property
    def n_vertices(self) -> int:
        """M, the number of lattice vertices."""
        return self.neighbours.shape[2]

    def repeat(self, n: int) -> Lattice:
        """The lattice of n copies of the point set, each copy its own image (block diagonal)."""
        if n == 1:
            return self
        p, m, e = self.offsets.shape[0], self.n_vertices, self.splat_point.shape[0]
        k = torch.arange(n, device=self.offsets.device)
        crow = (self.splat_crow[None, :-1] + e * k[:, None]).reshape(-1)
        nb = self.neighbours[:, :, None, :]
        return Lattice(
            (self.offsets[None] + m * k[:, None, None]).reshape(n * p, -1),
            self.weights.repeat(n, 1),
            torch.cat([crow, crow.new_full((1,), n * e)]),
            (self.splat_point[None] + p * k[:, None]).reshape(-1),
            self.splat_weight.repeat(n),
            torch.where(nb < 0, -1, nb + m * k[:, None]).reshape(*nb.shape[:2], n * m),
        )


def build_lattice(features: Tensor, batch: Tensor, n_images: int, pad: Tensor | None) -> Lattice:
    """The lattice of features float32 [d, P] with image index int64 [P] in [0, n_images).

    ``pad`` int64 [Z]: images whose lattice also gets the vertices of a zero feature vector
    (densecrf's SSE init runs over blocks of 4 points and pads the last block with zeros).
    Vertices are numbered in the order of their packed codes (one stable sort). Raises
    :class:`LatticeKeyOverflow` when the packed keys would not fit in 62 bits.
    """
    d, p = features.shape
    d1 = d + 1
    dev = features.device
    elevated = _elevate(features)
    rem0, rank = _simplex(elevated)
    weights = _as_columns(list(_barycentric(elevated, rem0, rank)))
    code = _key_code(torch.round(rem0[:-1] / float(d1)).long(), n_images)
    codes = _vertex_codes(rem0, rank, batch, code).reshape(-1)
    point = torch.arange(p, device=dev).repeat_interleave(d1)
    weight = weights.reshape(-1)
    if pad is not None and len(pad):
        zero = features.new_zeros(d1, len(pad))
        zrank = torch.arange(d1, device=dev, dtype=torch.int32)[:, None].expand(d1, len(pad))
        codes = torch.cat([codes, _vertex_codes(zero, zrank, pad, code).reshape(-1)])
        point = torch.cat([point, point.new_zeros(len(pad) * d1)])
        weight = torch.cat([weight, weight.new_zeros(len(pad) * d1)])
    sorted_codes, perm = torch.sort(codes, stable=True)
    vertices, counts = torch.unique_consecutive(sorted_codes, return_counts=True)
    m = len(vertices)
    crow = torch.zeros(m + 1, dtype=torch.int64, device=dev)
    torch.cumsum(counts, 0, out=crow[1:])
    ids_sorted = torch.repeat_interleave(torch.arange(m, device=dev), counts)
    ids = torch.empty_like(ids_sorted).scatter_(0, perm, ids_sorted)
    neighbours = _blur_neighbours(vertices, code, d1)
    splat_point = point.index_select(0, perm)
    splat_weight = weight.index_select(0, perm)
    return Lattice(ids[: p * d1].view(p, d1), weights, crow, splat_point, splat_weight, neighbours)


def _alpha(d: int) -> float:
    """densecrf's slice scale 1 / (1 + 2^-d), in float32."""
    return _f32(np.float32(1.0) / (np.float32(1.0) + np.float32(2.0) ** np.float32(-d)))


def lattice_filter_vector(lattice: Lattice, values: Tensor) -> Tensor:
    """One lattice's filter of one channel: values float32 [P] -> [P] (densecrf ``compute``).

    Splat in point order (as densecrf), d+1 blur passes, slice; vector gathers and
    ``index_add_``, cheaper than ``embedding_bag`` for a single channel (the kernel norms).
    """
    m = lattice.n_vertices
    src = (lattice.weights * values[:, None]).reshape(-1)
    table = values.new_zeros(m + 1).index_add_(0, lattice.offsets.reshape(-1), src)
    nb = torch.where(lattice.neighbours < 0, m, lattice.neighbours)  # slot m stays 0
    for j in range(lattice.dim + 1):
        table[:m] = table[:m] + 0.5 * (
            table.index_select(0, nb[j, 0]) + table.index_select(0, nb[j, 1])
        )
    sliced = table.index_select(0, lattice.offsets.reshape(-1)).view_as(lattice.weights)
    return (sliced * lattice.weights).sum(1) * _alpha(lattice.dim)


def _symmetric_norm(lattice: Lattice) -> Tensor:
    """NORMALIZE_SYMMETRIC (densecrf ``initLattice``): 1 / sqrt(K 1 + 1e-20), float32 [P]."""
    k1 = lattice_filter_vector(lattice, lattice.weights.new_ones(lattice.offsets.shape[0]))
    return (1.0 / torch.sqrt(k1.double() + 1e-20)).float()


@functools.lru_cache(maxsize=4)
def _grid_kernel(h: int, w: int, sxy: float, device: torch.device) -> tuple[Lattice, Tensor]:
    """The Gaussian kernel's lattice and norm float32 [H*W] of one H x W image.

    They depend on the size only, so they are cached and repeated over a batch.
    """
    images = torch.zeros(1, h, w, 3, dtype=torch.uint8, device=device)
    batch = torch.zeros(h * w, dtype=torch.int64, device=device)
    pad = batch[:1] if (h * w) % 4 else None
    lattice = build_lattice(pixel_features(images, sxy, None), batch, 1, pad)
    return lattice, _symmetric_norm(lattice)


@dataclass
class _RowSums:
    """A sparse matrix applied as weighted row sums: out[r] = sum_e weight[e] * x[index[e]].

    index int [nnz] with offsets int [R] (row starts), or index int [R, n] and weight
    float32 [R, n] with offsets None (n entries per row). Applied with ``embedding_bag``
    (FBGEMM on CPU, about twice as fast as MKL's CSR product here; a CUDA kernel on GPUs).
    """

    index: Tensor
    weight: Tensor
    offsets: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        """x float32 [N, C] -> [R, C]."""
        return F.embedding_bag(
            self.index, x, self.offsets, mode="sum", per_sample_weights=self.weight
        )

    @property
    def n_rows(self) -> int:
        """R."""
        return (self.index if self.offsets is None else self.offsets).shape[0]

    def rows(self, r0: int, r1: int) -> _RowSums:
        """Rows [r0, r1) as an operator of their own."""
        if self.offsets is None:
            return _RowSums(self.index[r0:r1], self.weight[r0:r1])
        e0 = int(self.offsets[r0])
        e1 = int(self.offsets[r1]) if r1 < self.n_rows else self.index.shape[0]
        return _RowSums(self.index[e0:e1], self.weight[e0:e1], self.offsets[r0:r1] - e0)

    def without_zeros(self) -> _RowSums:
        """The same sums, zero-weight entries dropped (rows of n entries -> CSR rows).

        The bilateral lattice is sparse: 40-65 % of its composed blur entries point at absent
        neighbours (weight 0); dropping them makes a blur pass about 1.3-1.5x faster, for about
        one pass's time once. Where less than ``_SPARSE_BLUR`` of the entries are zero (the
        Gaussian lattice: < 2 %), the rows stay as they are. Entries keep their order, so the
        float sums are the same.
        """
        keep = self.weight != 0
        counts = keep.sum(1, dtype=self.index.dtype)
        if int(counts.sum()) > (1 - _SPARSE_BLUR) * keep.numel():
            return self
        kept = torch.nonzero(keep.view(-1)).squeeze(1)
        offsets = torch.zeros_like(counts)
        torch.cumsum(counts[:-1], 0, out=offsets[1:])
        index, weight = self.index.view(-1), self.weight.view(-1)
        return _RowSums(index.index_select(0, kept), weight.index_select(0, kept), offsets)

    def blocks(self, size: int) -> list[tuple[int, int, _RowSums]]:
        """(r0, r1, rows r0..r1) for consecutive blocks of ``size`` rows."""
        n = self.n_rows
        return [(r, min(r + size, n), self.rows(r, min(r + size, n))) for r in range(0, n, size)]


def _index_dtype(device: torch.device, n: int) -> torch.dtype:
    """int32 indices on CPU where they fit (less memory traffic), int64 elsewhere."""
    return torch.int32 if device.type == "cpu" and n < 2**31 - 1 else torch.int64


@dataclass
class LatticeFilter:
    """One kernel's filter ``post * K(pre * x)`` on a lattice: splat, blur passes, slice.

    splat: M rows (entries grouped by vertex); blur: ceil((d+1)/2) passes of 9 entries per
    vertex (two axes each); slice: P rows of d+1 entries scaled by 1 / (1 + 2^-d). Per-point
    scales pre, post float32 [P] (norms, compatibility) are folded into the weights.
    ``splat_point`` int64 [E]: the point of each splat entry (to fold ``pre`` in).
    """

    splat: _RowSums
    blur: list[_RowSums]
    slice: _RowSums
    splat_point: Tensor

    @property
    def n_rows(self) -> int:
        """M, the rows of the vertex table."""
        return self.splat.offsets.shape[0]

    @classmethod
    def build(cls, lattice: Lattice) -> LatticeFilter:
        """The unscaled filter K of ``lattice``."""
        dev = lattice.offsets.device
        itype = _index_dtype(dev, max(lattice.n_vertices, lattice.splat_point.numel()))
        splat = _RowSums(
            lattice.splat_point.to(itype), lattice.splat_weight, lattice.splat_crow[:-1].to(itype)
        )
        steps = [_blur_columns(lattice.neighbours[j], itype) for j in range(lattice.dim + 1)]
        blur = []
        for j in range(0, len(steps), 2):
            cols, weights = steps[j] if j + 1 == len(steps) else _compose(steps[j], steps[j + 1])
            blur.append(_RowSums(_as_columns(cols), _as_columns(weights)).without_zeros())
        sliced = _RowSums(lattice.offsets.to(itype), lattice.weights * _alpha(lattice.dim))
        return cls(splat, blur, sliced, lattice.splat_point)

    def scaled(self, pre: Tensor, post: Tensor) -> LatticeFilter:
        """``post * K(pre * x)``: pre, post float32 [P] (the blur passes are shared)."""
        splat_w = self.splat.weight * pre.index_select(0, self.splat_point)
        splat = _RowSums(self.splat.index, splat_w, self.splat.offsets)
        sliced = _RowSums(self.slice.index, self.slice.weight * post[:, None])
        return LatticeFilter(splat, self.blur, sliced, self.splat_point)

    def blurred(self, values: Tensor) -> Tensor:
        """Splat and blur: values float32 [P, C] -> lattice values [M, C]."""
        table = self.splat(values)
        for b in self.blur:
            table = b(table)
        return table

    def __call__(self, values: Tensor) -> Tensor:
        """The filter: values float32 [P, C] -> [P, C]."""
        return self.slice(self.blurred(values))


_Columns = tuple[list[Tensor], list[Tensor]]  # per entry: column index [M], weight [M]


def _blur_columns(neighbours: Tensor, itype: torch.dtype) -> _Columns:
    """Blur along one axis as 3 entries per vertex: v_m + (v_n1 + v_n2) / 2.

    neighbours int64 [2, M], -1 where absent: read as row m with weight 0 (densecrf reads a
    zero row).
    """
    own = torch.arange(neighbours.shape[1], device=neighbours.device, dtype=itype)
    half = (neighbours >= 0).float() * 0.5
    cols = torch.where(neighbours < 0, own, neighbours.to(itype))
    return [own, *cols], [torch.ones_like(half[0]), *half]


def _compose(first: _Columns, second: _Columns) -> _Columns:
    """Two blur steps as one, 9 entries per vertex: second(first(x)), exact weights (1/2^k).

    One pass instead of two: half the table writes and calls.
    """
    (c1, w1), (c2, w2) = first, second
    cols, weights = [], []
    for c, w in zip(c2, w2, strict=True):
        at = c.long()
        cols += [x.index_select(0, at) for x in c1]
        weights += [w * x.index_select(0, at) for x in w1]
    return cols, weights


@dataclass
class Pairwise:
    """The pairwise terms of a batch: sum_k w_k n_k K_k(n_k q), one filter per kernel.

    Kernels keep separate vertex tables: a stacked table was measured slower (cache misses).
    """

    filters: list[LatticeFilter]

    def __call__(self, q: Tensor) -> Tensor:
        """q float32 [P, K] -> [P, K] (the negative of densecrf's pairwise ``apply`` sum)."""
        out = self.filters[0](q)
        for f in self.filters[1:]:
            out += f(q)
        return out


def pixel_features(images: Tensor, sxy: float, srgb: float | None) -> Tensor:
    """Images uint8 [B, H, W, 3] -> features float32 [2 or 5, B*H*W]: x/sxy, y/sxy (, rgb/srgb).

    Computed in float64 and rounded once: the same float32 as densecrf's ``i / sx`` (a tensor
    divisor, since CUDA divides by a scalar as a multiplication by its reciprocal).
    """
    b, h, w, _ = images.shape
    dev = images.device

    def div(x: Tensor, s: float) -> Tensor:
        return x.double() / torch.full_like(x, _f32(s), dtype=torch.float64)

    ys = div(torch.arange(h, device=dev), sxy)
    xs = div(torch.arange(w, device=dev), sxy)
    xy = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)]).reshape(2, 1, h * w)
    feats = [xy.expand(2, b, h * w).reshape(2, -1)]
    if srgb is not None:
        feats.append(div(images.reshape(-1, 3).T, srgb))
    return torch.cat(feats).float()


def build_pairwise(images: Tensor, params: CRFParams) -> Pairwise:
    """The Gaussian and bilateral terms of images uint8 [B, H, W, 3], P = B*H*W pixels.

    Pixels in image-major raster order. The Gaussian lattice and norm are built for one image
    (cached per size) and repeated over the batch; the bilateral lattice covers the batch.
    """
    b, h, w, _ = images.shape
    dev = images.device
    grid, grid_norm = _grid_kernel(h, w, _f32(params.gaussian_sxy), dev)
    batch = torch.arange(b, device=dev).repeat_interleave(h * w)
    pad = torch.arange(b, device=dev) if (h * w) % 4 else None
    feats = pixel_features(images, params.bilateral_sxy, params.bilateral_srgb)
    bilateral = build_lattice(feats, batch, b, pad)
    terms = [
        (grid.repeat(b), grid_norm.repeat(b), params.gaussian_compat),
        (bilateral, _symmetric_norm(bilateral), params.bilateral_compat),
    ]
    return Pairwise(
        [LatticeFilter.build(lat).scaled(n, n * _f32(compat)) for lat, n, compat in terms]
    )


def _softmax_(t: Tensor) -> Tensor:
    """Softmax over labels of t float32 [P, K]; on CPU in place unless torch's kernel is faster.

    torch's last-dim softmax on CPU (2.13, AVX512) is fast for 16 <= K < 32 labels only; for
    fewer or more, four vectorised in-place passes (max, subtract + exp, sum, divide) win.
    """
    if t.device.type != "cpu" or _torch_softmax_is_faster(t.shape[1]):
        return torch.softmax(t, dim=1)
    t.sub_(t.amax(1, keepdim=True)).exp_()
    return t.div_(t.sum(1, keepdim=True))


def _torch_softmax_is_faster(k: int) -> bool:
    """Whether torch.softmax(dim=1) beats the in-place passes for K = k labels on this CPU.

    Measured at 262144 x K, one thread, AVX512 (ms, torch vs passes): K = 11: 40 vs 7.5, 15: 53
    vs 10, 16: 4.1 vs 9.4, 21: 8.7 vs 14, 31: 8.2 vs 22, 32: 31 vs 14, 40: 29 vs 16, 81: 57 vs
    31. Other CPUs (vector widths) were not measured: they take the passes, never the 5x trap.
    """
    return 16 <= k < 32 and torch.backends.cpu.get_cpu_capability() == "AVX512"


def mean_field(unary: Tensor, pairwise: Pairwise, iterations: int) -> Tensor:
    """densecrf ``inference``: unary float32 [P, K] (-log p) -> marginals Q float32 [P, K].

    Q = softmax(-U), then ``iterations`` times Q = softmax(pairwise(Q) - U). On CPU, results
    larger than ``_BLOCK_BYTES`` are written in row blocks into tables allocated once (Q is
    then overwritten in place).
    """
    p, k = unary.shape
    rows = max(1, _BLOCK_BYTES // (4 * k)) if unary.device.type == "cpu" else max(p, 1)
    plans = []
    for f in pairwise.filters:
        # Every splat and blur op has M rows: blocked ones alternate between two tables
        # allocated once; unblocked ones return fresh tables.
        blocked = f.n_rows > rows
        buffers = (unary.new_empty(f.n_rows, k), unary.new_empty(f.n_rows, k)) if blocked else None
        ops = [f.splat, *f.blur]
        plans.append(
            [(op.blocks(rows), buffers[j % 2] if blocked else None) for j, op in enumerate(ops)]
        )
    slices = [f.slice.blocks(rows) for f in pairwise.filters]
    q = _softmax_(-unary)
    for _ in range(iterations):
        tables = [_run_plan(plan, q) for plan in plans]
        if len(slices[0]) == 1:
            q = _softmax_(_slice_sum(slices, tables, 0).sub_(unary))
            continue
        for b, (r0, r1, _) in enumerate(slices[0]):
            q[r0:r1] = _softmax_(_slice_sum(slices, tables, b).sub_(unary[r0:r1]))
    return q


def _run_plan(plan: list[tuple[list, Tensor | None]], x: Tensor) -> Tensor:
    """Splat and blur passes of one kernel: each op into its table (in blocks) or a new one."""
    for blocks, dst in plan:
        if dst is None:
            x = blocks[0][2](x)
            continue
        for r0, r1, op in blocks:
            dst[r0:r1] = op(x)
        x = dst
    return x


def _slice_sum(slices: list[list], tables: list[Tensor], b: int) -> Tensor:
    """Row block b of sum_k slice_k(table_k): [rows, K]."""
    t = slices[0][b][2](tables[0])
    for blocks, table in zip(slices[1:], tables[1:], strict=True):
        t += blocks[b][2](table)
    return t


def kl_divergence(unary: Tensor, q: Tensor, pairwise: Pairwise) -> float:
    """densecrf ``klDivergence`` (the mean-field energy): sum Q log Q + U Q - Q sum_k w_k K_k Q."""
    entropy = (q * torch.log(q.clamp_min(1e-20))).double().sum()
    return float(entropy + (unary * q).double().sum() - (q * pairwise(q)).double().sum())


def _pixel_major(unary: Tensor) -> Tensor:
    """Unary [B, K, H, W] -> contiguous [B*H*W, K] float32, written label by label.

    (A permuted view would leave mean field's softmax and copies on strided memory: 2x slower.)
    """
    b, k, h, w = unary.shape
    out = unary.new_empty(b, h * w, k, dtype=torch.float32)
    for label in range(k):
        out[:, :, label] = unary[:, label].reshape(b, h * w)
    return out.view(b * h * w, k)


@torch.no_grad()
def dense_crf_unary(images: Tensor, unary: Tensor, params: CRFParams) -> Tensor:
    """Mean field: images uint8 [B, H, W, 3], unary [B, K, H, W] (-log p) -> Q [B, K, H, W].

    Runs on the images' device: on CUDA the batch shares one lattice per kernel, on CPU it
    goes image by image (groups of at most ``CPU_BATCH_PIXELS`` pixels, at least one image).
    When a batch's lattice keys need more than 62 bits (huge images with tiny sxy/srgb), the
    batch is split; a single such image raises ValueError.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"CRF needs uint8 images [B, H, W, 3], got {images.dtype} {images.shape}")
    b, h, w, _ = images.shape
    if unary.ndim != 4 or unary.shape[0] != b or tuple(unary.shape[2:]) != (h, w):
        raise ValueError(f"unary must be [B, K, H, W] for images {tuple(images.shape)}")
    n = max(1, CPU_BATCH_PIXELS // (h * w))
    if images.device.type == "cpu" and b > n:
        parts = [(images[i : i + n], unary[i : i + n]) for i in range(0, b, n)]
        return torch.cat([dense_crf_unary(i, u, params) for i, u in parts])
    try:
        pairwise = build_pairwise(images, params)
    except LatticeKeyOverflow:
        if b == 1:
            raise
        k = b // 2
        parts = [(images[:k], unary[:k]), (images[k:], unary[k:])]
        return torch.cat([dense_crf_unary(i, u, params) for i, u in parts])
    q = mean_field(_pixel_major(unary.to(images.device)), pairwise, params.iterations)
    return q.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def unary_from_probs(probs: Tensor, clip: float = UNARY_CLIP) -> Tensor:
    """-log(clamp(p, clip, 1)) float32, any shape: :func:`wsss.refine.crf.unary_from_probs`."""
    return -torch.log(probs.float().clamp(clip, 1.0))


def dense_crf(images: Tensor, probs: Tensor, params: CRFParams, clip: float = UNARY_CLIP) -> Tensor:
    """Refines probabilities: images uint8 [B, H, W, 3], probs [B, K, H, W] -> Q [B, K, H, W].

    The unary is :func:`unary_from_probs`, as :func:`wsss.refine.crf.dense_crf`.
    """
    return dense_crf_unary(images, unary_from_probs(probs, clip), params)
