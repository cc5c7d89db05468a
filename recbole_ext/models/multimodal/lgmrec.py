"""LGMRec: Local and Global Graph Learning for Multimodal Recommendation.

Reference: Zhiqiang Guo et al., AAAI 2024 (official code github.com/georgeguo-cn/LGMRec), behaviour of MMRec's
``src/models/lgmrec.py`` and ``configs/model/LGMRec.yaml`` (written here from their equations, not copied).

Local embeddings (a collaborative graph and one modality graph per feature table) plus global embeddings from a
hypergraph whose hyperedges are learned soft clusters. With ``Â = D^-1/2 A D^-1/2`` the LightGCN user-item graph
(``D`` = degrees + 1e-7), ``R`` the binary user-item matrix, ``X_m`` the frozen feature tables (m = image, text)::

    E_c = mean_{l=0..n_ui_layers} Â^l [E_user; E_item]              (cf_model: lightgcn; mf: E_c = [E_user; E_item])
    F_m = X_m W_m,  G_m = Â^n_mm_layers [diag(1/(d_u + 1e-7)) R F_m; F_m]     (last layer only, no mean)
    L_local = E_c + norm(G_image) + norm(G_text)                    (norm = row-wise L2 normalisation)

    Z_m = X_m V_m  [items, hyper_num],  Z_m^u = R Z_m                (hyperedge logits of items; users sum theirs)
    H_m = GumbelSoftmax_τ(Z_m),  H_m^u = GumbelSoftmax_τ(Z_m^u)       (τ = 0.2, softmax over the hyperedges)
    H̃ = dropout_{1 - keep_rate}(H)                                   (training only; one mask per matrix)
    I_m = E_c,item;  repeat n_hyper_layer:  Λ = H̃_mᵀ I_m,  I_m = H̃_m Λ,  U_m = H̃_m^u Λ
    final = L_local + alpha * norm([U_image + U_text; I_image + I_text])

    loss = BPR(final) + cl_weight * (C(U_image, U_text, users) + C(I_image, I_text, pos items))
           + reg_weight * (‖u‖ + ‖p‖ + ‖n‖) / batch                 (unsquared norms of the batch's final rows)
    C(P, Q, b) = Σ_b -log(exp(<p̂_b, q̂_b>/τ) / Σ_j exp(<p̂_b, q̂_j>/τ))  (j over all users / all items; a sum)

Randomness, in the official order: Gumbel noise for ``H_image``, ``H_image^u``, ``H_text``, ``H_text^u``, then the
dropout masks in the same order, all from torch's global generator (seeded by the run's ``seed``, saved and restored
by ``resume``). The official code also draws Gumbel noise at evaluation, from the global generator, afresh for
every batch of users; here evaluation draws it once per evaluation from its own generator seeded with ``seed``
(``eval_gumbel_noise: True``, the default), so an evaluation is a fixed function of the weights, the same after a
checkpoint reload, and does not move the training stream; ``eval_gumbel_noise: False`` uses ``softmax(Z/τ)``.

PAD (RecBole's user 0 and item 0; MMRec has none) takes no part: it has no edges in ``Â`` or ``R``, the hypergraph
and its contrast run on rows 1.. only (the official code would give a PAD item a noisy hyperedge membership and put
PAD rows among the contrast's negatives), and PAD's global embedding is zero.
"""
from __future__ import annotations

import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_ext.errors import UserError
from recbole_ext.models.layers.graph import (graph_product, interaction_csr, lightgcn_mean, normalised_bipartite,
                                             to_torch_sparse)
from recbole_ext.models.layers.losses import bpr_logsigmoid, info_nce_all_rows, summed_norms
from recbole_ext.models.multimodal.base import MODALITIES, MultimodalRecommender
from recbole_ext.models.multimodal.freedom import require_feature_width
from recbole_ext.options import AT_LEAST_ONE, NON_NEGATIVE, Bounds, check_choice, config_flag, config_value

CF_MODELS = ("lightgcn", "mf")
TAU = 0.2  # official: one fixed temperature for the Gumbel-softmax and the hypergraph contrast
_DEGREE_EPS = 1e-7
KEEP_RATE = Bounds(0, 1, low_open=True)  # dropout 1 - keep_rate: keep_rate 0 would zero every membership


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``softmax((logits + g) / tau)`` over the last dimension with ``g = -log(e)``, ``e ~ Exp(1)`` per entry.

    The same draw as ``torch.nn.functional.gumbel_softmax(hard=False)`` from the same generator state, which
    takes no generator of its own.
    """
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    return ((logits + gumbels) / tau).softmax(dim=-1)


def hypergraph_pass(item_memberships: torch.Tensor, user_memberships: torch.Tensor, item_embeddings: torch.Tensor,
                    n_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(users, items)`` after ``n_layers >= 1`` rounds of item -> hyperedge -> item; users read the last round's
    hyperedge embeddings through their own memberships (the official code computes them in every round and keeps
    the last)."""
    items = item_embeddings
    for _ in range(n_layers):
        hyperedges = item_memberships.T @ items
        items = item_memberships @ hyperedges
    return user_memberships @ hyperedges, items


