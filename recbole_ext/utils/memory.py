"""Give memory the allocator keeps after a phase back to the operating system."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim")
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl): nothing to do
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return the heap pages glibc keeps after tensors are freed (``malloc_trim(0)``); False where unavailable.

    A training step frees hundreds of MB of activations; glibc keeps those pages for reuse, so the evaluation that
    follows (whose large buffers are mapped separately) adds its memory on top of them.
    """
    trim = _malloc_trim()
    return bool(trim is not None and trim(0) >= 0)
