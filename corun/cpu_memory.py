"""How the process gets memory for large CPU tensors (glibc malloc), a training-speed setting.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves every request above its mmap threshold
(at most 32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` on free, so each large
activation of a training step (a 2×120×288×288 fp32 tensor is 80 MiB) is page-faulted and zeroed by the
kernel again, every step. Measured on a 2-core AMD EPYC VM for one paper-size CORUN training step
(patch 288, batch 2, fast path, fresh process; ``python benchmarks/bench_train_step.py --configs paper
--variants fast+system fast``): 2.64 M minor page faults and 14.3 s of system time per step, 30.4 s per
step against 20.1 s with this module's setting.

:func:`retain_freed_memory` tells glibc to serve large requests from the heap and never trim it, so freed
activations are reused by the next step without faults (0–20 k faults per step). The process keeps its
peak memory until it exits (the training step needs it again anyway). This is the effect Intel's PyTorch
CPU tuning guide gets from jemalloc/tcmalloc, done without a preloaded library. It changes no result.

Only glibc (Linux) is supported; elsewhere the functions return False and change nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import lru_cache

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
DEFAULT_MMAP_MAX = 65536  #: glibc's default
#: the mmap threshold glibc's dynamic rule settles at once a large mmapped block has been freed
#: (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit); its trim threshold follows at twice it
STEADY_MMAP_THRESHOLD = 32 * 1024 * 1024

_state = {"retain": False}


@lru_cache(maxsize=1)
def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        return lib
    except (OSError, AttributeError):
        return None


def available() -> bool:
    """Whether this process's allocator can be tuned (Linux with glibc)."""
    return _libc() is not None


def retain_freed_memory() -> bool:
    """Serve large allocations from the heap and never give freed memory back to the OS.

    Returns True when applied. Process-wide; undo with :func:`release_retained_memory`.
    """
    lib = _libc()
    if lib is None:
        return False
    ok = lib.mallopt(M_MMAP_MAX, 0) == 1  # no mmap for large blocks: they come from the heap
    ok &= lib.mallopt(M_TRIM_THRESHOLD, -1) == 1  # -1: never trim the heap's top
    _state["retain"] = ok
    return bool(ok)


def release_retained_memory() -> bool:
    """Undo :func:`retain_freed_memory`: glibc's thresholds again, and free pages returned to the OS.

    New large blocks are mmapped again (above 32 MiB; trim above 64 MiB: where glibc's dynamic
    thresholds settle in a long-running loop). The heap itself keeps its size: a later request that
    fits one of its free blocks is served from there, faulting its pages in once. So this is not a
    fresh process's allocator; benchmarks time that before retaining anything. Returns True when applied.
    """
    lib = _libc()
    if lib is None:
        return False
    ok = lib.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX) == 1
    ok &= lib.mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD) == 1
    ok &= lib.mallopt(M_TRIM_THRESHOLD, 2 * STEADY_MMAP_THRESHOLD) == 1
    lib.malloc_trim(0)
    _state["retain"] = False
    return bool(ok)


def retaining() -> bool:
    """Whether :func:`retain_freed_memory` is in effect (set by this module)."""
    return _state["retain"]
