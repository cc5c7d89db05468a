"""Where the project's data and defaults live. Nothing here reads ``../shared``."""
from __future__ import annotations

import os
import re
from pathlib import Path

from recbole_ext.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROJECT_ROOT = PACKAGE_DIR.parent
PROPERTIES_DIR = PROJECT_ROOT / "properties"
RESOURCES_DIR = PACKAGE_DIR / "resources"
BUNDLED_DATA = PROJECT_ROOT / "dataset_atomic"


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as a message shows it: relative to the working directory when it lies below it (``runs/X``), else
    absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def dataset_root() -> Path:
    """Folder holding ``<dataset>/`` atomic folders; ``RECBOLE_EXT_DATA`` overrides the bundled one."""
    env = os.environ.get("RECBOLE_EXT_DATA")
    return Path(env).expanduser().resolve() if env else BUNDLED_DATA


def bundled_elsewhere(name: str) -> str | None:
    """A fix for a dataset that ships with the project but is looked for under another root ($RECBOLE_EXT_DATA)."""
    if dataset_root() != BUNDLED_DATA.resolve() and (BUNDLED_DATA / name).is_dir():
        return (f"'{name}' ships in {BUNDLED_DATA / name}, but RECBOLE_EXT_DATA points the dataset root at "
                f"{dataset_root()}: unset it, or copy that folder there")
    return None


_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_dataset_name(name, example: str) -> str:
    """``name`` if it can be a dataset: it becomes one folder under the dataset root and RecBole's dataset name, so
    letters, digits, '.', '_' and '-' only, starting with a letter or digit (no path separator, no '..', no space)."""
    if not isinstance(name, str) or not _DATASET_NAME.fullmatch(name):
        raise UserError(f"invalid dataset name {name!r}",
                        fix=f"use a plain folder name of letters, digits, '.', '_' and '-', such as {example}")
    return name
