"""Which dense CRF the ``densecrf`` model runs, and how many of it: chosen from the host.

The ``densecrf`` config's ``impl``, ``device``, ``threads`` and ``instances`` parameters may
say ``auto`` (the checked-in config does); :func:`choose_layout` then decides:

- ``impl``: the PyTorch CRF (:mod:`wsss.refine.crf_torch`) where torch is importable, else
  pydensecrf2. The two agree on 100 % of labels (``tests/test_crf_torch.py``); torch is the
  faster on CPU (README, CRF table) and the only one that runs on a GPU.
- ``device``: CUDA for a GPU instance (``instance_group { kind: KIND_GPU }``) when torch sees
  one, else the CPU.
- ``instances``: on CPU one instance per core (at most ``MAX_INSTANCES``), each on its share
  of the cores (``threads``; pydensecrf2 is single-threaded). Measured on the 2-core
  bench machine (``python -m wsss.bench --only serving``, 2026-12-06, 512 x 512 photo): two
  one-thread instances served 4 clients faster than one two-thread instance, and two two-thread
  instances collapsed (their OpenMP threads oversubscribe the cores), so no layout gives an
  instance more threads than its share of the cores. On a GPU: one instance.

``instances`` is a property of the config file (Triton's ``instance_group.count``), not of the
running model: ``python -m wsss.export.ensembles`` and ``serving/serve.py`` write it for the
host (:func:`wsss.export.ensembles.fit_densecrf`); the model itself resolves the rest at load.
Imports no torch (it only looks for it): the Triton Python backends import this module.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

AUTO = "auto"
# More instances than this only multiply memory (a torch runtime each) on large hosts.
MAX_INSTANCES = 8


@dataclass(frozen=True)
class CRFLayout:
    """impl ``pydensecrf`` | ``torch``; device ``cpu`` | ``cuda``; instances x threads each."""

    impl: str
    device: str
    instances: int
    threads: int


def host_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cores_per_instance(instances: int, cores: int | None = None) -> int:
    """Each of ``instances`` instances' share of the host's (or ``cores``) cores, at least 1."""
    cores = host_cores() if cores is None else max(1, cores)
    return max(1, cores // max(1, instances))


def torch_importable() -> bool:
    """Whether ``import torch`` would find a package (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def cuda_usable() -> bool:
    """torch is importable and sees a CUDA device (imports torch)."""
    if not torch_importable():
        return False
    import torch

    return torch.cuda.is_available()


def choose_layout(
    cores: int | None = None, has_torch: bool | None = None, gpu_instance: bool = False
) -> CRFLayout:
    """The fastest CRF layout for a host with ``cores`` CPU cores (default: this one's).

    ``has_torch`` (default: :func:`torch_importable`); ``gpu_instance``: the instance is a GPU
    instance (then CUDA if torch sees a device).
    """
    cores = host_cores() if cores is None else max(1, cores)
    has_torch = torch_importable() if has_torch is None else has_torch
    if has_torch and gpu_instance and cuda_usable():
        return CRFLayout("torch", "cuda", 1, 1)
    impl = "torch" if has_torch else "pydensecrf"
    instances = min(cores, MAX_INSTANCES)
    threads = cores_per_instance(instances, cores) if has_torch else 1
    return CRFLayout(impl, "cpu", instances, threads)
