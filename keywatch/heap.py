"""What the daemon asks of the C heap (glibc's malloc), so its RSS follows what it holds, not its busiest moment.

Two things, both no-ops where the C library is not glibc (musl, macOS):

- `steady_heap()`, at start (`keywatch run` calls it first thing, `Daemon.start` again for the demo and
  embedded daemons; a second call changes nothing): blocks of 128 KiB and more are mapped and unmapped on their own
  (M_MMAP_THRESHOLD). glibc raises that threshold by itself each time such a block is freed, up to 32 MiB,
  after which every large block of a cycle (a /metrics block's text, a batch's rows, the driver's buffers)
  is carved from the heap of the thread that asked for it and stays there, scattered, once freed. Fixing
  the threshold keeps them out of the heaps: at 10,000 keys the settled RSS is about 6 MB lower, with no
  measurable CPU.
- `release_freed_memory()`, after each phase that frees much (the config's parsing, a cycle, a database
  batch): the free pages inside every heap go back to the OS (malloc_trim). A few milliseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's default, kept fixed


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both or neither: glibc
    except (OSError, AttributeError):
        return None
    return libc


def steady_heap() -> bool:
    """Fix the mmap threshold (see the module's text). True when it was set."""
    libc = _libc()
    return libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


def release_freed_memory() -> None:
    """Hand the heap pages freed since the last call back to the OS (glibc's malloc_trim)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
