"""Common plumbing of the multimodal models: feature checks, graphs, cached retrieval vectors."""
from __future__ import annotations

import torch
import torch.nn as nn
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType

from recbole_ext.errors import UserError
from recbole_ext.models.layers.graph import interaction_csr, normalised_bipartite, to_torch_sparse
from recbole_ext.models.layers.knn import KnnIndex, knn_graph
from recbole_ext.models.layers.row_update import RowUpdate, linear_with_row_update
from recbole_ext.options import NON_NEGATIVE, check_options

MODALITIES = ("image", "text")

class MultimodalRecommender(GeneralRecommender):
    """Base of the inner-product multimodal models.

    Subclasses implement :meth:`compute_vectors` returning the final ``(users [n_users, d], items [n_items, d])``.
    In eval mode those are computed once and cached (``full_sort_predict`` would otherwise redo the whole
    graph forward for every user batch); ``train()`` and ``load_state_dict`` drop the cache.

    Memory: the raw feature tables are taken over from the dataset (``release_mm_features``: the dataset
    reloads them from disk if asked again), and a model that trains a copy of a table drops its raw buffer
    (:meth:`train_feature_tables`), so one copy of each table is alive, not two.
    """

    input_type = InputType.PAIRWISE
    required_task = "mmrec"  # checked before any data is loaded (recbole_ext.config.build_config)
    # numeric options checked before any data is loaded (recbole_ext.config.check_options, which adds
    # COMMON_BOUNDS: embedding_size, n_layers, ...); subclasses add theirs
    option_bounds = {"reg_weight": NON_NEGATIVE}

    def __init__(self, config, dataset):
        check_options(type(self), config)
        super().__init__(config, dataset)
        self._vector_cache = None
        self._graph_names: list[str] = []
        feats = getattr(dataset, "mm_features", None)
        if not isinstance(feats, dict) or not any(m in feats for m in MODALITIES):
            raise UserError(f"{type(self).__name__} needs multimodal item features but the dataset has none",
                            fix="use a dataset prepared with `run.py prepare mmrec` (task: mmrec)")
        self.modalities = tuple(m for m in MODALITIES if m in feats and feats[m] is not None)
        for m in self.modalities:
            self.register_buffer(f"raw_{m}", self._checked_feature(m, feats[m]), persistent=False)
        release = getattr(dataset, "release_mm_features", None)
        if callable(release):
            release()
        self._row_updates: dict[str, RowUpdate] = {}

    def _checked_feature(self, name: str, value) -> torch.Tensor:
        t = torch.as_tensor(value)
        if t.ndim != 2 or t.shape[0] != self.n_items:
            raise UserError(f"{name} features have shape {tuple(t.shape)}, expected [{self.n_items}, d] "
                            "aligned to the dataset's item ids (row 0 = PAD)", fix="re-run the mmrec preparation")
        if not torch.is_floating_point(t):
            raise UserError(f"{name} features have dtype {t.dtype}, expected float")
        t = t.float()
        if not torch.isfinite(t).all():
            raise UserError(f"{name} features contain NaN or inf", fix="clean the feature .npy file")
        return t

    def raw_feature(self, modality: str) -> torch.Tensor:
        return getattr(self, f"raw_{modality}")

    def table(self, modality: str) -> torch.Tensor:
        """The feature table the forward uses: the trainable copy when there is one, else the raw features."""
        tables = getattr(self, "feature_tables", None)
        return tables[modality] if tables is not None and modality in tables else self.raw_feature(modality)

    def train_feature_tables(self, trainable: bool) -> None:
        """``self.feature_tables``: trainable copies of the raw tables (official MGCN/MambaRec/FREEDOM:
        ``freeze=False``, Q11), whose raw buffers are then dropped; empty when ``trainable`` is False."""
        self.feature_tables = nn.ParameterDict(
            {m: nn.Parameter(self.raw_feature(m).clone()) for m in self.modalities} if trainable else {})
        for m in self.feature_tables:
            del self._buffers[f"raw_{m}"]

    def add_id_embeddings(self, dim: int) -> None:
        """``user_embedding`` and ``item_id_embedding`` tables of width ``dim``, Xavier-uniform (the MMRec models)."""
        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

    # ---- optimiser steps inside backward for big tables (recbole_ext.models.layers.row_update) --------------
    def row_update_tables(self) -> dict[str, nn.Parameter]:
        """Trainable tables that enter the forward through exactly one :meth:`table_linear` call each."""
        return {}

    def attach_row_update(self, name: str, update: RowUpdate) -> None:
        self._row_updates[name] = update

    def table_linear(self, name: str, table: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        """``F.linear(table, weight, bias)``, with the table's optimiser step inside backward when attached."""
        return linear_with_row_update(table, weight, bias, self._row_updates.get(name))

    # ---- graphs ---------------------------------------------------------------------------------------------
    def set_graph(self, name: str, graph: torch.Tensor) -> None:
        """Keep a sparse graph as a plain attribute that still follows ``.to()`` / ``.double()``.

        Sparse CSR tensors cannot be buffers (no state-dict storage); they are derived data rebuilt at init.
        """
        if name not in self._graph_names:
            self._graph_names.append(name)
        setattr(self, name, graph)

    def _apply(self, fn, *args, **kwargs):
        result = super()._apply(fn, *args, **kwargs)
        for name in self._graph_names:
            graph = getattr(self, name)
            if isinstance(graph, dict):
                setattr(self, name, {k: fn(v) for k, v in graph.items()})
            elif graph is not None:
                setattr(self, name, fn(graph))
        self._vector_cache = None
        return result

    def interaction_graphs(self, dataset, binary: bool = False, degree_eps: float = 0.0):
        """``(A_hat, R_hat)`` as torch sparse tensors from the dataset's (training) interactions."""
        r = interaction_csr(dataset.inter_matrix(form="coo"), self.n_users, self.n_items, binary=binary)
        a_hat, r_hat = normalised_bipartite(r, degree_eps)
        return r, to_torch_sparse(a_hat).to(self.device), to_torch_sparse(r_hat).to(self.device)

    def item_knn_graph(self, modality: str, k: int, normalisation: str, index: KnnIndex) -> torch.Tensor:
        return knn_graph(self.raw_feature(modality), k, normalisation, index=index).to_sparse_csr().to(self.device)

    def mixed_knn_graph(self, k: int, normalisation: str, image_weight: float, index: KnnIndex) -> torch.Tensor:
        """``w * S_image + (1 - w) * S_text`` of the modalities' kNN graphs (the one graph with one modality), CSR
        (FREEDOM, DRAGON)."""
        graphs = {m: knn_graph(self.raw_feature(m), k, normalisation, index=index) for m in self.modalities}
        if len(graphs) == 2:
            mixed = (image_weight * graphs["image"] + (1.0 - image_weight) * graphs["text"]).coalesce()
        else:
            mixed = next(iter(graphs.values()))
        return mixed.to_sparse_csr().to(self.device)

    # ---- retrieval contract ---------------------------------------------------------------------------------
    def compute_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _vectors(self):
        if self.training:
            return self.compute_vectors()
        if self._vector_cache is None:
            with torch.no_grad():
                users, items = self.compute_vectors()
            self._vector_cache = (users.detach(), items.detach())
        return self._vector_cache

    def train(self, mode: bool = True):
        self._vector_cache = None
        if mode and not self.training:
            # RecBole's trainer calls train() at the start of every epoch: a model that redraws something per epoch
            # (FREEDOM's pruned graph, DRAGON's padded user graph) does it in its next calculate_loss
            self._needs_resample = True
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._vector_cache = None
        return super().load_state_dict(*args, **kwargs)

    def user_vectors(self, user_ids: torch.Tensor | None = None) -> torch.Tensor:
        users, _ = self._vectors()
        return users if user_ids is None else users[user_ids]

    def item_vectors(self) -> torch.Tensor:
        return self._vectors()[1]

    def predict(self, interaction):
        users, items = self._vectors()
        return (users[interaction[self.USER_ID]] * items[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_predict(self, interaction):
        users, items = self._vectors()
        return (users[interaction[self.USER_ID]] @ items.T).reshape(-1)

    def batch_ids(self, interaction):
        return interaction[self.USER_ID], interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]

