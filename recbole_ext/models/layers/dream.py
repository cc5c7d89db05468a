"""DREAM block of MambaRec, in the closed form the official code computes (spec §1.3, quirk Q9).

The official module applies ASPP-style convolutions and two attention gates to a 64-channel **1x1 image** per
item. On a 1x1 map every dilated 3x3 convolution reduces to its centre tap, pooling and upsampling are
identities, and both "attentions" are one scalar gate per item, so the block is exactly::

    U   = ReLU(BN(X A^T + c))                 five 64->64 branches fused into one 64->320 map
    g   = max(ReLU(U w_c), sigmoid(U w_s))    channel gate (ReLU, no sigmoid) and spatial gate
    out = ReLU(BN((U ⊙ U ⊙ g) W^T + b))       the gated features are multiplied by U again

BatchNorm per channel over the concatenation equals the five per-branch BatchNorms. The official code runs DREAM
twice per training step on the same input (forward and MMD, Q10); both passes see identical batch statistics, so
the running statistics end up as after one update with momentum ``1 - (1 - m)^2``. ``double_bn_update=True``
reproduces that with a single pass.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_ext.models.layers.recompute import first_pass_flags, recomputed

N_BRANCHES = 5
DILATED_BRANCHES = (1, 2, 3)  # branches b2..b4: the centre taps of 3x3 convs, fan_in = 9 * channels


class DREAM(nn.Module):
    def __init__(self, dim: int = 64, bn_momentum: float = 0.1, double_bn_update: bool = True):
        super().__init__()
        self.dim = dim
        momentum = 1.0 - (1.0 - bn_momentum) ** 2 if double_bn_update else bn_momentum
        width = N_BRANCHES * dim
        self.branches = nn.Linear(dim, width)
        self.branch_bn = nn.BatchNorm1d(width, momentum=momentum)
        self.gate_channel = nn.Linear(width, 1, bias=False)
        self.gate_spatial = nn.Linear(width, 1, bias=False)
        self.fuse = nn.Linear(width, dim)
        self.fuse_bn = nn.BatchNorm1d(dim, momentum=momentum)
        # PyTorch's default conv init bound is 1/sqrt(fan_in); the dilated branches have fan_in 9*dim.
        bound = 1.0 / math.sqrt(9 * dim)
        with torch.no_grad():
            for b in DILATED_BRANCHES:
                self.branches.weight[b * dim:(b + 1) * dim].uniform_(-bound, bound)
                self.branches.bias[b * dim:(b + 1) * dim].uniform_(-bound, bound)

    def forward(self, x: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        """``recompute``: keep only ``x`` for backward and run the block again there (same values and gradients;
        the five ``[n, 320]`` activations are 135 MB per modality on Clothing)."""
        if not (recompute and self.training and torch.is_grad_enabled()):
            return self._block(x, lambda bn, h: bn(h))
        first = first_pass_flags()

        def run(t):
            update = next(first)  # once per pass, for both BatchNorms
            return self._block(t, lambda bn, h: _batch_statistics_norm(bn, h, update))

        return recomputed(run, x)

    def _block(self, x: torch.Tensor, norm) -> torch.Tensor:
        u = F.relu(norm(self.branch_bn, self.branches(x)))
        gate = torch.maximum(F.relu(self.gate_channel(u)), torch.sigmoid(self.gate_spatial(u)))
        return F.relu(norm(self.fuse_bn, self.fuse(u * u * gate)))


def _batch_statistics_norm(bn: nn.BatchNorm1d, x: torch.Tensor, update_running_stats: bool) -> torch.Tensor:
    """Training-mode ``bn(x)`` as a function of ``x`` alone, so the first run and the recomputation save the same
    tensors; the running statistics are updated by the module itself, on the first run only."""
    if update_running_stats:
        with torch.no_grad():
            bn(x)
    return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
