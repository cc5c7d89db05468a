"""CafeMed: Causal Attention Fusion Enhanced Medication Recommendation.

Reference: Kelin Ren, Chan-Yang Ju, Dong-Ho Lee. "CafeMed: Causal Attention Fusion Enhanced Medication
Recommendation." BIBM 2025, arXiv:2511.14064. Backbone: Xiang Li et al. "CausalMed: Causality-Based Personalized
Medication Recommendation Centered on Patient Health State." CIKM 2024.

The backbone (embeddings, causal-effect graph with 5-level relation typing and two RGCN layers, fusion, three GRUs,
6d head, DDI-controlled loss) follows CausalMed's code (spec cafemed.md §1.2-1.3, §2). The CafeMed internals were
not available: the Causal Weight Generator (CWG) and the Channel Harmonized Attention Refinement Module (CHARM)
are the spec's reconstruction (§1.4) behind the switches ``use_cwg`` / ``use_charm``; both off is the CausalMed
backbone (registered as ``CausalMed``). Each module has the same interface as the part it replaces, so a better
reading of the paper can be dropped in.

Efficiency (spec §7.2 item 16): the per-visit modules only depend on visit k and k-1, so every visit of the batch
is processed at once as dense padded tensors, and the GRUs encode each patient's whole history in one pass (the
output at step t is the published model's prefix encoding for target visit t).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.models.medrec.base import MedRecModel, check_choice, config_flag, config_value, previous_visit
from recbole_ext.models.medrec.causal import causal_effects

N_LEVELS = 6  # relation levels 0..5 per side; level 0 = first-visit placeholder edges, level 5 never occurs


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).float()
    return (h * m).sum(-2) / m.sum(-2).clamp(min=1.0)


class StaticRelationalGraph(nn.Module):
    """CausalMed's causal-effect graph: med(k-1) -> diag/proc(k) edges typed by effect level, two RGCN layers.

    RGCN (Schlichtkrull et al.) with mean aggregation per relation, root weight and bias, ReLU between layers, as
    PyG's ``RGCNConv`` defaults. Edge (code i, med j) exists when C[i, j] > ``threshold``; its level is
    ``ceil(5 C) - 1`` (so (0.2, 0.4] -> 1, ..., (0.8, 1] -> 4). First visits get one zero placeholder med node
    linked to every code by a level-0 edge. Med nodes receive no messages.
    """

    def __init__(self, dim: int, threshold: float = 0.2, n_layers: int = 2):
        super().__init__()
        self.threshold = threshold
        self.roots = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        self.relations = nn.ParameterList(
            nn.Parameter(nn.init.xavier_uniform_(torch.empty(2 * N_LEVELS, dim, dim))) for _ in range(n_layers))
        for root in self.roots:
            nn.init.xavier_uniform_(root.weight)
            nn.init.zeros_(root.bias)

    def _adjacency(self, c, mask_x, mask_m, first):
        level = (torch.ceil(5 * c) - 1).long().clamp(0, N_LEVELS - 1)
        edge = (c > self.threshold) & mask_x.unsqueeze(-1) & mask_m.unsqueeze(-2)
        placeholder = first[:, None, None] & mask_x.unsqueeze(-1)
        placeholder = placeholder & (torch.arange(c.shape[-1], device=c.device) == 0)
        level = torch.where(placeholder, torch.zeros_like(level), level)
        onehot = F.one_hot(level, N_LEVELS).float() * (edge | placeholder).unsqueeze(-1).float()
        return onehot / onehot.sum(-2, keepdim=True).clamp(min=1.0)  # mean over neighbours of each relation

    @staticmethod
    def _messages(adj, h_m, weights):
        n, n_codes, n_meds, n_rel = adj.shape
        agg = adj.permute(0, 1, 3, 2).reshape(n, n_codes * n_rel, n_meds) @ h_m       # [N, Lx * R, d]
        return agg.reshape(n, n_codes, n_rel * h_m.shape[-1]) @ weights.reshape(-1, weights.shape[-1])

    def forward(self, h_d, h_p, h_m, mask_d, mask_p, mask_m, c_d, c_p, first):
        adj_d = self._adjacency(c_d, mask_d, mask_m, first)
        adj_p = self._adjacency(c_p, mask_p, mask_m, first)
        for layer, (root, rel) in enumerate(zip(self.roots, self.relations)):
            if layer:
                h_d, h_p, h_m = F.relu(h_d), F.relu(h_p), F.relu(h_m)
            # mean_r(x_j) W_r == mean_r(x_j W_r): aggregate per relation first, then one matmul for all relations.
            msg_d = self._messages(adj_d, h_m, rel[:N_LEVELS])
            msg_p = self._messages(adj_p, h_m, rel[N_LEVELS:])
            h_d, h_p, h_m = root(h_d) + msg_d, root(h_p) + msg_p, root(h_m)
        return h_d, h_p, h_m


class CausalWeightGenerator(nn.Module):
    """CWG [reconstruction, spec §1.4.2]: static effects -> patient-specific weights -> causal message passing.

    ``g_ij = sigmoid(w_g . tanh(W_c h_i + W_m h_j + W_z s + w_e c_ij + b))``, ``omega = 2 g c`` (g = 1/2 gives the
    static effect back), row-normalised, then residual + LayerNorm updates of code and med nodes. With
    ``dynamic=False`` the gate is fixed to 1/2, i.e. static effects in the same message passing ("w/o CWG" variant
    ``static_graph: linear``).
    """

    def __init__(self, dim: int, gate_size: int = 64, threshold: float | None = 0.2, dynamic: bool = True,
                 node_gate: bool = False):
        super().__init__()
        self.dynamic, self.threshold, self.node_gate = dynamic, threshold, node_gate
        self.state = nn.Sequential(nn.Linear(3 * dim, dim), nn.LayerNorm(dim))
        self.sides = nn.ModuleDict()
        for side in ("diag", "proc"):
            self.sides[side] = nn.ModuleDict({
                "code": nn.Linear(dim, gate_size, bias=True), "med": nn.Linear(dim, gate_size, bias=False),
                "state": nn.Linear(dim, gate_size, bias=False), "effect": nn.Linear(1, gate_size, bias=False),
                "score": nn.Linear(gate_size, 1, bias=False), "value": nn.Linear(dim, dim, bias=False),
                "back": nn.Linear(dim, dim, bias=False), "norm": nn.LayerNorm(dim)})
        self.med_norm = nn.LayerNorm(dim)
        if node_gate:
            self.alpha = nn.Linear(2 * dim, dim)

    def _side(self, mods, h_x, mask_x, h_m, mask_m, c, state):
        pair = mask_x.unsqueeze(-1) & mask_m.unsqueeze(-2)
        if self.threshold is not None:
            pair = pair & (c > self.threshold)
        # Gates are only needed where a weight can be non-zero, so they are computed on the list of kept pairs
        # (a few percent of the padded [N, Lx, Lm] grid on MIMIC-like data) and scattered back.
        n, i, j = pair.nonzero(as_tuple=True)
        c_pair = c[n, i, j]
        if self.dynamic:
            pre = (mods["code"](h_x)[n, i] + mods["med"](h_m)[n, j] + mods["state"](state)[n]
                   + mods["effect"](c_pair.unsqueeze(-1)))
            weight = 2 * torch.sigmoid(mods["score"](torch.tanh(pre)).squeeze(-1)) * c_pair
        else:
            weight = c_pair
        omega = torch.zeros_like(c).index_put((n, i, j), weight)
        omega = omega / (omega.abs().sum(-1, keepdim=True) + 1e-8)
        h_new = mods["norm"](h_x + omega @ mods["value"](h_m))
        to_med = omega.transpose(1, 2) @ mods["back"](h_x)
        return h_new, to_med

    def forward(self, h_d, h_p, h_m, mask_d, mask_p, mask_m, c_d, c_p, first):
        state = self.state(torch.cat([masked_mean(h_d, mask_d), masked_mean(h_p, mask_p),
                                      masked_mean(h_m, mask_m)], -1))
        new_d, med_from_d = self._side(self.sides["diag"], h_d, mask_d, h_m, mask_m, c_d, state)
        new_p, med_from_p = self._side(self.sides["proc"], h_p, mask_p, h_m, mask_m, c_p, state)
        new_m = self.med_norm(h_m + med_from_d + med_from_p)
        if self.node_gate:
            def gate(h):
                return h * 2 * torch.sigmoid(self.alpha(torch.cat([h, state.unsqueeze(1).expand_as(h)], -1)))
            new_d, new_p, new_m = gate(new_d), gate(new_p), gate(new_m)
        keep = first[:, None, None]  # no previous medications: nothing to propagate
        return (torch.where(keep, h_d, new_d), torch.where(keep, h_p, new_p), torch.where(keep, h_m, new_m))


class SumPooling(nn.Module):
    """CausalMed's pooling: visit vector of each modality = sum of its node vectors."""

    def forward(self, h_d, h_p, h_m, mask_d, mask_p, mask_m):
        return torch.stack([(h * m.unsqueeze(-1)).sum(-2) for h, m in ((h_d, mask_d), (h_p, mask_p), (h_m, mask_m))], 1)


