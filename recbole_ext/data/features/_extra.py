"""The optional ``features`` extra: its packages are imported only when an encoder runs, and a missing one is a
one-line user error naming the install command, not an ImportError traceback."""
from __future__ import annotations

import importlib
from importlib import metadata

from recbole_ext.errors import UserError

INSTALL_FIX = 'pip install -e ".[features]"'


def missing_extra(purpose: str, package: str) -> UserError:
    return UserError(f"{purpose} needs the optional feature extractors ({package} is not installed)", fix=INSTALL_FIX)


def import_extra(module: str, purpose: str, package: str | None = None):
    """``importlib.import_module(module)``; missing, a :class:`UserError` naming ``pip install -e ".[features]"``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra(purpose, package or module) from None


def extra_version(package: str, purpose: str) -> str:
    """The installed version of distribution ``package`` (read from its metadata: nothing is imported)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        raise missing_extra(purpose, package) from None
