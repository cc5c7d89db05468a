"""The on-disk cache of extracted features: one entry per (encoder, inputs), so rebuilding a dataset from the same
texts or images never runs a model again.

An entry's name is a sha256 over the encoder's identity (its info dict: weights hash, package and library versions,
preprocessing) and a digest of the inputs (the texts themselves; for images the hash of every file's bytes), so a
changed input, model or library gets a new entry and an old one is never served for it. Entries live under
``$RECBOLE_EXT_CACHE/features`` (the project's cache root, ``<project>/.cache`` by default; see
:func:`recbole_ext.utils.cache.cache_dir`), are written atomically, and are checked when read (shape, dtype, finite
values and what the kind of entry promises): an entry that fails is recomputed and replaced, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path

from recbole_ext.errors import UserError
from recbole_ext.utils.io import atomic_file, make_dirs

log = logging.getLogger(__name__)

CACHE_FOLDER = "features"


def cache_folder(cache_dir: Path | str | None | bool) -> Path | None:
    """``None``: the project's cache (``$RECBOLE_EXT_CACHE/features``); ``False``: no cache; a path: that folder."""
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        from recbole_ext.utils.cache import cache_dir as project_cache

        return project_cache(CACHE_FOLDER)
    return make_dirs(Path(cache_dir).expanduser(), "feature cache folder")


def weights_sha256(path: Path) -> str:
    """sha256 of an encoder's weights file, hashed once per process and file version (path, size, mtime): every
    encode call and every info call of a build names the encoder by it."""
    st = Path(path).stat()
    return _weights_sha256(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _weights_sha256(path: str, size: int, mtime_ns: int) -> str:
    from recbole_ext.utils.hashing import file_sha256

    return file_sha256(path)


def entry_key(kind: str, identity: dict, inputs_digest: str) -> str:
    """sha256 over the entry kind, the encoder identity (canonical JSON) and the digest of the inputs."""
    h = hashlib.sha256()
    h.update(kind.encode())
    h.update(b"\0")
    h.update(json.dumps(identity, sort_keys=True).encode())
    h.update(b"\0")
    h.update(inputs_digest.encode())
    return h.hexdigest()


def texts_digest(texts) -> str:
    """One sha256 over the texts in order; each is length-prefixed so ``["ab", "c"]`` and ``["a", "bc"]`` differ."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def entry_path(folder: Path, kind: str, key: str, suffix: str) -> Path:
    return folder / f"{kind}-{key}{suffix}"


def load_array(path: Path, rows: int, dim: int | None):
    """The float32 ``[rows, dim]`` matrix of a ``.npy`` entry, or None when it is absent or fails a check."""
    import numpy as np

    if not path.is_file():
        return None
    try:
        matrix = np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated or garbled file: recompute it
        log.warning("ignoring unreadable feature cache entry %s (%s)", path, exc)
        return None
    if (matrix.dtype != np.float32 or matrix.ndim != 2 or matrix.shape[0] != rows
            or (dim is not None and matrix.shape[1] != dim) or not np.isfinite(matrix).all()):
        log.warning("ignoring feature cache entry %s: wrong shape, dtype or non-finite values", path)
        return None
    return matrix


def save_arrays(path: Path, **arrays) -> None:
    """Write one ``.npy`` (a single array) or ``.npz`` entry atomically (a reader never sees half a file). A cache
    that cannot be written (full disk, read-only folder) costs a warning, not the features just computed."""
    import numpy as np

    try:
        with atomic_file(path, "wb") as fh:
            if path.suffix == ".npy":
                (array,) = arrays.values()
                np.save(fh, array, allow_pickle=False)
            else:
                np.savez(fh, **arrays)
    except (OSError, UserError) as exc:
        log.warning("could not write the feature cache entry %s (%s)", path, exc)
