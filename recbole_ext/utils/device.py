"""Device placement helpers shared by the models and the trainers.

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
