"""recbole-ext: MambaRec and CafeMed as first-class RecBole 1.2.1 models, FAISS retrieval and leaderboards.

Importing the package applies the compatibility shims (``recbole_ext.compat``), installs the registry hooks
(``recbole_ext.registry``) and re-binds RecBole's ``run_recbole`` / ``load_data_and_model`` to
``recbole_ext.quick_start``, all idempotent, so RecBole's own entry points see recbole-ext models afterwards.
Nothing here imports a trainer, a model, the serving layer or the leaderboard: those load when first needed.
"""
from recbole_ext.version import __version__  # noqa: F401  (the public version attribute)


def register() -> None:
    """Apply shims and registry hooks (done on import; calling again is harmless)."""
    from recbole_ext import compat, quick_start, registry

    compat.apply_all()
    registry.install_hooks()
    quick_start.install_recbole_entry_points()


register()


# The public functions are the implementations themselves, not wrappers, so ``help()``, ``inspect.signature`` and
# the docstrings are theirs and cannot drift. ``run`` and ``resume`` are bound now (register() has imported quick_start); the
# serving layer, which ``import recbole_ext`` must not load (tests/test_architecture.py), is imported on the first
# access to ``recbole_ext.recommend`` (a module ``__getattr__``, PEP 562), then kept as a plain attribute.
from recbole_ext.quick_start import resume, run  # noqa: E402  (after register(), which loads the module anyway)

__all__ = ["__version__", "recommend", "register", "resume", "run"]


def __getattr__(name: str):
    if name == "recommend":
        from recbole_ext.serving.recommend import recommend

        globals()["recommend"] = recommend  # later lookups find it without this function
        return recommend
    raise AttributeError(f"module 'recbole_ext' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
