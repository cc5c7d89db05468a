"""Device placement helpers shared by the models, the loaders and the trainers.

``wants_pinned_memory(device)``: the loaders page-lock their batches only when the run's device is CUDA (a copy from
page-locked memory goes straight to the GPU by DMA, without a staging copy, and may overlap with compute); on the
CPU pinning would be one more copy for nothing.

``host_ints`` is the one deliberate read-back of a device tensor inside a training step: a Python loop over time
steps (the packed GRU of the medication models) needs its step sizes on the host, as ``pack_padded_sequence`` needs
CPU lengths. It is one small transfer per batch; ``recbole_ext.testing.device_audit`` allows it and refuses every
other ``numpy`` / ``tolist`` / ``item`` in a training step.
"""
from __future__ import annotations

import torch


def host_ints(values: torch.Tensor) -> list[int]:
    """The integers of a small 1-d tensor as a Python list (a device-to-host copy when ``values`` is on a GPU)."""
    return values.tolist()


def wants_pinned_memory(device) -> bool:
    """Whether batches bound for ``device`` (a ``torch.device``, a string such as ``"cuda:0"``, or None = CPU)
    should be page-locked: only for a CUDA device."""
    return device is not None and torch.device(device).type == "cuda"
