"""Losses of the MMRec family, written in the cheapest form that computes the same function."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bpr_logsigmoid(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``mean -log sigmoid(<u,p> - <u,n>)`` (MGCN / FREEDOM / MambaRec form)."""
    return -F.logsigmoid((user * pos).sum(-1) - (user * neg).sum(-1)).mean()


def bpr_log2sigmoid(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``mean -log2 sigmoid(<u,p> - <u,n>)`` (DRAGON / MENTOR), as the ln form / ln 2: the same function, without
    ``log2(0)`` once a margin is large."""
    return bpr_logsigmoid(user, pos, neg) / math.log(2.0)


def half_squared_l2(*tensors: torch.Tensor, denominator: float) -> torch.Tensor:
    """``sum_t ½‖t‖² / denominator``; MGCN divides by the configured batch size (quirk Q3)."""
    return sum(0.5 * t.pow(2).sum() for t in tensors) / denominator


def _distinct(index: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    rows, counts = torch.unique(index, return_counts=True)
    return rows, counts.to(dtype)


def info_nce(table1: torch.Tensor, table2: torch.Tensor, index: torch.Tensor, temperature: float) -> torch.Tensor:
    """MGCN's InfoNCE between ``table1[index]`` and ``table2[index]`` (one direction, in-batch negatives, the
    positive in the denominator, duplicates kept as their own false negatives, Q15).

    Per batch row ``-log(exp(s_bb/τ) / Σ_b' exp(s_bb'/τ))``. Rows that repeat an id are identical, so the loss is
    computed once per distinct id with its count ``c``: ``Σ_i c_i [logsumexp_j(s_ij/τ + log c_j) - s_ii/τ] / B``.
    Same value and gradient, on a ``distinct x distinct`` matrix instead of ``B x B``; logsumexp avoids overflow.
    """
    rows, counts = _distinct(index, table1.dtype)
    a = F.normalize(table1[rows], dim=1)
    b = F.normalize(table2[rows], dim=1)
    logits = a @ b.T / temperature
    per_row = torch.logsumexp(logits + counts.log()[None, :], dim=1) - logits.diagonal()
    return (counts * per_row).sum() / index.numel()


def info_nce_all_rows(table1: torch.Tensor, table2: torch.Tensor, index: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """LGMRec's hypergraph contrast: ``Σ_b -log(exp(s(b, b)/τ) / Σ_j exp(s(b, j)/τ))`` summed over the batch rows,
    with ``s(b, j) = <a_b, c_j>`` between the L2-normalised rows ``a_b = table1[index[b]]`` and ``c_j`` of the whole
    ``table2`` (every row of ``table2`` a negative, the positive ``c_index[b]`` among them; a sum, not a mean).

    Rows that repeat an id are identical, so the loss is computed once per distinct id times its count: a
    ``distinct x len(table2)`` matrix instead of ``batch x len(table2)``; logsumexp avoids overflow.
    """
    rows, counts = _distinct(index, table1.dtype)
    a = F.normalize(table1[rows], dim=1)
    logits = a @ F.normalize(table2, dim=1).T / temperature
    positive = logits.gather(1, rows[:, None]).squeeze(1)
    return (counts * (torch.logsumexp(logits, dim=1) - positive)).sum()


def summed_norms(*tensors: torch.Tensor, denominator: float) -> torch.Tensor:
    """``sum_t ‖t‖_F / denominator`` (unsquared Frobenius norms: MMRec's EmbLoss, VBPR's and LGMRec's L2 term)."""
    return sum(t.norm(p=2) for t in tensors) / denominator


def gaussian_mmd(x_table: torch.Tensor, y_table: torch.Tensor, index: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Biased MMD² (diagonals included) between the L2-normalised rows ``x_table[index]`` and ``y_table[index]``
    with kernel ``exp(-‖a-b‖²/(2σ²))``.

    For unit rows ``‖a-b‖² = 2 - 2 a·b``, so Gram matrices replace the official ``B x B x d`` broadcasts (Q12), and
    a mean over batch pairs is ``wᵀ K w`` over distinct ids with weights ``w = count / B``. Clamping at 0 only
    removes float round-off below zero on the diagonal.
    """
    rows, counts = _distinct(index, x_table.dtype)
    w = counts / index.numel()
    x = F.normalize(x_table[rows], dim=1)
    y = F.normalize(y_table[rows], dim=1)
    gamma = 1.0 / (2.0 * bandwidth * bandwidth)

    def kernel_mean(a, b):
        sq = (2.0 - 2.0 * (a @ b.T)).clamp_min(0.0)
        return w @ torch.exp(-gamma * sq) @ w

    return kernel_mean(x, x) + kernel_mean(y, y) - 2.0 * kernel_mean(x, y)
