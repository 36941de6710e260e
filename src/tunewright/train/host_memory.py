"""Keep the host allocator from hoarding freed activation memory (glibc only).

glibc's malloc serves a block from its heap unless the block is larger than `M_MMAP_THRESHOLD`,
which starts at 128 KiB and rises (up to 32 MiB) every time a larger mmapped block is freed. After
the first few frees, every activation tensor of a training step (MBs to tens of MBs) comes from
the heap, and the heap hardly ever shrinks: a layer's freed temporaries stay resident while the
next layer allocates its own above them, so much of the peak RSS is memory already freed. A fixed
threshold serves every tensor of 1 MiB or more with its own mapping and gives it back to the OS
when freed, which cuts the peak RSS well down. The price is page faults on reuse, so slower
steps: the loop applies it only in the memory-lean mode (measured: docs/results.md).
"""

from __future__ import annotations

import ctypes
import platform

_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
MMAP_THRESHOLD_BYTES = (
    1 << 20
)  # smaller: more mmap calls for little gain; larger: fragmentation returns


def release_freed_tensors_to_os(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make glibc serve blocks of `threshold_bytes` or more from their own mappings, returned to
    the OS when freed. Process-wide and lasting. Returns False where the C library is not glibc
    (macOS, musl): their allocators have no such option."""
    if platform.libc_ver()[0] != "glibc":
        return False
    return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
