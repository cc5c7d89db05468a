"""recbole_ext.utils.segments against plain-Python loops, on numpy arrays and torch tensors."""
import numpy as np
import pytest
import torch

from recbole_ext.utils.segments import (concatenated_ranges, indptr_from_lengths, indptr_from_segment_ids,
                                        positions_in_segments, segment_starts)

# zero segments, only empty segments, empty segments between and at the ends, one long segment, random
LENGTHS = [[], [0], [0, 0, 0], [3, 0, 2, 0, 1], [0, 4, 0], [7],
           np.random.default_rng(0).integers(0, 5, 50).tolist()]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def ref_starts(lengths):
    starts, total = [], 0
    for n in lengths:
        starts.append(total)
        total += n
    return starts


def ref_indptr(lengths):
    return ref_starts(lengths) + [sum(lengths)]


def ref_positions(lengths):
    return [j for n in lengths for j in range(n)]


def ref_ranges(starts, lengths):
    return [s + j for s, n in zip(starts, lengths) for j in range(n)]


def as_numpy(values):
    return np.array(values, dtype=np.int64)


def as_torch(values, device="cpu"):
    return torch.tensor(values, dtype=torch.int64, device=device)


def check_numpy(result, expected):
    assert isinstance(result, np.ndarray) and result.dtype == np.int64
    assert result.tolist() == expected


def check_torch(result, expected, device):
    assert isinstance(result, torch.Tensor) and result.dtype == torch.int64
    assert result.device.type == device
    assert result.tolist() == expected


@pytest.mark.parametrize("lengths", LENGTHS)
def test_numpy_helpers_match_loops(lengths):
    arr = as_numpy(lengths)
    starts = [10 * i + 3 for i in range(len(lengths))]  # arbitrary, not the segments' own starts
    check_numpy(segment_starts(arr), ref_starts(lengths))
    check_numpy(indptr_from_lengths(arr), ref_indptr(lengths))
    check_numpy(positions_in_segments(arr), ref_positions(lengths))
    check_numpy(concatenated_ranges(as_numpy(starts), arr), ref_ranges(starts, lengths))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lengths", LENGTHS)
def test_torch_helpers_match_loops_on_the_input_device(lengths, device):
    arr = as_torch(lengths, device)
    starts = [10 * i + 3 for i in range(len(lengths))]
    check_torch(segment_starts(arr), ref_starts(lengths), device)
    check_torch(indptr_from_lengths(arr), ref_indptr(lengths), device)
    check_torch(positions_in_segments(arr), ref_positions(lengths), device)
    check_torch(concatenated_ranges(as_torch(starts, device), arr), ref_ranges(starts, lengths), device)


@pytest.mark.parametrize("lengths", LENGTHS)
def test_indptr_from_segment_ids_counts_unsorted_ids(lengths):
    ids = [s for s, n in enumerate(lengths) for _ in range(n)]
    ids = [ids[i] for i in np.random.default_rng(1).permutation(len(ids))]
    check_numpy(indptr_from_segment_ids(as_numpy(ids), len(lengths)), ref_indptr(lengths))
    check_torch(indptr_from_segment_ids(as_torch(ids), len(lengths)), ref_indptr(lengths), "cpu")


def test_indptr_from_segment_ids_rejects_ids_beyond_the_segments():
    for ids in (as_numpy([0, 3]), as_torch([0, 3])):
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            indptr_from_segment_ids(ids, 3)


def test_concatenated_ranges_gathers_csr_rows_in_any_order():
    indptr, flat = as_numpy([0, 2, 2, 5]), np.arange(100, 105)
    rows = as_numpy([2, 0, 1, 2])
    gathered = flat[concatenated_ranges(indptr[rows], indptr[rows + 1] - indptr[rows])]
    assert gathered.tolist() == [102, 103, 104, 100, 101, 102, 103, 104]


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_numpy_dtypes_are_those_of_the_inline_expressions(dtype):
    lens = np.array([2, 0, 3], dtype=dtype)
    assert segment_starts(lens).dtype == (np.cumsum(lens) - lens).dtype
    assert positions_in_segments(lens).dtype == (np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)).dtype
    assert indptr_from_lengths(lens).dtype == np.int64


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_torch_dtypes_are_those_of_the_inline_expressions(dtype):
    lens = torch.tensor([2, 0, 3], dtype=dtype)
    inline_starts = torch.cumsum(lens, 0) - lens
    assert segment_starts(lens).dtype == inline_starts.dtype
    inline_positions = torch.arange(int(lens.sum())) - torch.repeat_interleave(inline_starts, lens)
    assert positions_in_segments(lens).dtype == inline_positions.dtype
    assert indptr_from_lengths(lens).dtype == torch.int64
