"""GAMENet: Graph Augmented MEmory Networks for Recommending Medication Combination.

Reference: Junyuan Shang, Cao Xiao, Tengfei Ma, Hongyan Li, Jimeng Sun. AAAI 2019.

Two GRUs over per-visit diagnosis / procedure embedding means (dropout on each code embedding first, as in the
published code) give a query per visit. A drug memory bank is the
output of a two-layer GCN over the co-prescription (EHR) graph minus ``lambda`` times a GCN over the DDI graph.
The query reads the memory bank (fact 1) and a dynamic memory of earlier visits (keys: their queries, values: their
medication multi-hots, read through the memory bank; fact 2). Output MLP on ``[query; fact1; fact2]``.
All target visits of a patient are scored in one pass: the dynamic memory is a strictly-causal attention over the
earlier visits (the first visit uses fact 2 = fact 1, as in the paper's code).

Deviations: the co-prescription graph is built from TRAINING visits only (the released preprocessing uses all
records); the DDI-aware loss uses this package's DDI-controlled schedule (``base.py``) with ``target_ddi`` 0.05
instead of GAMENet's simulated-annealing acceptance.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.models.medrec.base import DiagProcHistory, MedRecModel
from recbole_ext.models.medrec.causal import visits_to_csr
from recbole_ext.options import DROPOUT
from recbole_ext.options import config_flag, config_value


def co_prescription_graph(med_lists, n_med: int) -> torch.Tensor:
    """0/1 ``[n_med, n_med]``: medications prescribed together in at least one training visit."""
    y = visits_to_csr(med_lists, n_med, "medication")
    co = (y.T @ y).toarray() > 0
    co[range(n_med), range(n_med)] = False
    return torch.from_numpy(co.astype("float32"))


class GraphMemory(nn.Module):
    """Two-layer GCN on identity node features (GAMENet's ``GraphConvolution``, bias after the propagation):
    ``A relu(A W1 + b1) W2 + b2`` with ``A`` the row-normalised adjacency with self-loops. ``A`` is normalised
    in the forward pass from the 0/1 buffer, so a float64 model gets exact row sums (a float32 buffer converted
    later would keep float32 rounding)."""

    def __init__(self, adj: torch.Tensor, dim: int, dropout: float):
        super().__init__()
        self.register_buffer("adj01", adj + torch.eye(adj.shape[0]), persistent=False)
        self.w1 = nn.Linear(adj.shape[0], dim)
        self.w2 = nn.Linear(dim, dim)
        bound = 1.0 / dim ** 0.5  # GraphConvolution's init: weights and biases from +-1/sqrt(out_features)
        for layer in (self.w1, self.w2):
            nn.init.uniform_(layer.weight, -bound, bound)
            nn.init.uniform_(layer.bias, -bound, bound)
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> torch.Tensor:
        adj = self.adj01 / self.adj01.sum(-1, keepdim=True)
        h = self.dropout(F.relu(adj @ self.w1.weight.T + self.w1.bias))
        return adj @ (h @ self.w2.weight.T) + self.w2.bias


class GAMENet(MedRecModel):
    paper = "Shang et al., GAMENet (AAAI 2019)"
    year = 2019
    uses = "diagnoses, procedures, past medications, EHR + DDI graphs"
    parity = ("logits, loss + every gradient = float64 transcription of the official code, annealing branch "
              "aside (`test_medrec_official_parity.py`)")
    option_bounds = {"gcn_dropout_prob": DROPOUT}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = self.embedding_size
        # as published: dropout on every code embedding, then the mean over the visit's codes
        self.history = DiagProcHistory(self.n_diag, self.n_proc, d, 2 * d,
                                       float(config_value(config, "dropout_prob", 0.5)), code_dropout=True, pool="mean")
        self.query = nn.Sequential(nn.ReLU(), nn.Linear(4 * d, d))
        ehr = co_prescription_graph(dataset.train_visits()[2], self.n_med)
        gcn_dropout = float(config_value(config, "gcn_dropout_prob", 0.3))
        self.ehr_gcn = GraphMemory(ehr, d, gcn_dropout)
        self.use_ddi_graph = config_flag(config, "use_ddi_graph", True)
        if self.use_ddi_graph:
            self.ddi_gcn = GraphMemory(self.ddi_adj.cpu(), d, gcn_dropout)
            self.ddi_weight = nn.Parameter(torch.empty(1).uniform_(-0.1, 0.1))  # lambda, learned; GAMENet's init
        self.output = nn.Sequential(nn.ReLU(), nn.Linear(3 * d, 2 * d), nn.ReLU(), nn.Linear(2 * d, self.n_med))

    def forward(self, batch: VisitBatch) -> torch.Tensor:
        q = self.query(self.history(batch))                                # [P, T, d]
        memory = self.ehr_gcn()
        if self.use_ddi_graph:
            memory = memory - self.ddi_weight * self.ddi_gcn()             # [M, d]
        fact1 = torch.softmax(q @ memory.T, -1) @ memory                  # [P, T, d]
        n_t = q.shape[1]
        earlier = torch.ones(n_t, n_t, dtype=torch.bool, device=q.device).tril(-1)
        earlier = earlier & batch.visit_mask.unsqueeze(1)                  # [P, t, k<t]
        scores = (q @ q.transpose(1, 2)).masked_fill(~earlier, float("-inf"))
        has_history = earlier.any(-1, keepdim=True)
        weights = torch.softmax(scores.masked_fill(~has_history, 0.0), -1) * has_history
        fact2 = (weights @ batch.target) @ memory                          # [P, T, d]
        fact2 = torch.where(has_history, fact2, fact1)
        return self.output(torch.cat([q, fact1, fact2], -1))
