"""Recompute cheap blocks in backward instead of keeping their activations (same function, less memory).

MGCN and MambaRec run a full-graph forward every step: on Clothing-shaped data autograd would keep ~550 MB of
activations for backward, most of them from blocks that cost little to run again (DREAM's 320-wide branches,
the view fusion, the InfoNCE and MMD kernels) next to one expensive map (the 4096-wide image projection) that is
never recomputed. :func:`recomputed` keeps only a block's inputs and runs it again during backward (PyTorch's
non-reentrant activation checkpointing), which gives the same values and gradients: the blocks draw no random
numbers, and DREAM updates its BatchNorm running statistics in the first pass only (``first_pass_flags``).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.checkpoint import checkpoint


def recomputed(fn: Callable, *args, enabled: bool = True):
    """``fn(*args)``; while autograd records and ``enabled``, its intermediate activations are recomputed in
    backward instead of stored."""
    if not enabled or not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)


def first_pass_flags() -> Iterator[bool]:
    """``True`` once, then ``False`` forever: lets a recomputed block tell its first run from the recomputation."""
    yield True
    while True:
        yield False
