"""A linear map of a large trainable table whose optimiser step runs inside backward, row block by row block.

MGCN, MambaRec and FREEDOM train the raw feature tables (official ``freeze=False``, spec Q11). On Clothing the
image table is ``23,033 x 4096`` floats (377 MB), and a plain step keeps four tables of that size alive: the
parameter, its gradient and Adam's two moments. The gradient of ``Y = X W^T + b`` with respect to ``X`` is
``G W`` (``G = dL/dY``), one row per table row, and Adam updates each element from its own gradient and moments
only. So the update can be applied block by block of rows from ``G`` and ``W`` as soon as backward reaches the
map, and the full ``[n, 4096]`` gradient never exists. The weight and bias gradients are computed first, from the
table as it was in the forward pass.

The table must be used by this one map only, once per forward (otherwise the update would see part of its
gradient): models opt in per table (``MultimodalRecommender.row_update_tables``) and the trainer attaches the
update (``recbole_ext.training.row_adam``). Nothing here knows about the optimiser: ``update`` is any callable
taking ``grad_rows(start, stop) -> Tensor``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

RowGradients = Callable[[int, int], torch.Tensor]
RowUpdate = Callable[[RowGradients], None]


class _LinearWithRowUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, weight, bias, update):
        # The table is kept as a plain attribute, not saved for backward: it is updated in place in backward,
        # after its last use there.
        ctx.save_for_backward(weight)
        ctx.table, ctx.update, ctx.has_bias = table, update, bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return F.linear(table, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        table = ctx.table
        # under bfloat16 autocast (precision: bf16) grad_out, and a weight computed in the forward pass (MambaRec's
        # fused projection), are bfloat16: the gradients are taken in the table's float32 and returned in each
        # input's own dtype (all no-ops in float32)
        grad_out, weight_dtype, weight = grad_out.to(table.dtype), weight.dtype, weight.to(table.dtype)
        # The same products, in the same layouts, as autograd's addmm backward (so the numbers match it).
        grad_weight = table.t().mm(grad_out).t().to(weight_dtype) if ctx.needs_input_grad[1] else None
        grad_bias = grad_out.sum(0).to(ctx.bias_dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        with torch.no_grad():
            ctx.update(lambda start, stop: grad_out[start:stop].mm(weight))
        ctx.table = ctx.update = None
        return None, grad_weight, grad_bias, None


def linear_with_row_update(table: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           update: RowUpdate | None) -> torch.Tensor:
    """``F.linear(table, weight, bias)``; with ``update`` set and autograd recording, ``table`` receives no
    ``.grad``: ``update`` applies its optimiser step during backward from row blocks of the gradient."""
    if update is None or not torch.is_grad_enabled() or not table.requires_grad:
        return F.linear(table, weight, bias)
    return _LinearWithRowUpdate.apply(table, weight, bias, update)
