"""The Triton Inference Server that ships inside the ``nvidia-pytriton`` wheel, run as a plain binary.

The wheel bundles a real ``tritonserver`` (2.51), its Python backend and one backend *stub* per Python
version, plus the shared libraries they link (``nvidia_pytriton.libs``). We use those files directly,
without PyTriton's Python-side proxy: the backends folder Triton is pointed at is assembled here (the
Python backend beside the stub matching this interpreter), and the environment tells the stub where this
interpreter's ``libpython`` and packages are.
"""

from __future__ import annotations

import os
import shutil
import site
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from loadtest.errors import LoadtestError

STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonDistribution:
    """Where the wheel's server, Python backend, stub and libraries are."""

    binary: Path
    python_backend: Path  # libtriton_python.so + triton_python_backend_utils.py
    stub: Path  # the stub built for this interpreter's major.minor
    libs: Path  # nvidia_pytriton.libs: libtritonserver, the stub's libcudart, ...

    @classmethod
    def find(cls) -> TritonDistribution:
        """Locate the wheel's files, or say in one line what is missing."""
        try:
            import pytriton
        except ImportError:
            raise LoadtestError("the embedded server needs the nvidia-pytriton wheel: pip install nvidia-pytriton") from None
        root = Path(pytriton.__file__).resolve().parent
        server = root / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        found = cls(
            binary=server / "bin" / "tritonserver",
            python_backend=server / "backends" / "python",
            stub=server / "python_backend_stubs" / version / STUB_NAME,
            libs=root.parent / "nvidia_pytriton.libs",
        )
        if not found.binary.is_file():
            raise LoadtestError(f"nvidia-pytriton has no tritonserver binary at {found.binary} (a source install?)")
        if not found.stub.is_file():
            raise LoadtestError(f"nvidia-pytriton has no Python backend stub for Python {version}")
        return found

    def assemble_backends(self, target: Path) -> Path:
        """Write a ``--backend-directory`` holding ``python/`` = the Python backend + this interpreter's stub."""
        python_dir = target / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for source in [*self.python_backend.glob("*.so"), *self.python_backend.glob("*.py"), self.stub]:
            shutil.copy2(source, python_dir / source.name)
        return target

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """tritonserver's environment: library path for the stub and the import path of this interpreter."""
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = _join(python_library_dirs() + [str(self.libs)], env.get("LD_LIBRARY_PATH", ""))
        env["PYTHONPATH"] = _join(stub_import_path(), env.get("PYTHONPATH", ""))
        # The stub's interpreter finds its prefix from the first python3 on PATH: put ours (a venv's) first.
        env["PATH"] = _join([str(Path(sys.executable).parent)], env.get("PATH", ""))
        return env


def python_library_dirs() -> list[str]:
    """This interpreter's LIBDIR.

    The stub links ``libpython3.X.so`` dynamically; with a non-system Python (pyenv, conda, a venv over
    either) the system copy would be found first and models fail to load with
    ``'_thread.RLock' object has no attribute '_recursion_count'``.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    return [libdir] if libdir else []


def stub_import_path() -> list[str]:
    """What the stub's embedded interpreter needs on ``sys.path``: our site-packages and ``loadtest`` itself.

    The stub starts the base interpreter, which knows nothing of the virtualenv; its own model.py files
    import numpy and onnxruntime from here, and a user's Python-backend model may import ``loadtest``.
    """
    import loadtest

    paths = [str(Path(loadtest.__file__).resolve().parent.parent)]
    paths += [p for p in site.getsitepackages() if Path(p).is_dir()]
    return list(dict.fromkeys(paths))


def ensure_python_libdir_on_ld_path() -> None:
    """Prepend this interpreter's LIBDIR to our own LD_LIBRARY_PATH (for tools that start Triton themselves)."""
    os.environ["LD_LIBRARY_PATH"] = _join(python_library_dirs(), os.environ.get("LD_LIBRARY_PATH", ""))


def _join(first: list[str], existing: str) -> str:
    parts = [p for p in first if p]
    parts += [p for p in existing.split(":") if p and p not in parts]
    return ":".join(parts)
