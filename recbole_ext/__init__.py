"""recbole-ext: MambaRec and CafeMed as first-class RecBole 1.2.1 models, FAISS retrieval and leaderboards.

Importing the package applies the compatibility shims (``recbole_ext.compat``) and installs the registry hooks
(``recbole_ext.registry``), both idempotent, so RecBole's own entry points see recbole-ext models afterwards.
"""
__version__ = "0.1.0"


def register() -> None:
    """Apply shims and registry hooks (done on import; calling again is harmless)."""
    from recbole_ext import compat, registry

    compat.apply_all()
    registry.install_hooks()


register()


def run(*args, **kwargs):
    """See :func:`recbole_ext.quick_start.run`."""
    from recbole_ext.quick_start import run as _run

    return _run(*args, **kwargs)


def recommend(*args, **kwargs):
    """See :func:`recbole_ext.retrieval.recommend`."""
    from recbole_ext.retrieval import recommend as _recommend

    return _recommend(*args, **kwargs)
