"""Index arithmetic for a flat array cut into consecutive segments, described by the segment lengths.

The visits of each patient, the codes of each visit and the items of each user are stored back to back; a segment
is a run of consecutive elements and ``lengths[s]`` its size (0 allowed). These helpers turn the lengths into the
index arrays that gather or scatter whole segments at once, without a Python loop over segments:

* ``segment_starts``: where each segment begins (exclusive running sum);
* ``indptr_from_lengths`` / ``indptr_from_segment_ids``: CSR index pointers ``[n_segments + 1]``;
* ``positions_in_segments``: each element's position inside its segment;
* ``concatenated_ranges``: ``arange(start, start + length)`` of every segment, concatenated (a CSR gather).

Each takes a numpy array or a torch tensor and answers in kind; torch results stay on the input's device. Result
dtypes are those of the inline numpy / torch expressions the helpers replaced (``cumsum`` promotes smaller integers
to int64 in torch and to the platform integer in numpy), so int64 lengths give int64 results; CSR pointers are
always int64.
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

IndexArray = TypeVar("IndexArray", np.ndarray, torch.Tensor)


def segment_starts(lengths: IndexArray) -> IndexArray:
    """Offset of each segment's first element: ``[0, l0, l0 + l1, ...]`` (one entry per segment, not n + 1)."""
    if isinstance(lengths, torch.Tensor):
        return torch.cumsum(lengths, 0) - lengths
    lengths = np.asarray(lengths)
    return np.cumsum(lengths) - lengths


def indptr_from_lengths(lengths: IndexArray) -> IndexArray:
    """CSR index pointers, always int64: ``indptr[0] = 0``, ``indptr[s + 1] = indptr[s] + lengths[s]``.

    Segment ``s`` is ``flat[indptr[s]:indptr[s + 1]]``; ``indptr[-1]`` is the total length.
    """
    if isinstance(lengths, torch.Tensor):
        return torch.cat([torch.zeros(1, dtype=torch.int64, device=lengths.device), torch.cumsum(lengths, 0)])
    indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    return indptr


def indptr_from_segment_ids(segment_ids: IndexArray, n_segments: int) -> IndexArray:
    """CSR index pointers (int64, ``[n_segments + 1]``) of elements labelled by their segment id in [0, n_segments).

    Only the counts per id matter, so the ids need not be sorted; the pointers describe the elements once they are
    grouped by id (e.g. after a stable argsort). Segments without any element are empty. An id outside the range
    raises ``ValueError`` (a negative one from ``bincount`` itself), instead of yielding longer pointers.
    """
    if isinstance(segment_ids, torch.Tensor):
        counts = torch.bincount(segment_ids, minlength=n_segments)
    else:
        counts = np.bincount(segment_ids, minlength=n_segments)
    if len(counts) > n_segments:
        raise ValueError(f"segment ids must lie in [0, {n_segments}), found {len(counts) - 1}")
    return indptr_from_lengths(counts)


def positions_in_segments(lengths: IndexArray) -> IndexArray:
    """Position of every element inside its segment: ``[0, 1, ..., l0 - 1, 0, 1, ..., l1 - 1, ...]``.

    One entry per element (``sum(lengths)``); an empty segment contributes nothing.
    """
    if isinstance(lengths, torch.Tensor):
        # the length of the repeated starts is the total: no separate lengths.sum() (a device sync on GPU)
        first = torch.repeat_interleave(segment_starts(lengths), lengths)
        return torch.arange(len(first), device=first.device) - first
    lengths = np.asarray(lengths)
    first = np.repeat(segment_starts(lengths), lengths)
    return np.arange(len(first)) - first


def concatenated_ranges(starts: IndexArray, lengths: IndexArray) -> IndexArray:
    """``concatenate([arange(s, s + l) for s, l in zip(starts, lengths)])`` without the loop.

    With CSR pointers ``indptr``, ``flat[concatenated_ranges(indptr[rows], indptr[rows + 1] - indptr[rows])]`` is
    the elements of segments ``rows``, concatenated in that order (repeats allowed).
    """
    if isinstance(lengths, torch.Tensor):
        return torch.repeat_interleave(starts, lengths) + positions_in_segments(lengths)
    return np.repeat(starts, lengths) + positions_in_segments(lengths)
