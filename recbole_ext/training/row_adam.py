"""Adam steps of large feature tables applied inside backward, row block by row block (no full gradient).

The maths is in :mod:`recbole_ext.models.layers.row_update`. Here the step itself: the table stays a parameter of
the trainer's ``torch.optim.Adam`` (so its state is saved and resumed with the optimiser, and the learning-rate
schedule applies), but it never gets a ``.grad``, so ``optimizer.step()`` skips it; instead, during backward,
each block of rows gets exactly the update ``optimizer.step()`` would have given it, through torch's own
functional ``torch.optim.adam.adam`` with the group's settings (fused kernel when the optimiser is fused), on
views of the parameter and of its moment tables. Adam is element-wise, so the blocks together are the full step.

It only applies when every parameter's step depends on its own gradient alone: not with gradient clipping
(``clip_grad_norm`` needs the global norm first), not with AdamW or other optimisers (``row_update_features:
False`` turns it off anywhere).
"""
from __future__ import annotations

import torch
from torch.optim.adam import adam as functional_adam  # torch's documented functional form of Adam.step

DEFAULT_BLOCK_ROWS = 2048  # 2048 x 4096 floats = 32 MB per temporary


def _scalar_dtype(fused: bool) -> torch.dtype:
    # torch.optim.Adam's choice for its "step" counter
    return torch.float64 if torch.get_default_dtype() == torch.float64 and not fused else torch.float32


class RowBlockAdam:
    """The Adam step of one parameter of ``optimizer``, applied from row blocks of its gradient."""

    def __init__(self, optimizer: torch.optim.Adam, param: torch.nn.Parameter, block_rows: int = DEFAULT_BLOCK_ROWS):
        groups = [i for i, g in enumerate(optimizer.param_groups) if any(p is param for p in g["params"])]
        if len(groups) != 1:
            raise ValueError("the parameter must belong to exactly one group of the optimiser")
        self.optimizer, self.param, self.group_index, self.block_rows = optimizer, param, groups[0], int(block_rows)

    @property
    def group(self) -> dict:
        # looked up every step, like the state: load_state_dict (a resumed run) replaces the group dicts, and the
        # learning-rate scheduler then updates the new ones
        return self.optimizer.param_groups[self.group_index]

    def _state(self) -> dict:
        state = self.optimizer.state[self.param]  # looked up every step: load_state_dict replaces it
        if not state:  # lazy initialisation, as torch.optim.Adam._init_group
            fused = bool(self.group["fused"])
            device = self.param.device if fused or self.group["capturable"] else "cpu"
            state["step"] = torch.zeros((), dtype=_scalar_dtype(fused), device=device)
            state["exp_avg"] = torch.zeros_like(self.param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(self.param, memory_format=torch.preserve_format)
            if self.group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(self.param, memory_format=torch.preserve_format)
        return state

    def __call__(self, grad_rows) -> None:
        g, state = self.group, self._state()
        param = self.param.detach()
        beta1, beta2 = g["betas"]
        for start in range(0, param.shape[0], self.block_rows):
            stop = min(start + self.block_rows, param.shape[0])
            block = slice(start, stop)
            # adam() advances the step counters it is given: each block gets its own copy of the same count
            functional_adam(
                [param[block]], [grad_rows(start, stop)], [state["exp_avg"][block]], [state["exp_avg_sq"][block]],
                [state["max_exp_avg_sq"][block]] if g["amsgrad"] else [], [state["step"].clone()],
                foreach=g["foreach"], fused=g["fused"], capturable=g["capturable"], differentiable=False,
                decoupled_weight_decay=bool(g.get("decoupled_weight_decay", False)), amsgrad=g["amsgrad"],
                beta1=beta1, beta2=beta2, lr=g["lr"], weight_decay=g["weight_decay"], eps=g["eps"],
                maximize=g["maximize"])
        state["step"] += 1


def attach_row_adam(model, optimizer, clip_grad_norm=None, enabled: bool = True,
                    block_rows: int = DEFAULT_BLOCK_ROWS) -> list[str]:
    """Route the tables ``model.row_update_tables()`` names through :class:`RowBlockAdam`; returns their names.

    Nothing is attached (and training is the ordinary step) when disabled, when the optimiser is not
    ``torch.optim.Adam`` itself, or when gradients are clipped.
    """
    tables = getattr(model, "row_update_tables", None)
    if not enabled or tables is None or type(optimizer) is not torch.optim.Adam or clip_grad_norm:
        return []
    owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
    attached = []
    for name, param in tables().items():
        if id(param) in owned and param.requires_grad:
            model.attach_row_update(name, RowBlockAdam(optimizer, param, block_rows))
            attached.append(name)
    return attached