class CHARM(SumPooling):
    """CHARM [reconstruction, spec §1.4.3]: diag<->proc cross-attention, then channel x feature gating (max-fused).

    Channels are the three modalities ``U = [u_d; u_p; u_m]``; the channel branch gives one weight per modality,
    the feature branch one weight per feature, fused by an element-wise max as in the author's DREAM module.
    """

    def __init__(self, dim: int, heads: int = 4, reduction: int = 3, attend_med: bool = False):
        super().__init__()
        self.attend_med = attend_med
        self.d_from_p = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.p_from_d = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_d, self.norm_p = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.channel = nn.Sequential(nn.Linear(3, reduction), nn.ReLU(), nn.Linear(reduction, 3), nn.Sigmoid())
        self.feature = nn.Linear(3, 1)
        self.out_norm = nn.LayerNorm(dim)

    @staticmethod
    def _attend(attn, query, keys, key_mask):
        key_mask = key_mask.clone()
        key_mask[:, 0] |= ~key_mask.any(-1)  # an empty key set would give NaN; attend to a zero pad instead
        out, _ = attn(query, keys, keys, key_padding_mask=~key_mask, need_weights=False)
        return out

    def forward(self, h_d, h_p, h_m, mask_d, mask_p, mask_m):
        keys_d, keys_p, mk_d, mk_p = h_d, h_p, mask_d, mask_p
        if self.attend_med:
            keys_d, mk_d = torch.cat([h_d, h_m], 1), torch.cat([mask_d, mask_m], 1)
            keys_p, mk_p = torch.cat([h_p, h_m], 1), torch.cat([mask_p, mask_m], 1)
        att_d = self.norm_d(h_d + self._attend(self.d_from_p, h_d, keys_p, mk_p))
        att_p = self.norm_p(h_p + self._attend(self.p_from_d, h_p, keys_d, mk_d))
        u = super().forward(att_d, att_p, h_m, mask_d, mask_p, mask_m)      # [N, 3, d]
        a = self.channel(u.mean(-1)).unsqueeze(-1)                           # [N, 3, 1]
        b = torch.sigmoid(self.feature(u.transpose(1, 2))).transpose(1, 2)   # [N, 1, d]
        return self.out_norm(u + torch.maximum(a * u, b * u))


