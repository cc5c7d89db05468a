"""recbole-ext: MambaRec and CafeMed as first-class RecBole 1.2.1 models, FAISS retrieval and leaderboards.

Importing the package applies the compatibility shims (``recbole_ext.compat``), installs the registry hooks
(``recbole_ext.registry``) and re-binds RecBole's ``run_recbole`` / ``load_data_and_model`` to
``recbole_ext.quick_start``, all idempotent, so RecBole's own entry points see recbole-ext models afterwards.
Nothing here imports a trainer, a model or the leaderboard: those load when a run needs them.
"""
from recbole_ext.version import __version__  # noqa: F401  (the public version attribute)


def register() -> None:
    """Apply shims and registry hooks (done on import; calling again is harmless)."""
    from recbole_ext import compat, quick_start, registry

    compat.apply_all()
    registry.install_hooks()
    quick_start.install_recbole_entry_points()


register()


def run(*args, **kwargs):
    """See :func:`recbole_ext.quick_start.run`."""
    from recbole_ext.quick_start import run as _run

    return _run(*args, **kwargs)


def resume(*args, **kwargs):
    """See :func:`recbole_ext.quick_start.resume` (an interrupted run, continued in its run directory)."""
    from recbole_ext.quick_start import resume as _resume

    return _resume(*args, **kwargs)


def recommend(*args, **kwargs):
    """See :func:`recbole_ext.serving.recommend.recommend`."""
    from recbole_ext.serving.recommend import recommend as _recommend

    return _recommend(*args, **kwargs)
