"""DRAGON: Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal Recommendation.

Reference: Hongyu Zhou, Xin Zhou, Lingzi Zhang, Zhiqi Shen. ECAI 2023 (arXiv 2301.12097), behaviour of MMRec's
``src/models/dragon.py``, ``configs/model/DRAGON.yaml`` and the user-user graph of
``preprocessing/dualgnn-gen-u-u-matrix.py`` (written here from their equations, not copied).

Three graphs: the user-item graph (heterogeneous), an item-item kNN graph of the features and a user-user
co-occurrence graph (both homogeneous). With ``Â = D^-1/2 A D^-1/2`` the user-item graph (``A`` counts every
training interaction, ``D`` its row sums; isolated nodes get 0), ``X_m`` the frozen feature tables (m = image,
text), ``P_m`` a trainable user preference table per modality, ``d = embedding_size``::

    F_m = W2_m leaky_relu(W1_m X_m + b1_m) + b2_m                 (X_m -> 4d -> d)
    x_m = norm([P_m; F_m]),  G_m = x_m + Â x_m + Â² x_m           (norm = row-wise L2 normalisation)
    U = [w_u1 G_image,u ; w_u2 G_text,u]   (concatenated; w_u a trainable pair per user, softmax-initialised)
    I = [G_image,i ; G_text,i]             (one modality: U, I are that modality's G rows)
    I_final = I + S^n_mm_layers I          (S = w * S_image + (1 - w) * S_text, binary kNN graphs, FREEDOM's)
    U_final = U + W U                      (W: each user's user_knn_k co-occurrence neighbours, softmax weights)
    loss = -mean log2 sigmoid(<u, p> - <u, n>) + reg_weight * (sum_m mean(P_m[users]²) + mean(w²))
    score(u, i) = <U_final_u, I_final_i>

The user-user graph (:func:`user_cooccurrence_lists`) is built once from the TRAINING interactions: ``C = B Bᵀ``
with ``B`` the binary user-item matrix and the diagonal removed (users count the distinct items they share); each
user keeps its neighbours by decreasing count (at most 200, the official cap), ties by increasing user id (the
official ``torch.topk`` orders ties arbitrarily). Every epoch (:func:`sample_user_graph`) a user with at least
``user_knn_k`` neighbours takes its first ``user_knn_k``; one with fewer (but some) is padded to ``user_knn_k``
slots by drawing, slot after slot, uniformly among the slots already filled (the official urn: a neighbour drawn
once can be drawn again); the slot weights are the softmax of the slots' counts, so a neighbour repeated ``r``
times weighs ``r`` slots; a user without neighbours gets a zero row.

Randomness: only that padding. Training draws it from torch's global generator once per epoch (saved and
restored by ``resume``); evaluation uses a graph drawn from a generator seeded with ``seed``, so an evaluation is a
fixed function of the weights. The official code draws from numpy's global generator, one user after the other.

PAD (RecBole's user 0 and item 0; MMRec has none) takes no part: no edges, no kNN rows, no co-occurrences.
"""
from __future__ import annotations


import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_ext.models.layers.graph import graph_product, interaction_csr, normalised_bipartite, to_torch_sparse
from recbole_ext.models.layers.knn import KNN_BOUNDS, knn_index_from_config
from recbole_ext.models.layers.losses import bpr_log2sigmoid
from recbole_ext.models.multimodal.base import MultimodalRecommender
from recbole_ext.options import AT_LEAST_ONE, NON_NEGATIVE, UNIT_INTERVAL, config_value
from recbole_ext.utils.segments import indptr_from_lengths, positions_in_segments

NEIGHBOUR_CAP = 200  # the official builder keeps at most 200 neighbours per user


