"""MGCN: Multi-View Graph Convolutional Network for Multimedia Recommendation.

Reference: Penghang Yu, Zhiyi Tan, Guanming Lu, Bing-Kun Bao. ACM MM 2023 (arXiv 2308.03588), as implemented in
MMRec (``enoche/MMRec`` ``src/models/mgcn.py``); equations in ``docs/multimodal-models.md`` and spec §1.5-§1.10.

Item ID embeddings are purified by feature gates, propagated on per-modality weighted kNN graphs, lifted to users
with the normalised interaction matrix, fused into common and modality-specific parts, and added to a LightGCN
view of the ID embeddings. Loss: BPR + L2 on the final embeddings + InfoNCE between fused and LightGCN views.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from recbole_ext.errors import UserError
from recbole_ext.models.layers.graph import graph_product, lightgcn_mean
from recbole_ext.models.layers.knn import KNN_BOUNDS, knn_index_from_config
from recbole_ext.models.layers.losses import bpr_logsigmoid, half_squared_l2, info_nce
from recbole_ext.models.layers.recompute import recomputed
from recbole_ext.models.multimodal.base import MultimodalRecommender
from recbole_ext.options import NON_NEGATIVE, POSITIVE
from recbole_ext.options import config_value

REG_DENOMINATORS = ("train_batch_size", "batch")


class MGCN(MultimodalRecommender):
    paper = "Yu et al., MGCN (ACM MM 2023)"
    year = 2023
    uses = "interactions, image + text features (trained feature tables)"
    parity = "kNN item graphs = MMRec's build (`test_multimodal_models_knn.py`)"
    default_n_ui_layers = 2
    option_bounds = {"n_ui_layers": NON_NEGATIVE, **KNN_BOUNDS,
                     "cl_loss": NON_NEGATIVE, "cl_temperature": POSITIVE}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = int(config_value(config, "embedding_size", 64))
        self.n_ui_layers = int(config_value(config, "n_ui_layers", self.default_n_ui_layers))
        self.n_layers = int(config_value(config, "n_layers", 1))
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.knn_index = knn_index_from_config(config)
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        self.cl_weight = float(config_value(config, "cl_loss", 0.01))
        self.cl_temperature = float(config_value(config, "cl_temperature", 0.2))
        self.reg_denominator = config_value(config, "reg_denominator", "train_batch_size")
        if self.reg_denominator not in REG_DENOMINATORS:
            raise UserError(f"reg_denominator={self.reg_denominator!r} is not supported",
                            fix=f"use one of {REG_DENOMINATORS}")
        self.train_batch_size = int(config_value(config, "train_batch_size", 2048))
        self.freeze_features = bool(config_value(config, "freeze_features", False))
        # same function: cheap blocks are run again in backward instead of storing their activations
        self.recompute_activations = bool(config_value(config, "recompute_activations", True))

        d = self.embedding_size
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_id_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        _, norm_adj, r_hat = self.interaction_graphs(dataset)
        self.set_graph("norm_adj", norm_adj)
        self.set_graph("r_hat", r_hat)
        self.set_graph("item_graphs", {m: self.item_knn_graph(m, self.knn_k, "sym", self.knn_index) for m in self.modalities})
        self.train_feature_tables(not self.freeze_features)
        self.build_projections()
        self.purifier_gate = nn.ModuleDict({m: nn.Linear(d, d) for m in self.modalities})
        self.prefer_gate = nn.ModuleDict({m: nn.Linear(d, d) for m in self.modalities})
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))

    # ---- pieces subclasses change ---------------------------------------------------------------------------
    def build_projections(self):
        self.projection = nn.ModuleDict(
            {m: nn.Linear(self.table(m).shape[1], self.embedding_size) for m in self.modalities})

    def modality_features(self, cache: dict) -> dict[str, torch.Tensor]:
        """Per-modality item features ``[n_items, d]`` that drive the purifier gates."""
        return {m: self.table_linear(m, self.table(m), self.projection[m].weight, self.projection[m].bias)
                for m in self.modalities}

    def row_update_tables(self):
        return dict(self.feature_tables.items())  # each enters the forward once, through table_linear

    # ---- forward --------------------------------------------------------------------------------------------
    def encode(self) -> dict:
        cache: dict = {}
        feats = self.modality_features(cache)
        item_ids = self.item_id_embedding.weight
        content = lightgcn_mean(self.norm_adj, torch.cat([self.user_embedding.weight, item_ids]), self.n_ui_layers)
        views = {}
        for m in self.modalities:
            h = item_ids * torch.sigmoid(self.purifier_gate[m](feats[m]))
            for _ in range(self.n_layers):
                h = graph_product(self.item_graphs[m], h)
            views[m] = torch.cat([graph_product(self.r_hat, h), h])
        if len(views) == 1:
            side = next(iter(views.values()))
        else:
            side = recomputed(self.fuse_views, content, *views.values(), enabled=self.recompute_activations)
        final = content + side
        cache.update(users=final[:self.n_users], items=final[self.n_users:], side=side, content=content)
        return cache

    def fuse_views(self, content: torch.Tensor, *views: torch.Tensor) -> torch.Tensor:
        """Attention-weighted common part + preference-gated specific parts of the modality views."""
        scores = torch.cat([self.query_common(v) for v in views], dim=-1)
        weights = torch.softmax(scores, dim=-1)
        common = sum(weights[:, j:j + 1] * v for j, v in enumerate(views))
        specific = sum(torch.sigmoid(self.prefer_gate[m](content)) * (v - common)
                       for m, v in zip(self.modalities, views))
        return (specific + common) / 3

    def compute_vectors(self):
        enc = self.encode()
        return enc["users"], enc["items"]

    def loss_terms(self, interaction) -> tuple[dict[str, torch.Tensor], dict]:
        users, pos, neg = self.batch_ids(interaction)
        enc = self.encode()
        u, p, n = enc["users"][users], enc["items"][pos], enc["items"][neg]
        denominator = self.train_batch_size if self.reg_denominator == "train_batch_size" else len(users)
        side, content, nu = enc["side"], enc["content"], self.n_users
        recompute = self.recompute_activations
        cl = (recomputed(info_nce, side[nu:], content[nu:], pos, self.cl_temperature, enabled=recompute)
              + recomputed(info_nce, side[:nu], content[:nu], users, self.cl_temperature, enabled=recompute))
        terms = {
            "bpr": bpr_logsigmoid(u, p, n),
            "reg": self.reg_weight * half_squared_l2(u, p, n, denominator=denominator),
            "cl": self.cl_weight * cl,
        }
        return terms, enc

    def calculate_loss(self, interaction):
        terms, _ = self.loss_terms(interaction)
        return sum(terms.values())
