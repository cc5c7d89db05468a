"""On-disk cache for costly derived data (kNN graphs, causal effects), keyed by content hashes."""
from __future__ import annotations

import os
from pathlib import Path

from recbole_ext.utils.paths import PROJECT_ROOT


def cache_dir(*parts: str) -> Path:
    """``$RECBOLE_EXT_CACHE`` or ``<project>/.cache``; sub-folders are created on demand."""
    root = Path(os.environ.get("RECBOLE_EXT_CACHE", PROJECT_ROOT / ".cache")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
