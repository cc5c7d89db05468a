"""Device hygiene on a machine without a GPU: run a model's step with the default device set to ``meta``.

On a GPU, a tensor created inside ``forward`` without ``device=`` lands on the CPU while the parameters live on the
GPU, and the first operation mixing the two fails (or, for an index, silently copies through the host every step).
:func:`strict_device` reproduces that on a CPU-only machine: the model and its inputs stay on the CPU, the default
device becomes ``meta``, so every tensor created without an explicit device is a meta tensor and mixing it with the
model's CPU tensors raises ``Tensor on device meta is not on the expected device cpu``.

``no_host_sync=True`` also makes ``Tensor.numpy``, ``Tensor.tolist`` and ``Tensor.item`` raise: a training step
that converts to numpy or reads a value back waits for the GPU on every batch. The one read-back allowed is
``recbole_ext.utils.device.host_ints`` (step sizes of a loop over time steps; see its docstring). Operations whose
output size depends on the data (``nonzero``, boolean-mask indexing, ``unique``, ``int(t)``) also wait for a GPU and
are not refused: the medication models' ragged code lists (CafeMed's visit nodes, MedContext's visit rows) and
VBPR's distinct batch items are built that way, one such wait per batch.

``torch.sparse_coo_tensor`` counts as a factory for the default device even when its indices and values are given,
so a model builds sparse tensors with ``device=values.device``: harmless on every device, and needed here.
"""
from __future__ import annotations

from contextlib import contextmanager

import sys

import torch

from recbole_ext.utils.device import host_ints

_SYNC_METHODS = ("numpy", "tolist", "item")


class HostSyncError(AssertionError):
    """A tensor was read back to the host (numpy / tolist / item) inside a guarded step."""


def _called_from_host_ints(frame, depth: int = 4) -> bool:
    """Whether ``host_ints`` is among the nearest callers (torch's own dispatch may sit in between)."""
    while frame is not None and depth:
        if frame.f_code is host_ints.__code__:
            return True
        frame, depth = frame.f_back, depth - 1
    return False


@contextmanager
def strict_device(no_host_sync: bool = False):
    """Default device ``meta`` (and, optionally, no host read-backs) for the duration of the block."""
    saved = {name: getattr(torch.Tensor, name) for name in _SYNC_METHODS} if no_host_sync else {}

    def refuse(name):
        def method(self, *args, **kwargs):
            if _called_from_host_ints(sys._getframe(1)):
                return saved[name](self, *args, **kwargs)
            raise HostSyncError(f"Tensor.{name}() inside a training step: a host sync on a GPU")
        return method

    try:
        for name in saved:
            setattr(torch.Tensor, name, refuse(name))
        with torch.device("meta"):
            yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