def user_cooccurrence_lists(inter: sp.spmatrix, n_users: int, cap: int = NEIGHBOUR_CAP):
    """Each user's co-occurrence neighbours ``(indptr [n_users + 1], neighbours, counts)`` as CSR-style segments.

    ``count(u, v)`` = number of distinct items both ``u`` and ``v`` interacted with (repeated interactions count
    once), ``u != v``; a segment lists ``u``'s neighbours with count > 0 by decreasing count, ties by increasing id,
    at most ``cap`` of them.
    """
    b = inter.tocsr().astype(np.float64)
    b.sum_duplicates()
    b.data[:] = 1.0
    b.eliminate_zeros()
    c = (b @ b.T).tocoo()
    off = (c.row != c.col) & (c.data > 0)
    rows, cols, counts = c.row[off].astype(np.int64), c.col[off].astype(np.int64), c.data[off]
    order = np.lexsort((cols, -counts, rows))  # user, then decreasing count, then increasing neighbour id
    rows, cols, counts = rows[order], cols[order], counts[order]
    lengths = np.bincount(rows, minlength=n_users)
    keep = positions_in_segments(lengths) < cap
    return indptr_from_lengths(np.minimum(lengths, cap)), cols[keep], counts[keep]


def neighbour_tables(indptr: np.ndarray, neighbours: np.ndarray, counts: np.ndarray, k: int):
    """``(ids [n, k], counts [n, k], lengths [n])``: each user's first ``min(length, k)`` neighbours (zeros after)."""
    n = len(indptr) - 1
    lengths = np.diff(indptr)
    kept = np.minimum(lengths, k)
    rows = np.repeat(np.arange(n), kept)
    pos = positions_in_segments(kept)
    src = np.repeat(indptr[:-1], kept) + pos
    ids = np.zeros((n, k), dtype=np.int64)
    weights = np.zeros((n, k), dtype=np.float64)
    ids[rows, pos] = neighbours[src]
    weights[rows, pos] = counts[src]
    return ids, weights, lengths


