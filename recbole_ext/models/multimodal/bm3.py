"""BM3: Bootstrap Latent Representations for Multi-modal Recommendation.

Reference: Xin Zhou, Hongyu Zhou, Yong Liu, Zhiwei Zeng, Chunyan Miao, Pengwei Wang, Yuan You, Feijun Jiang.
WWW 2023 (arXiv 2207.05969), behaviour of MMRec ``src/models/bm3.py`` (written here from the paper's and MMRec's
equations, not copied).

No negative items and no augmentation graph: the "target" view of every representation is a dropout-corrupted,
stop-gradient copy of the "online" one, and a shared linear predictor ``g(x) = W x + b`` maps online views onto
targets. With ``A`` = LightGCN's ``D^-1/2 A D^-1/2`` (binary edges, ``1e-7`` added to every degree, as MMRec)::

    [U; I_g] = mean_{l=0..n_layers} A^l [E_user; E_item]        # LightGCN layer mean
    I = I_g + E_item                                             # the ID embeddings added once more
    F_m = W_m X_m + b_m                                          # features projected to the ID width, m in {t, v}
    targets: u~ = sg(dropout(U)), i~ = sg(dropout(I)), f~_m = sg(dropout(F_m))   (one mask per table row and step)
    L_rec = (1 - mean_b cos(g(U)[u_b], i~[i_b])) + (1 - mean_b cos(g(I)[i_b], u~[u_b]))
    L_align = sum_m (1 - mean_b cos(g(F_m)[i_b], i~[i_b])) + (1 - mean_b cos(g(F_m)[i_b], f~_m[i_b]))
    L_reg = (||U||_F + ||I||_F) / |items|                        # Frobenius norms (not squared) of the whole tables
    loss = L_rec + reg_weight * L_reg + cl_weight * L_align
    score(u, i) = <g(U)_u, g(I)_i>

A batch is MMRec's ``use_neg_sampling: False`` batch: positive (user, item) pairs only (``input_type`` POINTWISE,
``train_neg_sample_args: None``). The item target ``i~`` is one draw, shared by ``L_rec`` and both modalities'
alignment terms, and a row that occurs twice in a batch has one mask, as in MMRec, which drops out whole tables and
then gathers the batch rows.

PAD: RecBole's user 0 and item 0 (absent in MMRec) take no part: they are isolated in the graph, the norms of
``L_reg`` skip them and divide by the number of real items, and the dropout masks are drawn for rows ``1..`` only,
so a seeded draw is the one MMRec makes on the same data without PAD (the order of draws is MMRec's: users, items,
text, image). Only the batch's rows of the feature projections are computed (MMRec projects whole tables in every
step and gathers); the function and the random stream are the same.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.utils import InputType

from recbole_ext.errors import UserError
from recbole_ext.models.layers.graph import lightgcn_mean
from recbole_ext.models.multimodal.base import MultimodalRecommender
from recbole_ext.options import DROPOUT, NON_NEGATIVE
from recbole_ext.options import config_value

_DEGREE_EPS = 1e-7
_DRAW_ORDER = ("text", "image")  # MMRec drops out the text target before the image one


def _one_minus_mean_cosine(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(online, target, dim=-1).mean()


class BM3(MultimodalRecommender):
    paper = "Zhou et al., BM3 (WWW 2023)"
    year = 2023
    uses = "interactions, image + text features (self-supervised, positives only)"
    parity = "loss + every gradient = float64 transcription of MMRec's code (`test_multimodal_models_bm3.py`)"
    input_type = InputType.POINTWISE  # positive pairs only: no negative is sampled (MMRec use_neg_sampling: False)
    option_bounds = {"n_layers": NON_NEGATIVE, "dropout": DROPOUT, "cl_weight": NON_NEGATIVE}

    @classmethod
    def check_config(cls, config) -> None:
        # a pointwise model given negatives would get them as extra (user, item) rows: positives they are not
        negatives = config_value(config, "train_neg_sample_args")
        if isinstance(negatives, dict) and negatives.get("distribution") not in (None, "none"):
            raise UserError("BM3 trains on positive pairs only, but train_neg_sample_args asks for negatives",
                            fix="leave train_neg_sample_args unset (BM3.yaml sets it to None)")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = int(config_value(config, "embedding_size", 64))
        self.n_layers = int(config_value(config, "n_layers", 1))
        self.reg_weight = float(config_value(config, "reg_weight", 0.1))
        self.cl_weight = float(config_value(config, "cl_weight", 2.0))
        self.dropout = float(config_value(config, "dropout", 0.3))
        self.freeze_features = bool(config_value(config, "freeze_features", False))

        self.add_id_embeddings(self.embedding_size)
        self.predictor = self._xavier_normal_linear(self.embedding_size)
        self.set_graph("norm_adj", self.interaction_graphs(dataset, binary=True, degree_eps=_DEGREE_EPS)[1])
        self.train_feature_tables(not self.freeze_features)
        self.projection = nn.ModuleDict(
            {m: self._xavier_normal_linear(self.table(m).shape[1]) for m in self.modalities})

    def _xavier_normal_linear(self, width_in: int) -> nn.Linear:
        """``Linear(width_in, embedding_size)``: Xavier-normal weight, PyTorch's default bias (MMRec)."""
        layer = nn.Linear(width_in, self.embedding_size)
        nn.init.xavier_normal_(layer.weight)
        return layer

    def encode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The online ID representations ``(U, I)`` before the predictor."""
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        out = lightgcn_mean(self.norm_adj, ego, self.n_layers)
        return out[:self.n_users], out[self.n_users:] + self.item_id_embedding.weight

    def compute_vectors(self):
        users, items = self.encode()
        return self.predictor(users), self.predictor(items)

    def _dropout_mask(self, table: torch.Tensor) -> torch.Tensor | None:
        """``dropout(1)`` over the rows ``1..`` of ``table`` (0 or ``1/(1-p)``), padded with a PAD row; None at p=0.

        ``x[rows] * mask[rows]`` equals ``F.dropout(x[1:])[rows - 1]`` bit for bit with the same random draws.
        """
        if self.dropout <= 0.0:
            return None
        ones = torch.ones(table.shape[0] - 1, table.shape[1], dtype=table.dtype, device=table.device)
        return F.pad(F.dropout(ones, self.dropout, training=True), (0, 0, 1, 0))

    @staticmethod
    def _target(table: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        picked = table.detach()[rows]
        return picked if mask is None else picked * mask[rows]

    def calculate_loss(self, interaction):
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        user_all, item_all = self.encode()
        with torch.no_grad():
            user_mask, item_mask = self._dropout_mask(user_all), self._dropout_mask(item_all)
            feature_masks = {m: self._dropout_mask(item_all) for m in _DRAW_ORDER if m in self.modalities}
        user_target = self._target(user_all, users, user_mask)
        item_target = self._target(item_all, items, item_mask)
        loss = (_one_minus_mean_cosine(self.predictor(user_all[users]), item_target)
                + _one_minus_mean_cosine(self.predictor(item_all[items]), user_target))
        reg = (user_all[1:].norm() + item_all[1:].norm()) / (self.n_items - 1)
        align = 0.0
        for m in self.modalities:
            projected = self.projection[m](self.table(m)[items])
            online = self.predictor(projected)
            feature_target = projected.detach() if feature_masks[m] is None else \
                projected.detach() * feature_masks[m][items]
            align = align + _one_minus_mean_cosine(online, item_target) + \
                _one_minus_mean_cosine(online, feature_target)
        return loss + self.reg_weight * reg + self.cl_weight * align
