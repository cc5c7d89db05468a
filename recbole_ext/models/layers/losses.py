"""Losses of the MMRec family, written in the cheapest form that computes the same function."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_logsigmoid(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``mean -log sigmoid(<u,p> - <u,n>)`` (MGCN / FREEDOM / MambaRec form)."""
    return -F.logsigmoid((user * pos).sum(-1) - (user * neg).sum(-1)).mean()


def half_squared_l2(*tensors: torch.Tensor, denominator: float) -> torch.Tensor:
    """``sum_t ½‖t‖² / denominator``; MGCN divides by the configured batch size (quirk Q3)."""
    return sum(0.5 * t.pow(2).sum() for t in tensors) / denominator


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    """One-directional InfoNCE with in-batch negatives, positive included in the denominator (Q15).

    ``-log(exp(s_bb/τ) / Σ_b' exp(s_bb'/τ)) = logsumexp_b'(s_bb'/τ) - s_bb/τ``: same value, no overflow.
    """
    a = F.normalize(view1, dim=1)
    b = F.normalize(view2, dim=1)
    logits = a @ b.T / temperature
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Biased MMD² with kernel ``exp(-‖a-b‖²/(2σ²))`` between unit-norm rows (diagonals included).

    For unit rows ``‖a-b‖² = 2 - 2 a·b``, so three Gram matrices replace the official ``B x B x d`` broadcasts
    (Q12). Clamping at 0 only removes float round-off below zero on the diagonal.
    """
    gamma = 1.0 / (2.0 * bandwidth * bandwidth)

    def kernel_mean(a, b):
        sq = (2.0 - 2.0 * (a @ b.T)).clamp_min(0.0)
        return torch.exp(-gamma * sq).mean()

    return kernel_mean(x, x) + kernel_mean(y, y) - 2.0 * kernel_mean(x, y)