class CafeMed(MedRecModel):
    r"""CafeMed = CausalMed backbone + Causal Weight Generator + CHARM (switchable), DDI-controlled loss."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = self.embedding_size
        self.use_cwg = config_flag(config, "use_cwg", True)
        self.use_charm = config_flag(config, "use_charm", True)
        self.static_graph = check_choice("static_graph", config_value(config, "static_graph", "rgcn"),
                                         ("rgcn", "linear"))
        self.head_input = check_choice("head_input", config_value(config, "head_input", "duplicated"),
                                       ("duplicated", "single"))
        effects = check_choice("causal_effects", config_value(config, "causal_effects", "train"), ("train", "zero"))
        threshold = float(config_value(config, "effect_threshold", 0.2))
        cwg_threshold = config_value(config, "cwg_effect_threshold", threshold)
        cwg_threshold = None if str(cwg_threshold).lower() in ("none", "off") else float(cwg_threshold)

        self.diag_emb = nn.Embedding(self.n_diag + 1, d, padding_idx=0)
        self.proc_emb = nn.Embedding(self.n_proc + 1, d, padding_idx=0)
        self.med_emb = nn.Embedding(self.n_med + 1, d, padding_idx=0)
        for emb in (self.diag_emb, self.proc_emb, self.med_emb):
            nn.init.uniform_(emb.weight, -0.1, 0.1)
        self.dropout = nn.Dropout(float(config_value(config, "dropout_prob", 0.7)))

        if self.use_cwg:
            self.graph = CausalWeightGenerator(d, int(config_value(config, "cwg_gate_size", 64)), cwg_threshold,
                                               dynamic=True, node_gate=config_flag(config, "cwg_node_gate", False))
        elif self.static_graph == "linear":
            self.graph = CausalWeightGenerator(d, 1, cwg_threshold, dynamic=False)
        else:
            self.graph = StaticRelationalGraph(d, threshold)
        self.pool = SumPooling()
        if self.use_charm:
            self.pool = CHARM(d, int(config_value(config, "charm_heads", 4)),
                              int(config_value(config, "charm_reduction", 3)),
                              config_flag(config, "charm_attend_med", False))
        self.fusion = nn.Parameter(torch.ones(3, 2))  # rho: embedding vs graph output, per modality
        self.grus = nn.ModuleList(nn.GRU(d, d, batch_first=True) for _ in range(3))
        self.head = nn.Linear((6 if self.head_input == "duplicated" else 3) * d, self.n_med)

        c_dm, c_pm = causal_effects(dataset.train_visits(), self.n_diag, self.n_proc, self.n_med)
        c_dm, c_pm = torch.from_numpy(c_dm), torch.from_numpy(c_pm)
        if effects == "zero":
            c_dm, c_pm = torch.zeros_like(c_dm), torch.zeros_like(c_pm)
        # Row/column 0 = padding, so effects can be gathered directly with 1-based ids.
        self.register_buffer("c_dm", F.pad(c_dm, (1, 0, 1, 0)), persistent=False)
        self.register_buffer("c_pm", F.pad(c_pm, (1, 0, 1, 0)), persistent=False)

    def visit_vectors(self, batch: VisitBatch) -> torch.Tensor:
        """``[P, T, 3, d]`` diagnosis/procedure/medication-history vectors of every visit."""
        mask = batch.visit_mask
        diag, proc, prev = batch.diag[mask], batch.proc[mask], previous_visit(batch.med)[mask]
        first = ~(prev > 0).any(-1)
        mask_d, mask_p, mask_m = diag > 0, proc > 0, prev > 0
        mask_m[:, 0] |= first  # placeholder med node (zero vector) for visits without history
        h_d = self.dropout(self.diag_emb(diag)) * mask_d.unsqueeze(-1)
        h_p = self.dropout(self.proc_emb(proc)) * mask_p.unsqueeze(-1)
        h_m = self.dropout(self.med_emb(prev)) * (prev > 0).unsqueeze(-1)
        c_d = self.c_dm[diag.unsqueeze(-1), prev.unsqueeze(-2)]
        c_p = self.c_pm[proc.unsqueeze(-1), prev.unsqueeze(-2)]
        g_d, g_p, g_m = self.graph(h_d, h_p, h_m, mask_d, mask_p, mask_m, c_d, c_p, first)
        rho = self.fusion
        f_d, f_p, f_m = (rho[i, 0] * h + rho[i, 1] * g for i, (h, g) in enumerate(((h_d, g_d), (h_p, g_p), (h_m, g_m))))
        u = self.pool(f_d, f_p, f_m, mask_d, mask_p, mask_m)
        out = u.new_zeros(*mask.shape, 3, u.shape[-1])
        out[mask] = u
        return out

    def forward(self, batch: VisitBatch) -> torch.Tensor:
        u = self.visit_vectors(batch)
        outs = [gru(u[:, :, i])[0] for i, gru in enumerate(self.grus)]
        # CausalMed concatenates GRU hidden state and last output, identical for one layer (spec §7.2 item 7).
        z = torch.cat(outs * 2 if self.head_input == "duplicated" else outs, -1)
        return self.head(F.relu(z))


class CausalMed(CafeMed):
    r"""The CausalMed backbone (CIKM 2024) as reproduced here: CafeMed with ``use_cwg = use_charm = False``."""

    def __init__(self, config, dataset):
        overrides = {"use_cwg": False, "use_charm": False}
        super().__init__(_Overlay(config, overrides), dataset)


class _Overlay:
    """Read-only view of a config with a few keys forced."""

    def __init__(self, config, overrides):
        self._config, self._overrides = config, overrides

    def __getitem__(self, key):
        return self._overrides[key] if key in self._overrides else config_value(self._config, key)
