"""``precision: fp32 | bf16``: the arithmetic of the training step's forward pass and loss.

``fp32`` (the default) leaves the trainer untouched: the same operations, bit for bit, as without the key. ``bf16``
runs each batch's ``calculate_loss`` under ``torch.autocast(device_type=<the model's device>, dtype=bfloat16)``:
matrix products and the other autocast-eligible operations compute in bfloat16, parameters, gradients and the
optimiser stay float32, and the backward pass runs outside the autocast region as torch recommends. bfloat16 has
float32's exponent range, so no loss scaling is needed. Evaluation stays float32: rankings and thresholds are not
moved by bfloat16 rounding or ties.

``with_precision(TrainerClass)`` adds this to RecBole's Trainer, ``MMRecTrainer`` and ``MedRecTrainer`` alike: all
three call ``_train_epoch(train_data, epoch, loss_func=None, ...)`` and use ``loss_func`` for every batch.
"""
from __future__ import annotations

import torch

from recbole_ext.options import check_choice, config_value

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def autocast_dtype(config) -> torch.dtype | None:
    """The autocast dtype that ``precision`` asks for (None: plain float32); a one-line error for other values."""
    value = str(config_value(config, "precision", "fp32")).strip().lower()
    return PRECISIONS[check_choice("precision", value, tuple(PRECISIONS))]


def model_device(model) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without tensors)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def under_autocast(loss_func, device_type: str, dtype: torch.dtype):
    """``loss_func`` whose every call runs under ``torch.autocast(device_type, dtype)``."""
    def autocast_loss(batch):
        with torch.autocast(device_type=device_type, dtype=dtype):
            return loss_func(batch)

    return autocast_loss


class MixedPrecision:
    """Mix in before a RecBole ``Trainer`` subclass; see the module docstring."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.autocast_dtype = autocast_dtype(config)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, *args, **kwargs):
        if self.autocast_dtype is not None:
            loss_func = under_autocast(loss_func or self.model.calculate_loss, model_device(self.model).type,
                                       self.autocast_dtype)
        return super()._train_epoch(train_data, epoch_idx, loss_func, *args, **kwargs)


def with_precision(trainer_class):
    """``trainer_class`` with :class:`MixedPrecision` in front of its method resolution order."""
    if issubclass(trainer_class, MixedPrecision):
        return trainer_class
    return type(f"{trainer_class.__name__}WithPrecision", (MixedPrecision, trainer_class), {})
