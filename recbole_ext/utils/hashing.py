"""Content hashes used as cache keys and provenance records."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def files_sha256(paths: Iterable[str | os.PathLike]) -> str:
    """One hash over several files, order-independent, including each file's name."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def dir_sha256(folder: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> str:
    """Hash of every regular file directly under ``folder`` (optionally only some suffixes)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if suffixes:
        files = [p for p in files if p.name.endswith(suffixes)]
    return files_sha256(files)


def array_sha256(*arrays) -> str:
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        try:  # the bytes of a.tobytes() without copying them (a feature table can be gigabytes)
            data = memoryview(a).cast("B") if a.size else b""
        except (TypeError, ValueError):  # dtypes without a buffer format (datetime64)
            data = a.tobytes()
        h.update(data)
    return h.hexdigest()


def json_sha256(value) -> str:
    """sha256 of ``value`` as JSON with sorted keys: the content key of a derived-cache entry described by a dict
    (the bytes of ``json.dumps(value, sort_keys=True)``, so existing entries keep their names)."""
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
