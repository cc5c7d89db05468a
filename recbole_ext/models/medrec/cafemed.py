"""CafeMed: Causal Attention Fusion Enhanced Medication Recommendation.

Reference: Kelin Ren, Chan-Yang Ju, Dong-Ho Lee. "CafeMed: Causal Attention Fusion Enhanced Medication
Recommendation." BIBM 2025, arXiv:2511.14064. Backbone: Xiang Li et al. "CausalMed: Causality-Based Personalized
Medication Recommendation Centered on Patient Health State." CIKM 2024.

The backbone (embeddings, causal-effect graph with 5-level relation typing and two RGCN layers, fusion, three GRUs,
6d head, DDI-controlled loss) follows CausalMed's code (spec cafemed.md §1.2-1.3, §2). The CafeMed internals were
not available: the Causal Weight Generator (CWG) and the Channel Harmonized Attention Refinement Module (CHARM)
are the spec's reconstruction (§1.4) behind the switches ``use_cwg`` / ``use_charm``; both off is the CausalMed
backbone (registered as ``CausalMed``). Each module has the same interface as the part it replaces, so a better
reading of the paper can be dropped in. CHARM's open choices (pre-norm attention, ReZero residuals starting CHARM
at sum pooling) were chosen on validation Jaccard; ``charm_norm: post`` + ``charm_rezero: False`` is the first
reconstruction (see ``CHARM``).

Efficiency (spec §7.2 item 16): the per-visit modules only depend on visit k and k-1, so every visit of the batch
is processed at once, as unpadded code nodes (``VisitNodes``, ``node_layout: packed``) or as the dense padded
reference layout (``node_layout: padded``, same function), and the GRUs encode each patient's whole history in one
pass (the output at step t is the published model's prefix encoding for target visit t); in the packed layout the
three GRUs run on packed visit sequences as one autograd node (``stacked_gru``, same function). Pre-norm CHARM's
attention is only ever summed per visit, so it is computed in that pooled form (``CHARM._pooled_attend``: value and
output maps on one row per visit, same function).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.errors import UserError
from recbole_ext.models.medrec.base import MedRecModel, previous_visit
from recbole_ext.models.medrec.causal import causal_effects
from recbole_ext.models.medrec.stacked_gru import PackedVisits, stacked_gru
from recbole_ext.options import AT_LEAST_ONE, Bounds, check_choice, config_flag, config_value
from recbole_ext.utils.segments import positions_in_segments, segment_starts

N_LEVELS = 6  # relation levels 0..5 per side; level 0 = first-visit placeholder edges, level 5 never occurs


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).float()
    return (h * m).sum(-2) / m.sum(-2).clamp(min=1.0)


def segment_sum(values: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Sum of the rows of ``values`` per segment id -> ``[n_segments, ...]`` (empty segments are 0)."""
    return values.new_zeros(n_segments, *values.shape[1:]).index_add_(0, segment, values)


