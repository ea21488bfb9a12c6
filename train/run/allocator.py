"""Keep freed memory inside the process (glibc's malloc), so CPU tensors are not faulted in afresh.

glibc serves a block above its mmap threshold with a fresh ``mmap`` and hands the top of its heap back
to the system above its trim threshold; both adapt, but a model call on the CPU frees and allocates
megabyte-sized activations many times a second (one 64-image chunk of the tiny preset's sampling: a
(4096, 256) float32 MLP activation is 4 MiB), and each one returned comes back as zeroed pages the
kernel has to fault in.  :func:`keep_freed_memory` raises both thresholds, as ``MALLOC_MMAP_THRESHOLD_``
and ``MALLOC_TRIM_THRESHOLD_`` would: freed blocks stay in the heap and are reused.  Values are not
touched (the same bits), only where memory comes from; the cost is that a process keeps up to
``trim_threshold`` of freed memory instead of returning it.  Measured: one 64-image, 25-step Euler
chunk 2.6-2.8 s -> 2.0 s (``python benchmarks/bench_sampling.py``, BENCHMARKS.md).

Called by the training loop's set-up, the demo's worker processes and the sampling commands.  Elsewhere
(macOS, musl) it does nothing and says so by returning False.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems (4 MiB x sizeof(long))


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD_MAX, trim_threshold: int = 1024**3) -> bool:
    """Set glibc's mmap and trim thresholds for this process; True where both took effect."""
    ok = False
    if sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    return ok