class LGMRec(MultimodalRecommender):
    paper = "Guo et al., LGMRec (AAAI 2024)"
    year = 2024
    uses = "interactions, image + text features (hypergraph)"
    parity = "loss + every gradient = float64 transcription of MMRec's code (`test_multimodal_models_lgmrec.py`)"
    option_bounds = {"feat_embed_dim": AT_LEAST_ONE, "n_ui_layers": NON_NEGATIVE, "n_mm_layers": NON_NEGATIVE,
                     "n_hyper_layer": AT_LEAST_ONE, "hyper_num": AT_LEAST_ONE, "keep_rate": KEEP_RATE,
                     "alpha": NON_NEGATIVE, "cl_weight": NON_NEGATIVE}

    @classmethod
    def check_config(cls, config) -> None:
        require_feature_width("LGMRec", config, "adds ID and modality embeddings")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)  # checks option_bounds and check_config
        if self.modalities != MODALITIES:
            raise UserError(f"LGMRec needs both image and text features; the dataset has {list(self.modalities)}",
                            fix="use a dataset with both feature tables (its hypergraph contrast pairs them)")
        self.embedding_size = int(config_value(config, "embedding_size", 64))
        self.cf_model = check_choice("cf_model", config_value(config, "cf_model", "lightgcn"), CF_MODELS)
        self.n_ui_layers = int(config_value(config, "n_ui_layers", 2))
        self.n_mm_layers = int(config_value(config, "n_mm_layers", 2))
        self.n_hyper_layer = int(config_value(config, "n_hyper_layer", 1))
        self.hyper_num = int(config_value(config, "hyper_num", 4))
        self.keep_rate = float(config_value(config, "keep_rate", 0.5))
        self.alpha = float(config_value(config, "alpha", 0.3))
        self.cl_weight = float(config_value(config, "cl_weight", 1e-4))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-6))
        self.eval_gumbel_noise = config_flag(config, "eval_gumbel_noise", True)
        self.eval_seed = int(config_value(config, "seed", 2020))

        d = self.embedding_size
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_id_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        # frozen feature tables (official: from_pretrained, freeze=True); per modality a projection to the
        # embedding width and one to the hyperedge logits, created in the official order
        self.feature_projection = nn.ParameterDict()
        self.hyper_projection = nn.ParameterDict()
        for m in self.modalities:
            width = self.raw_feature(m).shape[1]
            self.feature_projection[m] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(width, d)))
            self.hyper_projection[m] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(width, self.hyper_num)))

        r = interaction_csr(dataset.inter_matrix(form="coo"), self.n_users, self.n_items, binary=True)
        a_hat, _ = normalised_bipartite(r, _DEGREE_EPS)
        self.set_graph("norm_adj", to_torch_sparse(a_hat).to(self.device))
        inverse_degree = 1.0 / (r.sum(axis=1).A.ravel() + _DEGREE_EPS)
        self.set_graph("user_mean", to_torch_sparse(sp.diags(inverse_degree) @ r).to(self.device))
        self.set_graph("real_inter", to_torch_sparse(r[1:, 1:]).to(self.device))  # PAD row and column are empty

    # ---- local embeddings -----------------------------------------------------------------------------------
    def collaborative(self) -> torch.Tensor:
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        return lightgcn_mean(self.norm_adj, ego, self.n_ui_layers) if self.cf_model == "lightgcn" else ego

    def modality_view(self, modality: str) -> torch.Tensor:
        items = self.raw_feature(modality) @ self.feature_projection[modality]
        h = torch.cat([graph_product(self.user_mean, items), items])
        for _ in range(self.n_mm_layers):
            h = graph_product(self.norm_adj, h)
        return h

    # ---- global embeddings ----------------------------------------------------------------------------------
    def memberships(self) -> dict[str, list[torch.Tensor]]:
        """Per modality ``[items, users]`` soft hyperedge memberships of the real rows (PAD left out)."""
        generator = None
        if not self.training and self.eval_gumbel_noise:
            device = self.user_embedding.weight.device
            generator = torch.Generator(device=device).manual_seed(self.eval_seed)
        out = {}
        for m in self.modalities:  # official draw order: items then users, image then text
            item_logits = self.raw_feature(m)[1:] @ self.hyper_projection[m]
            logits = [item_logits, graph_product(self.real_inter, item_logits)]
            if self.training or self.eval_gumbel_noise:
                out[m] = [gumbel_softmax(z, TAU, generator) for z in logits]
            else:
                out[m] = [(z / TAU).softmax(dim=-1) for z in logits]
        return out

    def encode(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """``(users [n_users, d], items [n_items, d], {modality: (hyper users, hyper items)})``; the hypergraph
        outputs cover the real rows only (row j is id j + 1)."""
        memberships = self.memberships()
        collaborative = self.collaborative()
        local = collaborative + sum(F.normalize(self.modality_view(m)) for m in self.modalities)
        item_start = self.n_users + 1  # the collaborative rows of the real items
        hyper = {}
        for m in self.modalities:
            items, users = (F.dropout(h, 1.0 - self.keep_rate, self.training) for h in memberships[m])
            hyper[m] = hypergraph_pass(items, users, collaborative[item_start:], self.n_hyper_layer)
        pad = collaborative.new_zeros(1, collaborative.shape[1])
        global_users = torch.cat([pad, sum(u for u, _ in hyper.values())])
        global_items = torch.cat([pad, sum(i for _, i in hyper.values())])
        final = local + self.alpha * F.normalize(torch.cat([global_users, global_items]))
        return final[:self.n_users], final[self.n_users:], hyper

    def compute_vectors(self):
        users, items, _ = self.encode()
        return users, items

    def calculate_loss(self, interaction):
        users, pos, neg = self.batch_ids(interaction)
        user_all, item_all, hyper = self.encode()
        u, p, n = user_all[users], item_all[pos], item_all[neg]
        (image_users, image_items), (text_users, text_items) = hyper["image"], hyper["text"]
        contrast = (info_nce_all_rows(image_users, text_users, users - 1, TAU)
                    + info_nce_all_rows(image_items, text_items, pos - 1, TAU))
        return (bpr_logsigmoid(u, p, n) + self.cl_weight * contrast
                + self.reg_weight * summed_norms(u, p, n, denominator=len(users)))
