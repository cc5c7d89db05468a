"""Checkpoints as weights + plain data, loaded with ``torch.load(weights_only=True)`` only.

A checkpoint is one ``torch.save`` of a dict holding tensors and plain Python data (str, int, float, bool, None,
lists and dicts of those): the model's ``state_dict``, the optimizer state, the *external* configuration the run
was started with (enough to rebuild the exact ``Config`` through the same YAML defaults), the resolved final
configuration (for the record), and the dataset's id maps (external tokens in internal-id order). No Python
object is pickled, so loading can never execute code; a file that needs more than that is refused.
"""
from __future__ import annotations

import enum
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbole_ext.errors import UserError
from recbole_ext.utils.io import atomic_file
from recbole_ext.version import __version__

FORMAT = "recbole-ext/checkpoint/1"

# Keys RecBole derives inside Config from other keys; replaying them as external config would freeze stale values.
_DERIVED_KEYS = {"MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "model_class", "single_spec",
                 "local_rank", "valid_metric_bigger", "eval_neg_sample_args", "train_neg_sample_args_resolved"}


def to_plain(obj: Any) -> Any:
    """Convert config values to JSON-compatible plain data (enums by name, numpy scalars to Python)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return obj.name
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, torch.device):
        return str(obj)
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    return str(obj)


def external_config(config) -> dict:
    """What the user (and our CLI) passed, which with the YAML defaults rebuilds the same Config."""
    ext = {k: v for k, v in config.external_config_dict.items() if k not in _DERIVED_KEYS}
    return to_plain(ext)


def id_maps_of(dataset) -> dict[str, list[str]]:
    """External tokens in internal-id order for the user and item fields (index 0 is '[PAD]')."""
    maps = {}
    field2id_token = getattr(dataset, "field2id_token", None) or {}
    for role, attr in (("user", "uid_field"), ("item", "iid_field")):
        field = getattr(dataset, attr, None)
        if field and field in field2id_token:
            maps[role] = [str(t) for t in field2id_token[field]]
    extra = getattr(dataset, "ext_id_maps", None)  # tasks with other vocabularies (diagnoses, medications...)
    if callable(extra):
        maps.update({k: [str(t) for t in v] for k, v in extra().items()})
    return maps


def plain_other_parameter(params: dict | None) -> dict | None:
    """RecBole's ``other_parameter`` (tensors, and for ItemKNN / EASE / SLIMElastic / AsymKNN scipy sparse
    matrices and numpy arrays) as tensors and plain data, so that a ``weights_only`` load can read it."""
    if params is None:
        return None
    import scipy.sparse as sp

    plain = {}
    for key, value in params.items():
        if sp.issparse(value):
            csr = sp.csr_matrix(value)
            value = {"__sparse__": value.format, "shape": [int(n) for n in csr.shape],
                     **{part: torch.from_numpy(np.ascontiguousarray(getattr(csr, part)))
                        for part in ("data", "indices", "indptr")}}
        elif isinstance(value, np.ndarray):
            value = {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
        plain[key] = value
    return plain


def other_parameter_of(state: dict) -> dict | None:
    """A checkpoint's ``other_parameter`` as the model stored it (inverse of :func:`plain_other_parameter`)."""
    params = state.get("other_parameter")
    if params is None:
        return None
    import scipy.sparse as sp

    restored = {}
    for key, value in params.items():
        if isinstance(value, dict) and "__sparse__" in value:
            parts = [value[part].numpy() for part in ("data", "indices", "indptr")]
            value = sp.csr_matrix(tuple(parts), shape=tuple(value["shape"])).asformat(value["__sparse__"])
        elif isinstance(value, dict) and "__ndarray__" in value:
            value = value["__ndarray__"].numpy()
        restored[key] = value
    return restored


def save_trainer_state(trainer, path: str | os.PathLike, epoch: int, extra: dict | None = None) -> None:
    """The trainer's model and optimizer with the run's config and id maps; ``extra``: more entries (tensors and
    plain data), such as the resume state of ``last.pth``."""
    config = trainer.config
    state = {
        "format": FORMAT,
        "model": str(config["model"]),
        "dataset": str(config["dataset"]),
        "external_config": external_config(config),
        "final_config": to_plain(config.final_config_dict),
        "epoch": int(epoch),
        "cur_step": int(getattr(trainer, "cur_step", 0)),
        "best_valid_score": float(trainer.best_valid_score),
        "state_dict": trainer.model.state_dict(),
        "other_parameter": plain_other_parameter(trainer.model.other_parameter()),
        "optimizer": trainer.optimizer.state_dict() if getattr(trainer, "optimizer", None) else None,
        "id_maps": getattr(trainer, "ext_id_maps", None),
        "recbole_ext_version": _version(),
        **(extra or {}),
    }
    with atomic_file(path, "wb") as fh:
        torch.save(state, fh)


def check_id_maps(state: dict, current: dict[str, list[str]]) -> None:
    """The dataset's id maps now (``id_maps_of``) must equal those a checkpoint was trained with: a changed
    dataset is an error, not silent garbage."""
    for role, tokens in (state.get("id_maps") or {}).items():
        if current.get(role) != tokens:
            raise UserError(f"the {role} ids of dataset '{state['dataset']}' differ from those the checkpoint was "
                            f"trained on", fix="use the dataset files the model was trained with")


def _version() -> str:
    return __version__


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Read a recbole-ext checkpoint safely; every failure is a one-line ``UserError``.

    ``mmap=True`` maps the file instead of reading it: only the tensors used are read. Loading the selected
    weights for evaluation reads the model, not the optimiser's moments (twice the model's size with Adam: 1.3 GB
    read for 0.4 GB of weights on Clothing-shaped data).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist", fix="pass the .pth file from a run directory")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"refusing to load {path}: it contains pickled Python objects, which could run code on loading "
            f"({first[:160]})",
            fix="use a checkpoint written by recbole-ext (weights + plain data); RecBole's own pickled checkpoints "
                "must be re-trained with recbole-ext",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200] if str(exc) else exc!r}",
                        fix="the file is damaged or not a torch checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a recbole-ext checkpoint (format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})",
                        fix="pass a .pth file written by `python run.py` or recbole_ext.quick_start.run")
    for key in ("model", "dataset", "external_config", "state_dict"):
        if key not in state:
            raise UserError(f"checkpoint {path} lacks '{key}'", fix="the file is damaged; re-train the model")
    return state


def load_weights(model, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> None:
    """Load only the weights (``state_dict`` and RecBole's ``other_parameter``) of a checkpoint into ``model``."""
    state = load(path, map_location=map_location, mmap=True)
    model.load_state_dict(state["state_dict"])
    model.load_other_parameter(other_parameter_of(state))
