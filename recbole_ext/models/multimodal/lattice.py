"""LATTICE: Mining Latent Structures for Multimedia Recommendation.

Reference: Jinghao Zhang, Yanqiao Zhu, Qiang Liu, Shu Wu, Shuhui Wang, Liang Wang. ACM MM 2021 (arXiv 2104.09036),
behaviour of MMRec ``src/models/lattice.py`` (written here from the paper's and MMRec's equations, not copied).

Per modality ``m`` an **original** item-item graph ``O_m`` is built once from the raw features (cosine top-``k``
with self-loops, weighted, ``s_ij / sqrt(d_i d_j)`` with row sums ``d``: ``layers/knn.py`` "sym", spec §1.7). A
**learned** graph comes from trainable projections ``f_m = W_m x_m + b_m`` of the (trainable, ``freeze=False``)
feature tables: ``K_m`` = cosine top-``k`` of ``f_m`` (weighted, not normalised). With ``w = softmax(modal_weight)``::

    L = sym_norm(sum_m w_m K_m)                 # mixed BEFORE the normalisation (degrees of the mixture)
    O = sum_m w_m O_m                           # mixed AFTER (each O_m is already normalised)
    S = (1 - lambda_coeff) * L + lambda_coeff * O
    h = S^n_layers E_item                       # item ID embeddings on the latent item graph
    users, items = LightGCN(A_ui, [E_user; E_item], n_ui_layers)   # A_ui = D^-1 (A + I), MMRec's get_adj_mat
    items = items + l2_normalise(h)             # row-wise, as MMRec
    loss = BPR + reg_weight * (½‖u‖² + ½‖p‖² + ½‖n‖²) / train_batch_size  (final embeddings, Q3)

Graph schedule (``graph_rebuild: epoch``, official): MMRec rebuilds ``S`` with gradient in the **first batch of
every epoch** (``pre_epoch_processing`` sets ``build_item_graph``); the other batches of the epoch propagate on a
detached copy of it, so the projections, feature tables and ``modal_weight`` receive gradient only from that first
batch. Evaluation (``full_sort_predict``) rebuilds ``S`` from the current tables. ``graph_rebuild: batch`` rebuilds
with gradient in every batch (the paper's per-step reading; costlier, changes results).

Same function, less memory: MMRec builds the learned graph as a dense ``items x items`` similarity, ``topk`` per
row and a dense ``scatter``. Here the top-``k`` indices come from row blocks of the similarity (no gradient, at most
``_SIM_BLOCK_ELEMENTS`` floats alive), and the kept values are recomputed as the dot products of the chosen pairs
with gradient: ``topk``'s backward routes gradient to the selected entries only, so values and gradients are those
of the dense computation (up to float summation order; exact ties between neighbour candidates may resolve
differently). Memory is ``O(items x k)``; no dense ``items x items`` matrix exists at any time.

PAD: RecBole's item 0 (absent in MMRec) has no features; it gets neither neighbours nor in-edges, in both graphs.

``cf_model``: MMRec's LATTICE offers ``ngcf``, ``lightgcn`` and ``mf`` backbones; ``lightgcn`` and ``mf`` are
implemented, ``ngcf`` is refused with a UserError.

Checked against MMRec's ``lattice.py``, ``lattice.yaml`` and ``utils.py`` (read, not copied): ``cf_model:
lightgcn`` is the yaml default; ``n_ui_layers = len(weight_size) = 2``; the per-epoch graph schedule above; the
learned graph mixes the unnormalised kNN matrices before one normalisation while the original graphs are mixed after
theirs; ``modal_weight`` starts at ``[0.5, 0.5]``; the L2 term uses the final (propagated) batch embeddings divided by
``train_batch_size``; the user-item graph of the LightGCN backbone is MMRec's ``get_adj_mat``, ``D^-1 (A + I)``
(self-loops, row-normalised; ``ui_normalisation: row_self_loops``, the default), not LightGCN's symmetric
``D^-1/2 A D^-1/2`` (``ui_normalisation: sym``, which earlier versions of this file used). MMRec also projects the
feature tables in every forward and discards them when the graph is not rebuilt; here they are projected only when
used, which is the same function (with torch >= 2's ``zero_grad(set_to_none=True)`` an unused parameter gets no Adam
step; under torch < 2 the official run would also move those parameters by Adam momentum in the other batches; that
is not reproduced).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_ext.errors import UserError
from recbole_ext.models.layers.graph import (graph_product, interaction_csr, lightgcn_mean,
                                             row_normalised_with_self_loops, to_torch_sparse)
from recbole_ext.models.layers.knn import KNN_BOUNDS, knn_graph, knn_index_from_config
from recbole_ext.models.layers.losses import bpr_logsigmoid, half_squared_l2
from recbole_ext.models.multimodal.base import MultimodalRecommender
from recbole_ext.models.multimodal.mgcn import REG_DENOMINATORS
from recbole_ext.options import AT_LEAST_ONE, NON_NEGATIVE, UNIT_INTERVAL
from recbole_ext.options import config_value

CF_MODELS = ("lightgcn", "mf")
GRAPH_REBUILDS = ("epoch", "batch")
UI_NORMALISATIONS = ("row_self_loops", "sym")
_SIM_BLOCK_ELEMENTS = 1 << 24  # similarity floats alive at once while searching the learned neighbours (64 MB)


def blockwise_cosine_topk(x: torch.Tensor, k: int, block_elements: int | None = None):
    """Top-``k`` cosine neighbours of every row of ``x`` (self included): ``(index [n, k], similarity [n, k])``.

    The same values and gradients as ``topk(x̄ x̄ᵀ)`` of the dense similarity (``x̄`` = L2-normalised rows), in
    ``O(n x k)`` memory: indices from row blocks under ``no_grad``, values as differentiable pair dot products.
    """
    n = x.shape[0]
    k = min(k, n)
    unit = F.normalize(x, p=2, dim=1)
    rows = max(1, (block_elements or _SIM_BLOCK_ELEMENTS) // max(n, 1))
    index = torch.empty(n, k, dtype=torch.long, device=x.device)
    with torch.no_grad():
        detached = unit.detach()
        for start in range(0, n, rows):
            index[start:start + rows] = (detached[start:start + rows] @ detached.T).topk(k, dim=1).indices
    similarity = (unit.unsqueeze(1) * unit[index]).sum(-1)
    return index, similarity


class LATTICE(MultimodalRecommender):
    paper = "Zhang et al., LATTICE (ACM MM 2021)"
    year = 2021
    uses = "interactions, image + text features (learned item graph)"
    parity = "graphs, loss + gradients = float64 transcription of MMRec's code (`test_multimodal_models_lattice.py`)"
    # the graph learner's projections get gradients only in the step that rebuilds the item graph (the first of
    # each epoch by default): a data-parallel run must look for unused parameters after every forward
    distributed_unused_parameters = True
    option_bounds = {"feat_embed_dim": AT_LEAST_ONE, "n_ui_layers": NON_NEGATIVE, **KNN_BOUNDS,
                     "lambda_coeff": UNIT_INTERVAL}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = int(config_value(config, "embedding_size", 64))
        self.feat_embed_dim = int(config_value(config, "feat_embed_dim", 64))
        self.n_ui_layers = int(config_value(config, "n_ui_layers", 2))
        self.n_layers = int(config_value(config, "n_layers", 1))
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.knn_index = knn_index_from_config(config)
        self.lambda_coeff = float(config_value(config, "lambda_coeff", 0.9))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        self.cf_model = config_value(config, "cf_model", "lightgcn")
        self.graph_rebuild = config_value(config, "graph_rebuild", "epoch")
        self.reg_denominator = config_value(config, "reg_denominator", "train_batch_size")
        self.train_batch_size = int(config_value(config, "train_batch_size", 2048))
        self.freeze_features = bool(config_value(config, "freeze_features", False))
        self.ui_normalisation = config_value(config, "ui_normalisation", "row_self_loops")
        if self.ui_normalisation not in UI_NORMALISATIONS:
            raise UserError(f"LATTICE ui_normalisation={self.ui_normalisation!r} is not supported",
                            fix=f"use one of {UI_NORMALISATIONS}")
        if self.cf_model not in CF_MODELS:
            raise UserError(f"LATTICE cf_model={self.cf_model!r} is not supported", fix=f"use one of {CF_MODELS}")
        if self.graph_rebuild not in GRAPH_REBUILDS:
            raise UserError(f"LATTICE graph_rebuild={self.graph_rebuild!r} is not supported",
                            fix=f"use one of {GRAPH_REBUILDS}")
        if self.reg_denominator not in REG_DENOMINATORS:
            raise UserError(f"reg_denominator={self.reg_denominator!r} is not supported",
                            fix=f"use one of {REG_DENOMINATORS}")

        d = self.embedding_size
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_id_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        if self.ui_normalisation == "row_self_loops":  # MMRec's get_adj_mat: D^-1 (A + I)
            r = interaction_csr(dataset.inter_matrix(form="coo"), self.n_users, self.n_items)
            norm_adj = to_torch_sparse(row_normalised_with_self_loops(r)).to(self.device)
        else:  # LightGCN's D^-1/2 A D^-1/2, as MGCN and FREEDOM
            _, norm_adj, _ = self.interaction_graphs(dataset)
        self.set_graph("norm_adj", norm_adj)
        self.set_graph("original_graphs",
                       {m: knn_graph(self.raw_feature(m), self.knn_k, "sym", index=self.knn_index).to(self.device) for m in self.modalities})
        self.train_feature_tables(not self.freeze_features)
        self.projection = nn.ModuleDict(
            {m: nn.Linear(self.table(m).shape[1], self.feat_embed_dim) for m in self.modalities})
        self.modal_weight = nn.Parameter(torch.full((len(self.modalities),), 0.5))
        self.set_graph("item_graph", None)  # the epoch's detached S (graph_rebuild: epoch)
        self._rebuild_graph = True

    # ---- the latent item-item graph -------------------------------------------------------------------------
    def pre_epoch_processing(self):
        """MMRec's trainer hook: the first batch of the epoch rebuilds the learned graph with gradient."""
        self._rebuild_graph = True

    def item_graph_entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices [2, nnz], values [nnz])`` of ``S`` (uncoalesced: duplicate entries add), differentiable."""
        weights = torch.softmax(self.modal_weight, dim=0)
        rows, cols, values = [], [], []
        for j, m in enumerate(self.modalities):
            feats = self.projection[m](self.table(m)[1:])  # PAD row 0 takes no part
            index, similarity = blockwise_cosine_topk(feats, self.knn_k)
            rows.append(torch.arange(1, self.n_items, device=index.device).repeat_interleave(index.shape[1]))
            cols.append(index.reshape(-1) + 1)
            values.append(weights[j] * similarity.reshape(-1))
        rows, cols, values = torch.cat(rows), torch.cat(cols), torch.cat(values)
        degree = torch.zeros(self.n_items, dtype=values.dtype, device=values.device).index_add(0, rows, values)
        # MMRec: d^-1/2 with inf -> 0; a non-positive row sum (possible only with negative cosines) -> 0 as in knn.py
        # (the masked branch is fed 1, not 0, so no inf/NaN appears even in a gradient that is then discarded)
        positive = degree > 0
        inv_sqrt = torch.where(positive, torch.where(positive, degree, torch.ones_like(degree)).rsqrt(),
                               torch.zeros_like(degree))
        learned = values * inv_sqrt[rows] * inv_sqrt[cols]
        indices = [torch.stack([rows, cols])]
        entries = [(1.0 - self.lambda_coeff) * learned]
        for j, m in enumerate(self.modalities):
            original = self.original_graphs[m]
            indices.append(original.indices())
            entries.append(self.lambda_coeff * weights[j] * original.values())
        return torch.cat(indices, dim=1), torch.cat(entries)

    def build_item_graph(self) -> torch.Tensor:
        indices, values = self.item_graph_entries()
        return torch.sparse_coo_tensor(indices, values, (self.n_items, self.n_items), check_invariants=False,
                                       device=values.device)

    # ---- forward --------------------------------------------------------------------------------------------
    def encode(self, item_graph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.item_id_embedding.weight
        for _ in range(self.n_layers):
            h = graph_product(item_graph, h, torch.sparse.mm)
        if self.cf_model == "lightgcn":
            ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
            out = lightgcn_mean(self.norm_adj, ego, self.n_ui_layers)
            users, items = out[:self.n_users], out[self.n_users:]
        else:
            users, items = self.user_embedding.weight, self.item_id_embedding.weight
        return users, items + F.normalize(h, p=2, dim=1)

    def compute_vectors(self):
        # MMRec's full_sort_predict rebuilds the latent graph from the current tables
        return self.encode(self.build_item_graph())

    def load_state_dict(self, *args, **kwargs):
        self._rebuild_graph = True  # the detached graph of the epoch belongs to the old weights
        return super().load_state_dict(*args, **kwargs)

    def training_item_graph(self) -> torch.Tensor:
        if self.graph_rebuild == "batch":
            return self.build_item_graph()
        if self._rebuild_graph or self.item_graph is None:
            self._rebuild_graph = False
            graph = self.build_item_graph()
            with torch.no_grad():
                self.item_graph = graph.detach().coalesce().to_sparse_csr()
            return graph
        return self.item_graph

    def calculate_loss(self, interaction):
        users, pos, neg = self.batch_ids(interaction)
        user_all, item_all = self.encode(self.training_item_graph())
        u, p, n = user_all[users], item_all[pos], item_all[neg]
        denominator = self.train_batch_size if self.reg_denominator == "train_batch_size" else len(users)
        return bpr_logsigmoid(u, p, n) + self.reg_weight * half_squared_l2(u, p, n, denominator=denominator)
