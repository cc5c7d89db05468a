"""The package version, in a module of its own so that any layer can read it without importing the package."""
from __future__ import annotations

__version__ = "0.1.0"

# the libraries whose versions change results or behaviour, as their distributions are named
LIBRARIES = ("recbole", "torch", "numpy", "scipy", "pandas", "faiss-cpu")


def library_versions() -> dict[str, str | None]:
    """Installed versions of ``LIBRARIES`` (None when one is missing), read from package metadata: nothing is
    imported, so this is instant even where torch takes seconds to import."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def version_line() -> str:
    """``recbole-ext 0.1.0 (recbole 1.2.1, torch 2.13.0, ..., Python 3.11.7)``, for ``python run.py --version``."""
    import platform

    libraries = ", ".join(f"{name} {v}" for name, v in library_versions().items() if v)
    return f"recbole-ext {__version__} ({libraries}, Python {platform.python_version()})"
