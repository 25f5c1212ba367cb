"""Process-wide allocator settings for decoding: keep freed memory for reuse.

A decoding process allocates and frees the same few large tensors at every batch and every search
step (features, encoder layers, the attention's energies). glibc's malloc returns freed memory at
the top of its heap to the kernel once more than a small threshold is free, and serves large
requests from fresh `mmap`s, so each batch faults its pages in again; with PyTorch's transparent
huge pages (`asr/__init__.py`) each fault also clears a 2 MiB page. On a 2-core virtual machine
the batched encoder of 16 digit strings took about 25 % less time with freed memory kept
(`benchmarks/decode_speed.py`, recipes/digits/README.md "Decoding speed").

Training does not use this: its steps reuse the same allocations anyway, and keeping freed memory
raised the benchmark contract's peak memory by about 80 MiB for no measurable gain (README,
"Performance").
"""

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>: free memory kept at the top of the heap before trimming
M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>: requests from this size up get their own mmap
MMAP_THRESHOLD_MAX = 32 << 20  # the upper bound of glibc's own dynamic threshold on 64-bit systems


def keep_freed_memory(retained_mib: int = 256) -> bool:
    """Let glibc's malloc keep up to `retained_mib` of freed memory for reuse, and serve requests
    up to 32 MiB from its heap; True where applied (glibc), False elsewhere (musl, macOS, Windows).

    It bounds what is kept, not what is used: memory still grows only with what the process holds
    at once, and beyond `retained_mib` free at the top of the heap it goes back to the kernel.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; either setting alone also ends glibc's dynamic thresholds
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        mallopt(M_TRIM_THRESHOLD, retained_mib << 20)
    )