def padding_slots(lengths: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``slots [n, k]``: which of a user's listed neighbours fills each of its ``k`` slots.

    Slot ``j < length`` is neighbour ``j``; a user with ``0 < length < k`` fills slot ``j >= length`` with the
    neighbour of slot ``floor(r_j * j)``, ``r ~ U[0, 1)`` (one ``[users with 0 < length < k, k]`` draw, rows in
    user order): uniform among the slots already filled. Rows of users with no neighbours stay 0.
    """
    device = lengths.device
    steps = torch.arange(k, device=device)
    slots = steps.expand(len(lengths), k).clone()
    short = torch.nonzero((lengths > 0) & (lengths < k)).view(-1)
    if len(short) == 0:
        return slots
    picks = (torch.rand(len(short), k, generator=generator, device=device) * steps).long()
    own = slots[short]
    filled = lengths[short, None] > steps  # slots the list itself fills
    for j in range(1, k):  # k steps over all short users at once (each slot may copy an earlier padded one)
        own[:, j] = torch.where(filled[:, j], own[:, j], own.gather(1, picks[:, j:j + 1]).view(-1))
    slots[short] = own
    return slots


def sample_user_graph(ids: torch.Tensor, counts: torch.Tensor, lengths: torch.Tensor, k: int, dtype: torch.dtype,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """The ``[n, n]`` sparse user-user aggregation of an epoch: row ``u`` holds softmax(slot counts) on the
    slots' neighbours (repeats summed); zero for users without neighbours."""
    n = len(lengths)
    slots = padding_slots(lengths, k, generator)
    weights = torch.softmax(counts.to(dtype).gather(1, slots), dim=1) * (lengths > 0).to(dtype)[:, None]
    rows = torch.arange(n, device=ids.device).repeat_interleave(k)
    graph = torch.sparse_coo_tensor(torch.stack([rows, ids.gather(1, slots).reshape(-1)]), weights.reshape(-1),
                                    (n, n), device=ids.device)
    return graph.coalesce().to_sparse_csr()


class DRAGON(MultimodalRecommender):
    paper = "Zhou et al., DRAGON (ECAI 2023)"
    year = 2023
    uses = "interactions, image + text features (user-user and kNN item graphs)"
    parity = ("loss + every gradient, user-user graph = float64 transcription of MMRec's code "
              "(`test_multimodal_models_dragon.py`)")
    option_bounds = {**KNN_BOUNDS, "n_mm_layers": NON_NEGATIVE, "mm_image_weight": UNIT_INTERVAL,
                     "user_knn_k": AT_LEAST_ONE}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = int(config_value(config, "embedding_size", 64))
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.knn_index = knn_index_from_config(config)
        self.n_mm_layers = int(config_value(config, "n_mm_layers", 1))
        self.mm_image_weight = float(config_value(config, "mm_image_weight", 0.1))
        self.user_knn_k = int(config_value(config, "user_knn_k", 40))
        self.reg_weight = float(config_value(config, "reg_weight", 0.1))
        self.eval_seed = int(config_value(config, "seed", 2020))

        d = self.embedding_size
        self.preference = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, d))) for m in self.modalities})
        self.lift = nn.ModuleDict({m: nn.Linear(self.raw_feature(m).shape[1], 4 * d) for m in self.modalities})
        self.squeeze = nn.ModuleDict({m: nn.Linear(4 * d, d) for m in self.modalities})
        # per user a weight for each modality's part of the concatenated user vector (official: softmax at init,
        # free afterwards; regularised even with one modality, where it takes no part in the scores)
        self.modality_weight = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, 2)).softmax(dim=1))

        r = interaction_csr(dataset.inter_matrix(form="coo"), self.n_users, self.n_items)  # PyG counts repeats
        self.set_graph("norm_adj", to_torch_sparse(normalised_bipartite(r)[0]).to(self.device))
        self.set_graph("mm_adj", self.mixed_knn_graph(self.knn_k, "binary_sym", self.mm_image_weight,
                                                      self.knn_index))
        ids, counts, lengths = neighbour_tables(*user_cooccurrence_lists(r, self.n_users), self.user_knn_k)
        for name, value in (("neighbour_ids", ids), ("neighbour_counts", counts), ("neighbour_lengths", lengths)):
            self.register_buffer(name, torch.from_numpy(value).to(self.device), persistent=False)
        self.set_graph("epoch_user_graph", None)
        self.set_graph("eval_user_graph", None)
        self._needs_resample = True

    # ---- the user-user graph --------------------------------------------------------------------------------
    def user_graph(self, generator: torch.Generator | None = None) -> torch.Tensor:
        dtype = self.modality_weight.dtype
        return sample_user_graph(self.neighbour_ids, self.neighbour_counts, self.neighbour_lengths,
                                 self.user_knn_k, dtype, generator)

    def pre_epoch_processing(self):
        """A fresh padding of the short neighbour lists, once per epoch (MMRec's ``topk_sample``)."""
        self._needs_resample = False
        self.epoch_user_graph = self.user_graph()

    def _eval_user_graph(self) -> torch.Tensor:
        graph = self.eval_user_graph
        if graph is None or graph.dtype != self.modality_weight.dtype:
            device = self.neighbour_ids.device
            graph = self.user_graph(torch.Generator(device=device).manual_seed(self.eval_seed))
            self.eval_user_graph = graph
        return graph

    # ---- forward --------------------------------------------------------------------------------------------
    def modality_view(self, modality: str) -> torch.Tensor:
        """``x + Â x + Â² x`` with ``x`` the normalised ``[preference; projected features]`` of one modality."""
        items = self.squeeze[modality](F.leaky_relu(self.lift[modality](self.raw_feature(modality))))
        x = F.normalize(torch.cat([self.preference[modality], items]))
        h1 = graph_product(self.norm_adj, x)
        return x + h1 + graph_product(self.norm_adj, h1)

    def encode(self, user_graph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = [self.modality_view(m) for m in self.modalities]
        n = self.n_users
        if len(views) == 2:
            users = torch.cat([self.modality_weight[:, :1] * views[0][:n], self.modality_weight[:, 1:] * views[1][:n]],
                              dim=1)
            items = torch.cat([views[0][n:], views[1][n:]], dim=1)
        else:
            users, items = views[0][:n], views[0][n:]
        h = items
        for _ in range(self.n_mm_layers):
            h = graph_product(self.mm_adj, h)
        return users + graph_product(user_graph, users), items + h

    def compute_vectors(self):
        return self.encode(self.epoch_user_graph if self.training else self._eval_user_graph())

    def calculate_loss(self, interaction):
        if self._needs_resample or self.epoch_user_graph is None:
            self.pre_epoch_processing()
        users, pos, neg = self.batch_ids(interaction)
        user_all, item_all = self.encode(self.epoch_user_graph)
        bpr = bpr_log2sigmoid(user_all[users], item_all[pos], item_all[neg])
        reg = sum(self.preference[m][users].pow(2).mean() for m in self.modalities)
        return bpr + self.reg_weight * (reg + self.modality_weight[1:].pow(2).mean())  # PAD's row left out
