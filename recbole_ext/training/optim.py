"""Optimizer choices shared by the task trainers."""
from __future__ import annotations

import torch


def fuse_adam_on_cpu(optimizer: torch.optim.Optimizer, enabled: bool = True) -> torch.optim.Optimizer:
    """Plain ``torch.optim.Adam`` over CPU parameters -> the same Adam with ``fused=True`` (same update, one kernel
    per step instead of a Python loop over the parameter tensors: less time and no temporaries). Any other
    optimizer, a GPU parameter, or ``enabled=False`` returns ``optimizer`` unchanged."""
    on_cpu = all(p.device.type == "cpu" for g in optimizer.param_groups for p in g["params"])
    if not enabled or type(optimizer) is not torch.optim.Adam or not on_cpu:
        return optimizer
    keys = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    groups = [{"params": g["params"], **{k: g[k] for k in keys}} for g in optimizer.param_groups]
    return torch.optim.Adam(groups, fused=True)
