"""FREEDOM: A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal Recommendation.

Reference: Xin Zhou, Zhiqi Shen. ACM MM 2023 (arXiv 2211.06924), behaviour of MMRec ``src/models/freedom.py``.
A frozen item-item graph (binary kNN per modality, normalised, mixed ``w * image + (1 - w) * text``) propagates
the item ID embeddings; a LightGCN runs on a user-item graph whose edges are pruned once per epoch by
degree-sensitive sampling (keep ``1 - dropout`` of the edges, drawn without replacement with probability
proportional to ``1/sqrt(d_u d_i)``); evaluation uses the full graph. Loss: BPR + ``reg_weight`` * (BPR of the
users against the projected text features + the same for image).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from recbole_ext.errors import UserError
from recbole_ext.models.layers.graph import graph_product, lightgcn_mean
from recbole_ext.models.layers.knn import KNN_BOUNDS, knn_index_from_config
from recbole_ext.models.layers.losses import bpr_logsigmoid
from recbole_ext.models.multimodal.base import MultimodalRecommender
from recbole_ext.options import DROPOUT, NON_NEGATIVE, UNIT_INTERVAL
from recbole_ext.options import config_value

_DEGREE_EPS = 1e-7


def require_feature_width(model: str, config, reason: str) -> None:
    """``feat_embed_dim`` (unset = ``embedding_size``) must equal ``embedding_size``; else one line naming why."""
    width = config_value(config, "embedding_size", 64)
    if config_value(config, "feat_embed_dim", width) != width:
        raise UserError(f"{model} {reason}: feat_embed_dim must equal embedding_size",
                        fix="leave feat_embed_dim unset or set it to embedding_size")


class FREEDOM(MultimodalRecommender):
    paper = "Zhou & Shen, FREEDOM (ACM MM 2023)"
    year = 2023
    uses = "interactions, image + text features (frozen kNN item graph)"
    parity = "kNN item graph = MMRec's build (`test_multimodal_models_knn.py`)"
    option_bounds = {**KNN_BOUNDS, "n_mm_layers": NON_NEGATIVE, "n_ui_layers": NON_NEGATIVE,
                     "mm_image_weight": UNIT_INTERVAL, "dropout": DROPOUT}
    extra_config_keys = ("feat_embed_dim",)  # MMRec's own key; check_config refuses any value but embedding_size

    @classmethod
    def check_config(cls, config) -> None:
        require_feature_width("FREEDOM", config, "scores users against projected features")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = int(config_value(config, "embedding_size", 64))
        self.feat_embed_dim = int(config_value(config, "feat_embed_dim", self.embedding_size))
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.knn_index = knn_index_from_config(config)
        self.n_mm_layers = int(config_value(config, "n_mm_layers", 1))
        self.n_ui_layers = int(config_value(config, "n_ui_layers", 2))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        self.mm_image_weight = float(config_value(config, "mm_image_weight", 0.1))
        self.edge_dropout = float(config_value(config, "dropout", 0.8))
        self.freeze_features = bool(config_value(config, "freeze_features", False))

        d = self.embedding_size
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_id_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        r, norm_adj, _ = self.interaction_graphs(dataset, binary=True, degree_eps=_DEGREE_EPS)
        self.set_graph("norm_adj", norm_adj)
        coo = r.tocoo()
        # derived from the data at init, so not in the state dict; buffers, so model.to(device) moves them
        edge_index = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64)).to(self.device)
        self.register_buffer("edge_index", edge_index, persistent=False)
        self.register_buffer("edge_weight", self._degree_weights(edge_index), persistent=False)
        self.set_graph("masked_adj", None)
        self._needs_resample = True

        self.set_graph("mm_adj", self.mixed_knn_graph(self.knn_k, "binary_sym", self.mm_image_weight, self.knn_index))
        self.train_feature_tables(not self.freeze_features)
        self.projection = nn.ModuleDict(
            {m: nn.Linear(self.table(m).shape[1], self.feat_embed_dim) for m in self.modalities})

    def _degree_weights(self, edges: torch.Tensor) -> torch.Tensor:
        """``1/sqrt(d_u d_i)`` of each user-item edge with degrees counted over ``edges`` (+1e-7)."""
        ones = torch.ones(edges.shape[1], device=edges.device)
        du = torch.zeros(self.n_users, device=edges.device).index_add_(0, edges[0], ones)
        di = torch.zeros(self.n_items, device=edges.device).index_add_(0, edges[1], ones)
        return (du[edges[0]] + _DEGREE_EPS).pow(-0.5) * (di[edges[1]] + _DEGREE_EPS).pow(-0.5)

    def pre_epoch_processing(self):
        """Degree-sensitive edge pruning, once per epoch (MMRec's trainer hook; also triggered by ``train()``)."""
        self._needs_resample = False
        if self.edge_dropout <= 0.0:
            self.masked_adj = self.norm_adj
            return
        n_keep = int(self.edge_weight.shape[0] * (1.0 - self.edge_dropout))
        keep = self.edge_index[:, torch.multinomial(self.edge_weight, n_keep)]
        values = self._degree_weights(keep)
        rows = torch.cat([keep[0], keep[1] + self.n_users])
        cols = torch.cat([keep[1] + self.n_users, keep[0]])
        n = self.n_users + self.n_items
        graph = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.cat([values, values]), (n, n),
                                        device=values.device)
        self.masked_adj = graph.coalesce().to_sparse_csr().to(self.norm_adj.dtype)

    def encode(self, adj: torch.Tensor):
        h = self.item_id_embedding.weight
        for _ in range(self.n_mm_layers):
            h = graph_product(self.mm_adj, h)
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        out = lightgcn_mean(adj, ego, self.n_ui_layers)
        return out[:self.n_users], out[self.n_users:] + h

    def compute_vectors(self):
        return self.encode(self.norm_adj)

    def calculate_loss(self, interaction):
        if self._needs_resample or self.masked_adj is None:
            self.pre_epoch_processing()
        users, pos, neg = self.batch_ids(interaction)
        user_all, item_all = self.encode(self.masked_adj)
        u = user_all[users]
        loss = bpr_logsigmoid(u, item_all[pos], item_all[neg])
        modal = 0.0
        for m in self.modalities:  # only the batch's rows of the projected table enter the loss
            proj = self.projection[m]
            modal = modal + bpr_logsigmoid(u, proj(self.table(m)[pos]), proj(self.table(m)[neg]))
        return loss + self.reg_weight * modal