def segment_mean(values: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    count = torch.bincount(segment, minlength=n_segments).clamp(min=1).to(values.dtype)
    return segment_sum(values, segment, n_segments) / count.unsqueeze(-1)


def weighted_message(linear: nn.Linear, rows: torch.Tensor, weight: torch.Tensor, source: torch.Tensor,
                     target: torch.Tensor, n_target: int) -> torch.Tensor:
    """``segment_sum(weight * linear(rows)[source], target, n_target)`` for a linear map without bias.

    The map commutes with the weighted sum, so it is applied on whichever side has fewer rows (before the gather
    or after the sum): the same function with less arithmetic (e.g. 716 instead of 1,089 rows for diagnoses)."""
    if linear.bias is not None:
        raise ValueError("weighted_message needs a linear map without bias")
    if n_target < len(rows):
        return linear(segment_sum(weight * rows.index_select(0, source), target, n_target))
    return segment_sum(weight * linear(rows).index_select(0, source), target, n_target)


def same_visit_pairs(left_visit: torch.Tensor, right_visit: torch.Tensor, n_visits: int):
    """All (left node, right node) index pairs of the same visit; both node lists are grouped by visit in order.

    Row-major per visit (left node, then right node in order), i.e. the order of the padded ``[N, Ll, Lr]`` grid.
    """
    right_count = torch.bincount(right_visit, minlength=n_visits)
    right_start = segment_starts(right_count)
    repeat = right_count[left_visit]
    left = torch.repeat_interleave(torch.arange(len(left_visit), device=left_visit.device), repeat)
    offset = positions_in_segments(repeat)
    return left, right_start[left_visit[left]] + offset


class VisitNodes:
    """The code nodes of N visits without padding: one row per diagnosis, procedure and previous medication.

    ``*_visit`` are the visit indices of the nodes (grouped by visit, codes in visit order) and ``*_code`` their
    1-based ids. Visits without medication history (``first``) get one placeholder med node with id 0 (a zero
    vector), as CausalMed's graph does. Node layout only: the padded layout computes the same function with
    1.5-2.5x more rows (padding to the largest set of the batch).
    """

    def __init__(self, diag: torch.Tensor, proc: torch.Tensor, prev: torch.Tensor):
        self.n_visits = diag.shape[0]
        self.first = ~(prev > 0).any(-1)
        self.width = {"diag": diag.shape[1], "proc": proc.shape[1], "med": prev.shape[1]}
        self.diag_visit, self.diag_pos = (diag > 0).nonzero(as_tuple=True)
        self.diag_code = diag[self.diag_visit, self.diag_pos]
        self.proc_visit, self.proc_pos = (proc > 0).nonzero(as_tuple=True)
        self.proc_code = proc[self.proc_visit, self.proc_pos]
        med_node = prev > 0
        med_node[:, 0] |= self.first
        self.med_visit, self.med_pos = med_node.nonzero(as_tuple=True)
        self.med_code = prev[self.med_visit, self.med_pos]
        self._pairs = {}

    def pairs(self, left: str, right: str):
        """Cached ``same_visit_pairs`` of two node kinds ('diag', 'proc', 'med')."""
        key = (left, right)
        if key not in self._pairs:
            self._pairs[key] = same_visit_pairs(getattr(self, f"{left}_visit"), getattr(self, f"{right}_visit"),
                                                self.n_visits)
        return self._pairs[key]


def relation_glorot_(weight: torch.Tensor) -> torch.Tensor:
    """Glorot-uniform init of a stack of relation matrices ``[R, d_in, d_out]``, each on its own fan.

    Bound ``sqrt(6 / (d_in + d_out))`` for every relation, as PyG's ``glorot`` (used by ``RGCNConv``, which the
    published CausalMed code runs) computes it from the last two dimensions. ``nn.init.xavier_uniform_`` on the 3-D
    tensor would take fan_in = d_in * d_out and fan_out = R * d_out (convolution-kernel convention) and draw from a
    bound about 6x smaller at d = 64, R = 12.
    """
    bound = (6.0 / (weight.shape[-2] + weight.shape[-1])) ** 0.5
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


class StaticRelationalGraph(nn.Module):
    """CausalMed's causal-effect graph: med(k-1) -> diag/proc(k) edges typed by effect level, two RGCN layers.

    RGCN (Schlichtkrull et al.) with mean aggregation per relation, root weight and bias, ReLU between layers, as
    PyG's ``RGCNConv`` defaults. Edge (code i, med j) exists when C[i, j] > ``threshold``; its level is
    ``ceil(5 C) - 1`` (so (0.2, 0.4] -> 1, ..., (0.8, 1] -> 4). First visits get one zero placeholder med node
    linked to every code by a level-0 edge. Med nodes receive no messages. Initialisation as ``RGCNConv``'s: glorot
    per relation matrix and for the root weight, zero bias.
    """

    def __init__(self, dim: int, threshold: float = 0.2, n_layers: int = 2):
        super().__init__()
        self.threshold = threshold
        self.roots = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        self.relations = nn.ParameterList(
            nn.Parameter(relation_glorot_(torch.empty(2 * N_LEVELS, dim, dim))) for _ in range(n_layers))
        for root in self.roots:
            nn.init.xavier_uniform_(root.weight)  # 2-D [out, in]: the same bound as PyG's glorot on [in, out]
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

    def _packed_edges(self, nodes: "VisitNodes", kind: str, c: torch.Tensor):
        """Edges of the (code, med) pairs of ``nodes.pairs(kind, 'med')`` as (code * levels + level) slots."""
        code, med = nodes.pairs(kind, "med")
        level = (torch.ceil(5 * c) - 1).long().clamp(0, N_LEVELS - 1)
        placeholder = nodes.first[getattr(nodes, f"{kind}_visit")[code]]  # first visits: only the placeholder med
        edge = (c > self.threshold) | placeholder
        level = torch.where(placeholder, torch.zeros_like(level), level)
        n_codes = len(getattr(nodes, f"{kind}_code"))
        slot = (code * N_LEVELS + level)[edge]
        count = torch.bincount(slot, minlength=n_codes * N_LEVELS).clamp(min=1).unsqueeze(-1)
        return slot, med[edge], count, n_codes

    def packed(self, nodes, h_d, h_p, h_m, c_d, c_p):
        """Same as ``forward`` on unpadded nodes; ``c_d``/``c_p`` are the effects of ``nodes.pairs(kind, 'med')``."""
        edges = (self._packed_edges(nodes, "diag", c_d), self._packed_edges(nodes, "proc", c_p))
        for layer, (root, rel) in enumerate(zip(self.roots, self.relations)):
            if layer:
                h_d, h_p, h_m = F.relu(h_d), F.relu(h_p), F.relu(h_m)
            msgs = []
            for (slot, med, count, n_codes), weights in zip(edges, (rel[:N_LEVELS], rel[N_LEVELS:])):
                agg = segment_sum(h_m.index_select(0, med), slot, n_codes * N_LEVELS) / count  # mean per (code, relation)
                msgs.append(agg.reshape(n_codes, -1) @ weights.reshape(-1, weights.shape[-1]))
            h_d, h_p, h_m = root(h_d) + msgs[0], root(h_p) + msgs[1], root(h_m)
        return h_d, h_p, h_m

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

    def _packed_side(self, mods, nodes, kind, h_x, h_m, c, state):
        code, med = nodes.pairs(kind, "med")
        if self.threshold is not None:
            keep = c > self.threshold
            code, med, c = code[keep], med[keep], c[keep]
        if self.dynamic:
            # the state term is per visit: add it per code node before gathering the pairs (one gather less)
            node_term = mods["code"](h_x) + mods["state"](state).index_select(0, getattr(nodes, f"{kind}_visit"))
            pre = (node_term.index_select(0, code) + mods["med"](h_m).index_select(0, med)
                   + c.unsqueeze(-1) * mods["effect"].weight.squeeze(-1))  # Linear(1, g) without bias: an outer product
            weight = 2 * torch.sigmoid(mods["score"](torch.tanh(pre)).squeeze(-1)) * c
        else:
            weight = c
        weight = weight / (segment_sum(weight.abs(), code, len(h_x)) + 1e-8).index_select(0, code)
        weight = weight.unsqueeze(-1)
        h_new = mods["norm"](h_x + weighted_message(mods["value"], h_m, weight, med, code, len(h_x)))
        to_med = weighted_message(mods["back"], h_x, weight, code, med, len(h_m))
        return h_new, to_med

    def packed(self, nodes, h_d, h_p, h_m, c_d, c_p):
        """Same as ``forward`` on unpadded nodes; ``c_d``/``c_p`` are the effects of ``nodes.pairs(kind, 'med')``."""
        n = nodes.n_visits
        state = self.state(torch.cat([segment_mean(h_d, nodes.diag_visit, n), segment_mean(h_p, nodes.proc_visit, n),
                                      segment_mean(h_m, nodes.med_visit, n)], -1))
        new_d, med_from_d = self._packed_side(self.sides["diag"], nodes, "diag", h_d, h_m, c_d, state)
        new_p, med_from_p = self._packed_side(self.sides["proc"], nodes, "proc", h_p, h_m, c_p, state)
        new_m = self.med_norm(h_m + med_from_d + med_from_p)
        out = []
        for h, new, visit in ((h_d, new_d, nodes.diag_visit), (h_p, new_p, nodes.proc_visit),
                              (h_m, new_m, nodes.med_visit)):
            if self.node_gate:
                new = new * 2 * torch.sigmoid(self.alpha(torch.cat([new, state.index_select(0, visit)], -1)))
            out.append(torch.where(nodes.first[visit].unsqueeze(-1), h, new))  # no history: nothing propagated
        return tuple(out)

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

    def packed(self, nodes, h_d, h_p, h_m):
        n = nodes.n_visits
        return torch.stack([segment_sum(h_d, nodes.diag_visit, n), segment_sum(h_p, nodes.proc_visit, n),
                            segment_sum(h_m, nodes.med_visit, n)], 1)

    def forward(self, h_d, h_p, h_m, mask_d, mask_p, mask_m):
        return torch.stack([(h * m.unsqueeze(-1)).sum(-2) for h, m in ((h_d, mask_d), (h_p, mask_p), (h_m, mask_m))], 1)


class CHARM(SumPooling):
    """CHARM [reconstruction, spec §1.4.3]: diag<->proc cross-attention, then channel x feature gating (max-fused).

    Channels are the three modalities ``U = [u_d; u_p; u_m]``; the channel branch gives one weight per modality,
    the feature branch one weight per feature, fused by an element-wise max as in the author's DREAM module.

    Choices the paper's text leaves open (chosen on validation Jaccard, docs/medication-models.md "CHARM variants"):

    * ``norm="pre"`` (default): ``H + g_att * MHA(LN H, LN K)``; the residual stream keeps the embedding scale, as
      sum pooling of the backbone does. ``"post"``: ``LN(H + g_att * MHA(H, K))`` (v1 of this reconstruction).
    * ``rezero=True`` (default): both residual branches (attention, channel x feature fusion) are scaled by learned
      scalars ``g_att``, ``g_ref`` that start at 0 (ReZero, Bachlechner et al. 2021), so at initialisation CHARM is
      sum pooling followed by ``out_norm`` and the refinement is learned from there. ``False``: ``g = 1`` (v1).
    * ``out_norm``: final LayerNorm of the refined visit vectors (spec step 6, default on).
    * ``fusion="features"``: ``max(a * U, b * U)`` (spec step 5); ``"maps"``: ``max(a, b) * U`` (DREAM fuses the
      two attention maps before multiplying them into the features).

    v1 (the first reconstruction, kept for the ablation): ``norm="post", rezero=False``.
    """

    def __init__(self, dim: int, heads: int = 4, reduction: int = 3, attend_med: bool = False, norm: str = "pre",
                 out_norm: bool = True, rezero: bool = True, fusion: str = "features"):
        super().__init__()
        self.attend_med, self.norm, self.fusion = attend_med, norm, fusion
        self.d_from_p = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.p_from_d = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_d, self.norm_p = nn.LayerNorm(dim), nn.LayerNorm(dim)
        if norm == "pre" and attend_med:
            self.norm_m = nn.LayerNorm(dim)
        self.channel = nn.Sequential(nn.Linear(3, reduction), nn.ReLU(), nn.Linear(reduction, 3), nn.Sigmoid())
        self.feature = nn.Linear(3, 1)
        self.out_norm = nn.LayerNorm(dim) if out_norm else nn.Identity()
        # ReZero (Bachlechner et al. 2021): both residual branches scaled by a learned scalar that starts at 0.
        self.rezero = rezero
        if rezero:
            self.attention_scale = nn.Parameter(torch.zeros(()))
            self.refine_scale = nn.Parameter(torch.zeros(()))

    @staticmethod
    def _attend(attn, query, keys, key_mask):
        # an empty key set would give NaN: attend to a zero key instead. Padding rows are not zero here (a padded
        # node's LayerNorm output is the norm's bias), so they are zeroed first, as the packed layout's zero key.
        keys = keys * key_mask.unsqueeze(-1)
        key_mask = key_mask.clone()
        key_mask[:, 0] |= ~key_mask.any(-1)
        out, _ = attn(query, keys, keys, key_padding_mask=~key_mask, need_weights=False)
        return out

    @staticmethod
    def _query_width(query_at, n_query: int) -> int:
        """Query positions of the score grid, padded to a multiple of 16 (see ``_packed_attend``)."""
        return -(-(int(query_at[1].max()) + 1 if n_query else 1) // 16) * 16

    @staticmethod
    def _key_mask(n_visits: int, heads: int, key_slot: torch.Tensor, key_width: int, dtype):
        """``(allowed [visits, keys], bias [visits * heads, keys, 1])`` of the score grid: keys present in their
        visit, as a 0 / -inf bias added to the scores; a visit without keys gets slot 0 (one zero key)."""
        allowed = torch.zeros(n_visits * key_width, dtype=torch.bool, device=key_slot.device)
        allowed = allowed.index_fill_(0, key_slot, True).view(n_visits, key_width)
        allowed[:, 0] |= ~allowed.any(-1)
        bias = torch.zeros(n_visits, key_width, dtype=dtype, device=key_slot.device)
        bias = bias.masked_fill_(~allowed, float("-inf"))[:, None, :, None].expand(n_visits, heads, key_width, 1)
        return allowed, bias.reshape(n_visits * heads, key_width, 1)

    @staticmethod
    def _packed_attend(attn: nn.MultiheadAttention, n_visits, query, query_at, keys, key_at, key_width):
        """``attn`` (its own weights) of unpadded query nodes over the key nodes of their own visit.

        ``*_at = (visit, position)`` of each node. Projections and the output map run on real nodes only; the
        attention itself runs on a per-visit ``[visits * heads, positions, head]`` layout (cheaper than
        materialising every (query, key) pair). A visit without keys attends to one zero key (position 0,
        projected: the bias), which is what the padded layout intends for an empty key set.

        The scores are laid out keys x queries and normalised over dim 1, with the query positions padded to a
        multiple of 16: PyTorch's CPU softmax is 5-20x slower when the contiguous dimension (5-30 codes) is not
        a multiple of the vector width. The key mask enters as an additive 0 / -inf bias of the same ``baddbmm``
        that computes the scaled scores (one kernel, no masked_fill pass).
        """
        d, heads = attn.embed_dim, attn.num_heads
        head = d // heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q_width = CHARM._query_width(query_at, len(query))
        # nodes go to flat (visit, position) rows with index_copy (its backward is index_select, not an index_put)
        q_row = query_at[0] * q_width + query_at[1]
        k_row = key_at[0] * key_width + key_at[1]
        q = query.new_zeros(n_visits * q_width, d).index_copy(0, q_row, F.linear(query, w[:d], b[:d]))
        # key/value slots start as the projection of a zero key (the bias): only a keyless visit's slot 0 is read
        kv = b[d:].expand(n_visits * key_width, 2 * d).index_copy(0, k_row, F.linear(keys, w[d:], b[d:]))
        q = q.view(n_visits, q_width, heads, head).permute(0, 2, 3, 1).reshape(n_visits * heads, head, q_width)
        k, v = kv.view(n_visits, key_width, 2, heads, head).permute(2, 0, 3, 1, 4).reshape(
            2, n_visits * heads, key_width, head)
        _, bias = CHARM._key_mask(n_visits, heads, k_row, key_width, query.dtype)
        scores = torch.baddbmm(bias, k, q, alpha=head ** -0.5)
        weight = torch.softmax(scores, 1)                                          # [visits * heads, keys, queries]
        out = (weight.transpose(1, 2) @ v).view(n_visits, heads, q_width, head).transpose(1, 2)
        return attn.out_proj(out.reshape(n_visits * q_width, d).index_select(0, q_row))

    @staticmethod
    def _pooled_attend(attn: nn.MultiheadAttention, n_visits, query, query_at, keys, key_at, key_width):
        """Per visit, the sum over its query nodes of ``_packed_attend``'s output: ``[visits, d]``.

        Same function with less arithmetic (pre-norm CHARM only, where sum pooling directly follows the residual
        attention). The output map is linear, so it moves after the sum: ``sum_q (W_o a_q + b_o) = W_o sum_q a_q +
        n_q b_o``; and ``sum_q a_q`` per head ``h`` is ``sum_k c_hk v_hk`` with ``c_hk = sum_q softmax_hqk`` (the
        softmax's column sums over the visit's real queries), where the value map also moves after the sum:
        ``sum_k c_hk (W_v^h x_k + b_v^h) = W_v^h (sum_k c_hk x_k) + n_q b_v^h``. Values and the output map then run
        on one row per visit instead of one per node, and no per-query attention output is formed.
        """
        d, heads = attn.embed_dim, attn.num_heads
        head = d // heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q_width = CHARM._query_width(query_at, len(query))
        # Queries and keys go straight to head-major rows ((visit, head), position) by one index_copy each, so no
        # permute copy is needed. Key slots without a node stay 0: they are masked, except a keyless visit's
        # slot 0, whose softmax weight is 1 whatever its score.
        head_of = torch.arange(heads, device=query.device)
        q_row = ((query_at[0] * heads).unsqueeze(-1) + head_of) * q_width + query_at[1].unsqueeze(-1)
        k_row = ((key_at[0] * heads).unsqueeze(-1) + head_of) * key_width + key_at[1].unsqueeze(-1)
        q = query.new_zeros(n_visits * heads * q_width, head).index_copy(
            0, q_row.view(-1), F.linear(query, w[:d], b[:d]).view(-1, head)).view(n_visits * heads, q_width, head)
        k = keys.new_zeros(n_visits * heads * key_width, head).index_copy(
            0, k_row.view(-1), F.linear(keys, w[d:2 * d], b[d:2 * d]).view(-1, head)).view(
            n_visits * heads, key_width, head)
        key_slot = key_at[0] * key_width + key_at[1]
        allowed, bias = CHARM._key_mask(n_visits, heads, key_slot, key_width, query.dtype)
        scores = torch.baddbmm(bias, k, q.transpose(1, 2), alpha=head ** -0.5)
        weight = torch.softmax(scores, 1)                                          # [visits * heads, keys, queries]
        # column sums over the real queries: a padded query column is 0, so its weights are the softmax of the
        # mask bias alone, uniform over the allowed keys; subtract those instead of masking the grid
        n_q = torch.bincount(query_at[0], minlength=n_visits).to(query.dtype).unsqueeze(-1)
        uniform = allowed / allowed.sum(-1, keepdim=True)
        column = weight.sum(-1).view(n_visits, heads, key_width) - ((q_width - n_q) * uniform).unsqueeze(1)
        # a keyless visit's one allowed key is a zero input (its value is the bias alone), as in _packed_attend
        x = keys.new_zeros(n_visits * key_width, d).index_copy(0, key_slot, keys).view(n_visits, key_width, d)
        pooled_x = (column @ x).reshape(n_visits, heads * d)                       # [visits, heads * d]
        # W_o concat_h(W_v^h s_h) = sum_h (W_o^h W_v^h) s_h: one [d, heads * d] map, formed once per call
        w_o = attn.out_proj.weight
        joint = torch.einsum("ohe,hei->ohi", w_o.view(d, heads, head), w[2 * d:].view(heads, head, d))
        return F.linear(pooled_x, joint.reshape(d, heads * d)) + n_q * (F.linear(b[2 * d:], w_o) + attn.out_proj.bias)

    def packed(self, nodes, h_d, h_p, h_m):
        """Same as ``forward`` on unpadded nodes."""
        at_d, at_p = (nodes.diag_visit, nodes.diag_pos), (nodes.proc_visit, nodes.proc_pos)
        q_d, q_p, q_m = self._attention_inputs(h_d, h_p, h_m)
        keys_d, key_at_d, width_d = q_p, at_p, nodes.width["proc"]
        keys_p, key_at_p, width_p = q_d, at_d, nodes.width["diag"]
        if self.attend_med:  # keys = [proc | med] and [diag | med] positions, as the padded concatenation
            keys_d, key_at_d = torch.cat([q_p, q_m]), (torch.cat([nodes.proc_visit, nodes.med_visit]),
                                                        torch.cat([nodes.proc_pos, nodes.med_pos + width_d]))
            keys_p, key_at_p = torch.cat([q_d, q_m]), (torch.cat([nodes.diag_visit, nodes.med_visit]),
                                                        torch.cat([nodes.diag_pos, nodes.med_pos + width_p]))
            width_d, width_p = width_d + nodes.width["med"], width_p + nodes.width["med"]
        n = nodes.n_visits
        if self.norm == "pre":
            # h + g * MHA(...) is only summed per visit next: sum the attention inside it (``_pooled_attend``)
            pooled = super().packed(nodes, h_d, h_p, h_m)
            att_d = self._pooled_attend(self.d_from_p, n, q_d, at_d, keys_d, key_at_d, width_d)
            att_p = self._pooled_attend(self.p_from_d, n, q_p, at_p, keys_p, key_at_p, width_p)
            attended = torch.stack([att_d, att_p, torch.zeros_like(att_d)], 1)
            if self.rezero:
                attended = self.attention_scale * attended
            return self._refine(pooled + attended)
        att_d = self._residual(h_d, self._packed_attend(self.d_from_p, n, q_d, at_d, keys_d, key_at_d, width_d),
                               self.norm_d)
        att_p = self._residual(h_p, self._packed_attend(self.p_from_d, n, q_p, at_p, keys_p, key_at_p, width_p),
                               self.norm_p)
        return self._refine(super().packed(nodes, att_d, att_p, h_m))

    def _attention_inputs(self, h_d, h_p, h_m):
        """What the attention reads: the nodes (post-norm) or their LayerNorm (pre-norm, residual stream untouched)."""
        if self.norm == "post":
            return h_d, h_p, h_m
        return self.norm_d(h_d), self.norm_p(h_p), self.norm_m(h_m) if self.attend_med else h_m

    def _residual(self, h, attended, norm):
        if self.rezero:
            attended = self.attention_scale * attended
        return norm(h + attended) if self.norm == "post" else h + attended

    def _refine(self, u):
        a = self.channel(u.mean(-1)).unsqueeze(-1)                           # [N, 3, 1]
        b = torch.sigmoid(self.feature(u.transpose(1, 2))).transpose(1, 2)   # [N, 1, d]
        fused = torch.maximum(a * u, b * u) if self.fusion == "features" else torch.maximum(a, b) * u
        if self.rezero:
            fused = self.refine_scale * fused
        return self.out_norm(u + fused)

    def forward(self, h_d, h_p, h_m, mask_d, mask_p, mask_m):
        q_d, q_p, q_m = self._attention_inputs(h_d, h_p, h_m)
        keys_d, keys_p, mk_d, mk_p = q_d, q_p, mask_d, mask_p
        if self.attend_med:
            keys_d, mk_d = torch.cat([q_d, q_m], 1), torch.cat([mask_d, mask_m], 1)
            keys_p, mk_p = torch.cat([q_p, q_m], 1), torch.cat([mask_p, mask_m], 1)
        att_d = self._residual(h_d, self._attend(self.d_from_p, q_d, keys_p, mk_p), self.norm_d)
        att_p = self._residual(h_p, self._attend(self.p_from_d, q_p, keys_d, mk_d), self.norm_p)
        return self._refine(super().forward(att_d, att_p, h_m, mask_d, mask_p, mask_m))


class CafeMed(MedRecModel):
    r"""CafeMed = CausalMed backbone + Causal Weight Generator + CHARM (switchable), DDI-controlled loss."""
    paper = "Ren et al., CafeMed (BIBM 2025, arXiv 2511.14064)"
    year = 2025
    uses = "diagnoses, procedures, past medications, causal effects, DDI graph"
    parity = "no official code: causal effects and RGCN follow CausalMed's code, CWG and CHARM rebuilt from the paper"

    # effects are risk differences in [-1, 1]; 'off' switches the CWG pair mask off ('none' would read as unset:
    # the command line parses it to None, which means "follow effect_threshold")
    option_bounds = {"cwg_gate_size": AT_LEAST_ONE, "charm_heads": AT_LEAST_ONE,
                     "charm_reduction": AT_LEAST_ONE, "effect_threshold": Bounds(-1, 1),
                     "cwg_effect_threshold": Bounds(-1, 1, words=("off",))}
    forced_options: dict = {}  # the registered ablations fix some switches (CausalMed, CafeMedNoCWG, ...)
    # the switches and CHARM / CWG settings this constructor reads with a default in the code; the ablations'
    # YAML files do not repeat them
    extra_config_keys = ("use_cwg", "use_charm", "node_layout", "cwg_node_gate", "charm_attend_med", "charm_fusion",
                         "charm_norm", "charm_out_norm", "charm_rezero")

    @classmethod
    def check_config(cls, config) -> None:
        config = _Overlay(config, cls.forced_options)
        heads, width = config_value(config, "charm_heads", 4), config_value(config, "embedding_size", 64)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (heads, width)):
            return  # wrong types and ranges are reported by check_types and the bounds
        if config_flag(config, "use_charm", True) and width % heads:
            raise UserError(f"{cls.__name__}: embedding_size={width} is not divisible by charm_heads={heads}",
                            fix="pick charm_heads among the divisors of embedding_size (e.g. 1, 2, 4, 8 for 64)")

    def __init__(self, config, dataset):
        if self.forced_options:
            config = _Overlay(config, self.forced_options)
        super().__init__(config, dataset)
        d = self.embedding_size
        self.use_cwg = config_flag(config, "use_cwg", True)
        self.use_charm = config_flag(config, "use_charm", True)
        self.static_graph = check_choice("static_graph", config_value(config, "static_graph", "rgcn"),
                                         ("rgcn", "linear"))
        self.head_input = check_choice("head_input", config_value(config, "head_input", "duplicated"),
                                       ("duplicated", "single"))
        # packed: unpadded code nodes (fast); padded: the [visits, codes, meds] layout, kept as the reference.
        self.node_layout = check_choice("node_layout", config_value(config, "node_layout", "packed"),
                                        ("packed", "padded"))
        effects = check_choice("causal_effects", config_value(config, "causal_effects", "train"), ("train", "zero"))
        threshold = float(config_value(config, "effect_threshold", 0.2))
        cwg_threshold = config_value(config, "cwg_effect_threshold", threshold)
        cwg_threshold = None if str(cwg_threshold).lower() == "off" else float(cwg_threshold)

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
                              config_flag(config, "charm_attend_med", False),
                              norm=check_choice("charm_norm", config_value(config, "charm_norm", "pre"),
                                                ("post", "pre")),
                              out_norm=config_flag(config, "charm_out_norm", True),
                              rezero=config_flag(config, "charm_rezero", True),
                              fusion=check_choice("charm_fusion", config_value(config, "charm_fusion", "features"),
                                                  ("features", "maps")))
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
        if self.node_layout == "padded":
            u = self._padded_visit_vectors(diag, proc, prev)
        else:
            u = self._packed_visit_vectors(VisitNodes(diag, proc, prev))
        out = u.new_zeros(*mask.shape, 3, u.shape[-1])
        out[mask] = u
        return out

    def _fuse(self, pairs):
        rho = self.fusion
        return [rho[i, 0] * h + rho[i, 1] * g for i, (h, g) in enumerate(pairs)]

    def _node_dropout(self, nodes: VisitNodes):
        """``self.dropout`` on the diagnosis, procedure and medication node embeddings as three scaled keep masks
        (the medication one also zeroes placeholder nodes), drawn as one uniform tensor: each element is kept with
        probability 1 - p and scaled by 1 / (1 - p), the distribution of ``nn.Dropout``, whose ``bernoulli_`` draw
        is ~2x slower on CPU than ``rand`` + compare. Eval mode / p = 0: no dropout."""
        codes = (nodes.diag_code, nodes.proc_code, nodes.med_code)
        sizes = [len(c) for c in codes]
        p = self.dropout.p
        if not self.training or p == 0:
            return None, None, (nodes.med_code > 0).unsqueeze(-1).to(self.med_emb.weight.dtype)
        keep = 1.0 - p
        masks = torch.rand(sum(sizes), self.embedding_size, device=nodes.med_code.device).lt_(keep)
        masks = masks.to(self.med_emb.weight.dtype).mul_(1.0 / keep if keep > 0 else 0.0)
        m_d, m_p, m_m = masks.split(sizes)
        return m_d, m_p, m_m * (nodes.med_code > 0).unsqueeze(-1)

    def _packed_visit_vectors(self, nodes: VisitNodes) -> torch.Tensor:
        m_d, m_p, m_m = self._node_dropout(nodes)
        h_d, h_p = self.diag_emb(nodes.diag_code), self.proc_emb(nodes.proc_code)
        h_d, h_p = (h_d, h_p) if m_d is None else (h_d * m_d, h_p * m_p)
        h_m = self.med_emb(nodes.med_code) * m_m
        code, med = nodes.pairs("diag", "med")
        c_d = self.c_dm[nodes.diag_code[code], nodes.med_code[med]]
        code, med = nodes.pairs("proc", "med")
        c_p = self.c_pm[nodes.proc_code[code], nodes.med_code[med]]
        g_d, g_p, g_m = self.graph.packed(nodes, h_d, h_p, h_m, c_d, c_p)
        return self.pool.packed(nodes, *self._fuse(((h_d, g_d), (h_p, g_p), (h_m, g_m))))

    def _padded_visit_vectors(self, diag, proc, prev) -> torch.Tensor:
        first = ~(prev > 0).any(-1)
        mask_d, mask_p, mask_m = diag > 0, proc > 0, prev > 0
        mask_m[:, 0] |= first  # placeholder med node (zero vector) for visits without history
        h_d = self.dropout(self.diag_emb(diag)) * mask_d.unsqueeze(-1)
        h_p = self.dropout(self.proc_emb(proc)) * mask_p.unsqueeze(-1)
        h_m = self.dropout(self.med_emb(prev)) * (prev > 0).unsqueeze(-1)
        c_d = self.c_dm[diag.unsqueeze(-1), prev.unsqueeze(-2)]
        c_p = self.c_pm[proc.unsqueeze(-1), prev.unsqueeze(-2)]
        g_d, g_p, g_m = self.graph(h_d, h_p, h_m, mask_d, mask_p, mask_m, c_d, c_p, first)
        f_d, f_p, f_m = self._fuse(((h_d, g_d), (h_p, g_p), (h_m, g_m)))
        return self.pool(f_d, f_p, f_m, mask_d, mask_p, mask_m)

    def forward(self, batch: VisitBatch) -> torch.Tensor:
        if self.node_layout == "packed":
            logits = self.visit_logits(batch)
            return logits.new_zeros(*batch.visit_mask.shape, logits.shape[-1]).index_put((batch.visit_mask,), logits)
        u = self.visit_vectors(batch)
        outs = [gru(u[:, :, i])[0] for i, gru in enumerate(self.grus)]
        # CausalMed concatenates GRU hidden state and last output, identical for one layer (spec §7.2 item 7).
        z = torch.cat(outs * 2 if self.head_input == "duplicated" else outs, -1)
        return self.head(F.relu(z))

    def visit_logits(self, batch: VisitBatch) -> torch.Tensor:
        """``[N, n_med]`` logits of the real visits in (patient, visit) order: ``forward(batch)[visit_mask]``.

        Packed layout: the GRUs run on packed visit sequences (no padded step) as one autograd node
        (``stacked_gru``), and the duplicated head input ``[o; o]`` is one product with the summed weight halves,
        ``[o; o] W^T = o (W_1 + W_2)^T`` (same function, half the head's arithmetic).
        """
        if self.node_layout == "padded":
            return self.forward(batch)[batch.visit_mask]
        mask = batch.visit_mask
        diag, proc, prev = batch.diag[mask], batch.proc[mask], previous_visit(batch.med)[mask]
        u = self._packed_visit_vectors(VisitNodes(diag, proc, prev))                  # [N, 3, d]
        seq = PackedVisits(mask)
        out = stacked_gru(self.grus, u.index_select(0, seq.visit_of_packed).transpose(0, 1).contiguous(),
                          seq.batch_sizes)                                            # [3, N, d] packed order
        z = out.index_select(1, seq.packed_of_visit).transpose(0, 1).reshape(len(u), -1)
        weight = self.head.weight
        if self.head_input == "duplicated":
            weight = weight[:, :z.shape[-1]] + weight[:, z.shape[-1]:]
        return F.linear(F.relu(z), weight, self.head.bias)

    def calculate_loss(self, batch: VisitBatch) -> torch.Tensor:
        return self.visit_losses(self.visit_logits(batch), batch.target[batch.visit_mask]).mean()


