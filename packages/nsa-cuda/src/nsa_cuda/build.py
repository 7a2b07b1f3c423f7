"""The extension, compiled on first use by `torch.utils.cpp_extension.load` into a cache folder.

Why JIT and not a compiled wheel: the wheel stays pure Python (no matrix of wheels per CUDA, torch
and architecture), and the kernels are compiled by the user's own toolchain for exactly the GPU
they run on. The first call in a fresh cache compiles (about a minute); later processes load the
cached build, which cpp_extension rebuilds when a source changes. `NSA_CUDA_CACHE` sets the
cache folder (default ~/.cache/nsa-cuda), `NSA_CUDA_VERBOSE=1` shows the compiler's output.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("binding.cpp", "select.cu")  # every .cu is also compiled alone in CI (`nox -s cuda-compile`)
CXX_FLAGS = ("-O3",)  # no -std: the one torch builds extensions with (C++20 in torch 2.13)
NVCC_FLAGS = ("-O3", "-lineinfo")
CACHE_ENV = "NSA_CUDA_CACHE"
VERBOSE_ENV = "NSA_CUDA_VERBOSE"


def cache_dir() -> Path:
    """Where builds are kept: $NSA_CUDA_CACHE, else ~/.cache/nsa-cuda."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nsa-cuda")


@functools.cache
def unavailable_reason() -> str | None:
    """None when this machine can build and run the kernels (CUDA torch, a device, nvcc, ninja, the
    triton stages), else why not, the first missing one (checked once per process)."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA (torch.version.cuda is None)"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home is None or not (Path(home) / "bin" / "nvcc").is_file():
        return (f"no CUDA toolchain to build the kernels on first use: nvcc not found "
                f"(CUDA_HOME={home}; set CUDA_HOME to a CUDA toolkit)")
    if not cpp_extension.is_ninja_available():
        return "ninja is not on PATH: torch.utils.cpp_extension.load needs it to build (pip install ninja)"
    try:
        import nsa_triton.ops.nsa  # noqa: F401  (the composed forward stages)
    except ImportError as err:
        return f"the triton stages this backend composes cannot be imported: {err}"
    return None


@functools.cache
def extension() -> ModuleType:
    """The compiled module (built for the current device's architecture on first use)."""
    from torch.utils.cpp_extension import load

    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    build = cache_dir() / f"torch{torch.__version__}-cuda{torch.version.cuda}-sm{arch}"
    build.mkdir(parents=True, exist_ok=True)
    return load(
        name=f"nsa_cuda_sm{arch}",
        sources=[str(CSRC / s) for s in SOURCES],
        extra_cflags=list(CXX_FLAGS),
        extra_cuda_cflags=[*NVCC_FLAGS, f"-gencode=arch=compute_{arch},code=sm_{arch}"],
        extra_include_paths=[str(CSRC)],
        build_directory=str(build),
        verbose=os.environ.get(VERBOSE_ENV, "0") not in ("", "0"),
    )
