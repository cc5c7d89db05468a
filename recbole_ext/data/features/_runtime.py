"""What both encoders need around a model: the device check, the progress-bar rule and the offline guard."""
from __future__ import annotations

import contextlib
import os
import sys

from recbole_ext.errors import UserError
from recbole_ext.utils.console import is_terminal

_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def checked_device(device: str):
    """``torch.device(device)``, refused in one line when it is malformed or its CUDA is not available."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"unknown device {device!r}", fix="use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but this torch build sees no CUDA GPU", fix="use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)", fix="use cuda:0")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not supported by the feature extractors", fix="use cpu or cuda")
    return dev


def show_progress(progress: bool | None) -> bool:
    """``None``: a bar only when stderr is a terminal (the project's console rule); otherwise as given."""
    return is_terminal(sys.stderr) if progress is None else bool(progress)


@contextlib.contextmanager
def hub_offline():
    """Hugging Face libraries may not reach the network while a bundled model loads: both offline variables are
    set for the block and restored afterwards. huggingface_hub reads them once, at its import, so when it was
    imported earlier without them its module constant is switched for the block too, and when it is first imported
    inside the block its constant is set afterwards to what the restored environment says."""
    saved = {name: os.environ.get(name) for name in _OFFLINE_VARIABLES}
    os.environ.update({name: "1" for name in _OFFLINE_VARIABLES})
    constants = sys.modules.get("huggingface_hub.constants")
    saved_constant = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_constant
        elif "huggingface_hub.constants" in sys.modules:
            sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = any(
                (os.environ.get(name) or "").upper() in ("1", "ON", "YES", "TRUE") for name in _OFFLINE_VARIABLES)