class CausalMed(CafeMed):
    r"""The CausalMed backbone (CIKM 2024) as reproduced here: CafeMed with ``use_cwg = use_charm = False``."""
    paper = "Li et al., CausalMed (CIKM 2024)"
    year = 2024
    uses = "diagnoses, procedures, past medications, causal effects, DDI graph"
    parity = "= CafeMed with CWG and CHARM off (`test_medrec_models.py`); causal effects = CausalMed's formula"

    forced_options = {"use_cwg": False, "use_charm": False}


class CafeMedNoCWG(CafeMed):
    r"""Ablation "w/o CWG": CafeMed with ``use_cwg = False`` (static causal graph, CHARM kept)."""
    paper = "CafeMed (BIBM 2025) ablation without CWG"
    year = 2025
    uses = "diagnoses, procedures, past medications, causal effects, DDI graph"
    parity = "ablation of CafeMed"

    forced_options = {"use_cwg": False}


class CafeMedNoCHARM(CafeMed):
    r"""Ablation "w/o CHARM": CafeMed with ``use_charm = False`` (sum pooling, CWG kept)."""
    paper = "CafeMed (BIBM 2025) ablation without CHARM"
    year = 2025
    uses = "diagnoses, procedures, past medications, causal effects, DDI graph"
    parity = "ablation of CafeMed"

    forced_options = {"use_charm": False}


class _Overlay:
    """Read-only view of a config with a few keys forced."""

    def __init__(self, config, overrides):
        self._config, self._overrides = config, overrides

    def __getitem__(self, key):
        return self._overrides[key] if key in self._overrides else config_value(self._config, key)
