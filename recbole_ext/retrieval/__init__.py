"""Top-K retrieval over a model's final user/item vectors with FAISS: the index, the vectors, the evaluation hook.

Public names (imported lazily so ``import recbole_ext`` stays light): ``ItemIndex``, ``History``,
``FaissEvalMixin``, ``with_faiss_eval``, ``final_vectors``. Serving a trained run (``recommend``) builds on this
library in ``recbole_ext.serving``.
"""
_EXPORTS = {
    "ItemIndex": "recbole_ext.retrieval.index",
    "History": "recbole_ext.retrieval.index",
    "FaissEvalMixin": "recbole_ext.retrieval.evaluation",
    "with_faiss_eval": "recbole_ext.retrieval.evaluation",
    "final_vectors": "recbole_ext.retrieval.vectors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'recbole_ext.retrieval' has no attribute {name!r}")
