"""MENTOR: Multi-level Self-supervised Learning for Multimodal Recommendation.

Reference: Jinfeng Xu, Zheyu Chen, Shuo Yang, Jinze Li, Hewei Wang, Edith C.-H. Ngai. AAAI 2025 (arXiv 2402.19407),
behaviour of the official code github.com/Jinfeng-Xu/MENTOR ``src/models/mentor.py`` and
``src/configs/model/MENTOR.yaml`` (written here from their equations, not copied).

Seven graph encoders of one shape, each with its own user preference table ``P`` and two-layer feature MLP.
With ``Â = D^-1/2 A D^-1/2`` the user-item graph (binary, no self-loops, no degree epsilon) and ``X`` a frozen
feature table (image, text) or the trainable item ID table (the "guide")::

    x = rownorm([P; W2 leaky_relu(W1 X + b1) + b2]),  h_0 = x,  h_l = Â h_{l-1} (+ 0.1 sign(h_l) rownorm(noise)),
    enc(X) = x + h_1 + ... + h_{n_layers}     (noise ~ U[0,1) per entry, only in the perturbed encoders n1, n2)

    v, t, g = enc_image(X_v), enc_text(X_t), enc_id(E_id);  v', t' and v'', t'' from the perturbed encoders
    users: r_u = [a_u1 v_u, a_u2 t_u]   (a_u = a trainable per-user pair, initialised as a softmax)
    items: r_i = [v_i, t_i] + S^n_mm_layers [v_i, t_i]   (S = FREEDOM's frozen kNN item graph, image/text mixed)
    guide / v / t views: [g, g], [v, v], [t, t] (users), the same plus S^L for items; noisy views as r.

    loss = -mean log2 sigmoid(<r_u, r_p> - <r_u, r_n>)
           + reg_weight (mean(P_v[u]^2) + mean(P_t[u]^2) + mean(a^2))
           + align_weight * sum over the 6 pairs of {r, guide, v, t} of |var(Y) - var(Z)| + |mean(Y) - mean(Z)|
           + mask_weight_f (2 - mean cos(dropout(r_u), mlp(r_u)) - mean cos(dropout(r_i), mlp(r_i)))  (no gradient)
           + mask_weight_g (InfoNCE_temp(r'_users, r''_users) + InfoNCE_temp(r'_items, r''_items))
    score(u, i) = <r_u, r_i>

var/mean are over every entry of the whole [users; items] table (torch.var: unbiased). The InfoNCE terms take all
users and all items (the official code contrasts whole tables, not the batch). The feature-level mask term is
computed under ``no_grad`` in the official code, so it adds to the loss value and nothing to any gradient; the
``mlp`` it uses is never trained. Randomness, in the official order: the perturbation noise of the image then text
encoder of view n1, then of view n2 (two draws each, one per layer), then the user then item dropout masks.

PAD (RecBole's user 0 and item 0; MMRec has none) has no edges, draws no noise and no dropout, and takes no part
in the table statistics, the contrasts or ``mean(a^2)``, so a seeded draw is the one the official code makes on the
same data without PAD. Evaluation runs the unperturbed encoders on the current weights (the official code scores
with the tables of the last training batch, one optimiser step old).
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_ext.errors import UserError
from recbole_ext.models.layers.graph import graph_product
from recbole_ext.models.layers.knn import KNN_BOUNDS, knn_index_from_config
from recbole_ext.models.layers.losses import bpr_log2sigmoid
from recbole_ext.models.multimodal.base import MODALITIES, MultimodalRecommender
from recbole_ext.options import AT_LEAST_ONE, DROPOUT, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, config_value

NOISE_SCALE = 0.1  # official: fixed perturbation magnitude
_NOISY_ORDER = (("n1", "image"), ("n1", "text"), ("n2", "image"), ("n2", "text"))  # official order of noise draws


class _Encoder(nn.Module):
    """One MENTOR graph encoder: a user preference table and a two-layer MLP on an item table."""

    def __init__(self, n_users: int, width_in: int, dim: int, device):
        super().__init__()
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, dim, device=device)))
        self.mlp_in = nn.Linear(width_in, 4 * dim, device=device)
        self.mlp_out = nn.Linear(4 * dim, dim, device=device)

    def ego(self, items: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.cat([self.preference, self.mlp_out(F.leaky_relu(self.mlp_in(items)))]))


def info_nce_full(view1: torch.Tensor, view2: torch.Tensor, temp: float) -> torch.Tensor:
    """``mean_i -log(exp(<a_i, b_i>/τ) / sum_j exp(<a_i, b_j>/τ))`` of the row-normalised views (all rows)."""
    a, b = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    logits = a @ b.T / temp
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def _stats(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.var(table), torch.mean(table)


class MENTOR(MultimodalRecommender):
    paper = "Xu et al., MENTOR (AAAI 2025)"
    year = 2025
    uses = "interactions, image + text features (perturbed views, frozen kNN item graph)"
    parity = "loss + every gradient = float64 transcription of the official code (`test_multimodal_models_mentor.py`)"
    option_bounds = {**KNN_BOUNDS, "n_layers": NON_NEGATIVE, "n_mm_layers": NON_NEGATIVE,
                     "mm_image_weight": UNIT_INTERVAL, "dropout": DROPOUT, "mask_weight_f": NON_NEGATIVE,
                     "mask_weight_g": NON_NEGATIVE, "align_weight": NON_NEGATIVE, "temp": POSITIVE,
                     "embedding_size": AT_LEAST_ONE}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        missing = [m for m in MODALITIES if m not in self.modalities]
        if missing:
            raise UserError(f"MENTOR needs both image and text features; the dataset has no {missing[0]} features",
                            fix="use a dataset with both feature tables (the official model has no one-modality form)")
        self.embedding_size = int(config_value(config, "embedding_size", 64))
        self.n_layers = int(config_value(config, "n_layers", 2))
        self.n_mm_layers = int(config_value(config, "n_mm_layers", 1))
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.knn_index = knn_index_from_config(config)
        self.mm_image_weight = float(config_value(config, "mm_image_weight", 0.1))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-3))
        self.dropout = float(config_value(config, "dropout", 0.5))
        self.mask_weight_f = float(config_value(config, "mask_weight_f", 1.5))
        self.mask_weight_g = float(config_value(config, "mask_weight_g", 1e-4))
        self.align_weight = float(config_value(config, "align_weight", 0.1))
        self.temp = float(config_value(config, "temp", 0.2))

        d, dev = self.embedding_size, self.device
        self.set_graph("norm_adj", self.interaction_graphs(dataset, binary=True)[1])
        self.set_graph("mm_adj", self.mixed_knn_graph(self.knn_k, "binary_sym", self.mm_image_weight, self.knn_index))

        self.id_feat = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_items, d, device=dev)))
        widths = {m: self.raw_feature(m).shape[1] for m in self.modalities}
        self.encoders = nn.ModuleDict({"id": _Encoder(self.n_users, d, d, dev)})
        for view in ("main", "n1", "n2"):
            for m in self.modalities:
                self.encoders[f"{view}_{m}"] = _Encoder(self.n_users, widths[m], d, dev)
        self.user_weight = nn.Parameter(torch.softmax(
            nn.init.xavier_normal_(torch.empty(self.n_users, 2, 1, device=dev)), dim=1).squeeze(-1))
        self.mask_mlp = nn.Linear(2 * d, 2 * d, device=dev)
        self.mask_mlp.requires_grad_(False)  # official: applied under no_grad only, never trained
        # node rows without PAD (user 0, item 0): noise, dropout, statistics and contrasts use these only
        n = self.n_users + self.n_items
        keep = torch.ones(n, dtype=torch.bool, device=dev)
        keep[0] = False
        keep[self.n_users] = False
        self.register_buffer("real_rows", keep.nonzero().squeeze(-1), persistent=False)

    # ---- encoders -------------------------------------------------------------------------------------------
    def _noise(self, h: torch.Tensor) -> torch.Tensor:
        """``rownorm(U[0,1))`` on the non-PAD rows (one draw of their shape), zero on PAD."""
        noise = torch.zeros_like(h)
        noise[self.real_rows] = torch.rand_like(h[self.real_rows])
        return F.normalize(noise, dim=-1)

    def _encode(self, name: str, items: torch.Tensor, perturbed: bool = False) -> torch.Tensor:
        x = self.encoders[name].ego(items)
        total, h = x, x
        for _ in range(self.n_layers):
            h = graph_product(self.norm_adj, h)
            if perturbed:
                h = h + torch.sign(h) * self._noise(h) * NOISE_SCALE
            total = total + h
        return total

    def _item_graph(self, items: torch.Tensor) -> torch.Tensor:
        h = items
        for _ in range(self.n_mm_layers):
            h = graph_product(self.mm_adj, h)
        return items + h

    def _split(self, user_part: torch.Tensor, node_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users, items + S^L items)`` with the users given and items the item rows of ``node_table``."""
        return user_part, self._item_graph(node_table[self.n_users:])

    def _weighted(self, v: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``r`` from image and text encodings: weighted user halves, items through the item graph."""
        nu = self.n_users
        users = torch.cat([self.user_weight[:, :1] * v[:nu], self.user_weight[:, 1:] * t[:nu]], dim=1)
        return self._split(users, torch.cat([v, t], dim=1))

    def _main_views(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode("main_image", self.raw_feature("image")), self._encode("main_text", self.raw_feature("text"))

    def compute_vectors(self):
        return self._weighted(*self._main_views())

    # ---- loss -----------------------------------------------------------------------------------------------
    def _real(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.cat([users[1:], items[1:]])

    def calculate_loss(self, interaction):
        users, pos, neg = self.batch_ids(interaction)
        v, t = self._main_views()
        guide = self._encode("id", self.id_feat)
        noisy = {key: self._encode(f"{key[0]}_{key[1]}", self.raw_feature(key[1]), perturbed=True)
                 for key in _NOISY_ORDER}
        user_r, item_r = self._weighted(v, t)
        u = user_r[users]
        loss = bpr_log2sigmoid(u, item_r[pos], item_r[neg])

        main = self.encoders
        reg = (main["main_image"].preference[users] ** 2).mean() + (main["main_text"].preference[users] ** 2).mean()
        reg = self.reg_weight * (reg + (self.user_weight[1:] ** 2).mean())

        nu = self.n_users
        tables = [self._real(user_r, item_r)]
        for enc in (guide, v, t):
            pair = torch.cat([enc, enc], dim=1)
            tables.append(self._real(*self._split(pair[:nu], pair)))
        stats = [_stats(x) for x in tables]
        align = sum((stats[a][0] - stats[b][0]).abs() + (stats[a][1] - stats[b][1]).abs()
                    for a in range(4) for b in range(a + 1, 4))

        with torch.no_grad():
            ur, ir = user_r[1:], item_r[1:]
            mask_f = 0.0
            for table in (ur, ir):  # official: the user dropout mask is drawn before the item one
                dropped = F.dropout(table, self.dropout, training=True)
                mask_f = mask_f + 1.0 - F.cosine_similarity(dropped, self.mask_mlp(table)).mean()

        n1 = self._weighted(noisy[("n1", "image")], noisy[("n1", "text")])
        n2 = self._weighted(noisy[("n2", "image")], noisy[("n2", "text")])
        mask_g = (info_nce_full(n1[0][1:], n2[0][1:], self.temp) + info_nce_full(n1[1][1:], n2[1][1:], self.temp))
        return (loss + reg + self.align_weight * align + self.mask_weight_f * mask_f
                + self.mask_weight_g * mask_g)
