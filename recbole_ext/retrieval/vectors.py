"""Final user and item vectors of inner-product models: the only thing retrieval knows about a model.

A model qualifies when ``full_sort_predict(u) == user_vectors(u) @ item_vectors().T``. recbole-ext models
implement ``user_vectors(user_ids=None)`` / ``item_vectors()`` themselves (row 0 = PAD); RecBole's BPR and
LightGCN get adapters here, which read (BPR) or propagate once (LightGCN) their embeddings without modifying
RecBole. Anything else returns ``None`` and is scored densely by the caller.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FinalVectors:
    """User and item vectors of one model state, computed once (``users[u] . items[i]`` = score of u, i)."""

    users: torch.Tensor  # [n_users, d], row 0 = PAD user
    items: torch.Tensor  # [n_items, d], row 0 = PAD item
    source: str          # "model", "BPR adapter", ...

    def user_rows(self, user_ids) -> torch.Tensor:
        return self.users[torch.as_tensor(user_ids, dtype=torch.long, device=self.users.device)]


def _bpr(model):
    return model.user_embedding.weight, model.item_embedding.weight


def _lightgcn(model):
    # LightGCN.forward propagates the whole graph; doing it once here replaces its per-call restore_* cache.
    return model.forward()


def _builtin_adapters():
    from recbole.model.general_recommender import BPR, LightGCN

    return ((BPR, _bpr, "BPR adapter"), (LightGCN, _lightgcn, "LightGCN adapter"))


def has_vector_contract(model) -> bool:
    return callable(getattr(model, "user_vectors", None)) and callable(getattr(model, "item_vectors", None))


def class_supports_vectors(model_class: type) -> bool:
    """Whether instances of ``model_class`` have final vectors, decided from the class alone (no instance is built,
    so ``run.py list models`` can answer for every model without data)."""
    return has_vector_contract(model_class) or any(model_class is cls for cls, _, _ in _builtin_adapters())


def supports_vectors(model) -> bool:
    return class_supports_vectors(type(model))


@torch.no_grad()
def final_vectors(model) -> FinalVectors | None:
    """The model's final vectors in eval mode, or ``None`` if its score is not a known inner product.

    Only the exact built-in classes are adapted: a subclass may change scoring, so it has to opt in through
    ``user_vectors`` / ``item_vectors``.
    """
    was_training = model.training
    model.eval()
    try:
        if has_vector_contract(model):
            users, items, source = model.user_vectors(None), model.item_vectors(), "model"
        else:
            for cls, adapter, name in _builtin_adapters():
                if type(model) is cls:
                    users, items = adapter(model)
                    source = name
                    break
            else:
                return None
    finally:
        model.train(was_training)
    users, items = users.detach(), items.detach()
    if users.dim() != 2 or items.dim() != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(f"{type(model).__name__} vectors have shapes {tuple(users.shape)} / {tuple(items.shape)}; "
                         "expected [n_users, d] and [n_items, d]")
    return FinalVectors(users.float(), items.float(), source)
