"""The Triton server shipped inside the ``nvidia-pytriton`` wheel, made runnable on CPU hosts.

The wheel carries a real ``tritonserver`` (Triton 2.51, the NGC 24.10 release) with the Python
backend only. :func:`assemble_backends` builds the ``--backend-directory`` it needs, following
the recipe found by probing this environment and its four traps:

1. numpy<2 in the stub's environment (the project pins it; the stub uses this interpreter's
   environment because its ``bin/`` goes first on ``PATH``);
2. this interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH`` (else the stub binds another
   libpython and ``multiprocessing`` breaks);
3. backend files are copied, never symlinked (a Python-based backend refuses a library that
   "escapes the backend directory");
4. the copies lose their relative RPATH, so ``nvidia_pytriton.libs`` goes on ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path


class BundleError(RuntimeError):
    """The Triton bundle cannot be found or used; the message says what to install."""


@dataclass(frozen=True)
class TritonBundle:
    """Paths inside an installed ``nvidia-pytriton`` wheel."""

    root: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def caches(self) -> Path:
        return self.root / "caches"

    def stub(self, version: str | None = None) -> Path:
        """The Python-backend stub built for ``version`` ("3.11"; default: this interpreter)."""
        version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"


def find_bundle() -> TritonBundle:
    """Locates the Triton binary of ``nvidia-pytriton``; raises BundleError if missing."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BundleError("nvidia-pytriton is not installed: pip install nvidia-pytriton==0.7.0")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    bundle = TritonBundle(root=root, libs=root.parent.parent / "nvidia_pytriton.libs")
    for path in (bundle.binary, bundle.python_backend, bundle.stub(), bundle.libs):
        if not path.exists():
            raise BundleError(f"nvidia-pytriton is incomplete: {path} is missing")
    return bundle


def assemble_backends(bundle: TritonBundle, target: Path, python_backends: Path | None) -> Path:
    """Writes a backend directory to ``target``: ``python/`` plus Python-based backends.

    ``python_backends`` holds one folder per Python-based backend (e.g. ``onnxruntime/model.py``);
    each is copied next to ``python/`` so Triton uses it for models with that backend/platform.
    """
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in bundle.python_backend.iterdir():
        if item.is_file():
            shutil.copy2(item, python_dir / item.name)  # trap 3: copy, never symlink
    shutil.copy2(bundle.stub(), python_dir / "triton_python_backend_stub")
    if python_backends is not None:
        for backend in sorted(p for p in python_backends.iterdir() if p.is_dir()):
            if (backend / "model.py").is_file():
                shutil.copytree(
                    backend, target / backend.name, ignore=shutil.ignore_patterns("__pycache__")
                )
    return target


def server_environment(bundle: TritonBundle, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``tritonserver``: stubs use this interpreter, its libpython, bundled libs."""
    env = dict(os.environ if base is None else base)
    lib_paths = [sysconfig.get_config_var("LIBDIR"), str(bundle.libs), env.get("LD_LIBRARY_PATH")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in lib_paths if p)  # traps 2 and 4
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH")) if p)  # trap 1
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
