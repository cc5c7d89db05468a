"""Where the project's data and defaults live. Nothing here reads ``../shared``."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROJECT_ROOT = PACKAGE_DIR.parent
PROPERTIES_DIR = PROJECT_ROOT / "properties"
RESOURCES_DIR = PACKAGE_DIR / "resources"


def dataset_root() -> Path:
    """Folder holding ``<dataset>/`` atomic folders; ``RECBOLE_EXT_DATA`` overrides the bundled one."""
    env = os.environ.get("RECBOLE_EXT_DATA")
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "dataset_atomic"
