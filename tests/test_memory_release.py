"""release_freed_memory gives freed heap pages back (glibc), so evaluation does not stack on training's heap."""
import pytest
import torch

from recbole_ext.utils.memory import _malloc_trim, release_freed_memory


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(_malloc_trim() is None, reason="malloc_trim is glibc's")
def test_freed_heap_pages_go_back_to_the_system():
    # A freed 24 MB block raises glibc's mmap threshold, so the 8 MB blocks after it live on the heap, as
    # a training step's activations do; freeing them keeps the pages resident until the trim.
    big = torch.ones(6 * 1024 * 1024)
    del big
    blocks = [torch.ones(2 * 1024 * 1024) for _ in range(40)]  # 320 MB
    keep = blocks[-1]
    del blocks
    before = _rss_mb()
    assert release_freed_memory()
    assert _rss_mb() < before - 150, (before, _rss_mb())
    assert keep.sum() == keep.numel()
