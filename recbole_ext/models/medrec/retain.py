"""RETAIN: An Interpretable Predictive Model for Healthcare using Reverse Time Attention Mechanism.

Reference: Edward Choi et al., NeurIPS 2016; used as a medication-recommendation baseline by GAMENet (AAAI 2019),
SafeDrug (IJCAI 2021) and CausalMed (CIKM 2024).

Visit k is embedded as the sum of the embeddings of its diagnoses, procedures and the previous visit's medications
(one shared table with offsets, dropout on each code embedding as published). Two GRUs give visit-level weights
``alpha`` and feature-level gates ``beta = tanh(W h)``; the context ``c_t = sum_k alpha_tk * beta_k * v_k`` is
mapped to medication logits. Every target visit t is scored in one pass with a causal (lower-triangular) mask; the
GRUs run forward in time as in the baselines' medication-recommendation code, so the prefix outputs are exact.

``visit_attention``: ``published`` (default) is the GAMENet/SafeDrug baseline code, whose softmax runs over the
size-1 last axis of ``alpha_li(g)`` ``[visits, 1]``, so every ``alpha_tk`` is 1 and ``alpha_gru``/``alpha_li``
never learn (they are not built here); ``softmax`` is the paper's softmax over visits 1..t.

Deviation: the baseline scripts score visit t from the complete visits before it (their diagnoses, procedures and
medications; not visit t's own diagnoses and procedures, and patients with one visit are skipped); here visit t's
row sees visit t's diagnoses and procedures and the medications up to t-1 (the task's input, as for every model).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.models.medrec.base import MedRecModel, previous_visit
from recbole_ext.options import check_choice, config_value


class RETAIN(MedRecModel):
    paper = "Choi et al., RETAIN (NeurIPS 2016)"
    year = 2016
    uses = "diagnoses, procedures, past medications"
    parity = ("logits, loss + every gradient = float64 transcription of the SafeDrug repository's RETAIN "
              "(`test_medrec_official_parity.py`)")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = self.embedding_size
        self.code_emb = nn.Embedding(self.n_diag + self.n_proc + self.n_med + 1, d, padding_idx=0)
        self.dropout = nn.Dropout(float(config_value(config, "dropout_prob", 0.5)))
        self.visit_attention = check_choice("visit_attention", config_value(config, "visit_attention", "published"),
                                            ("published", "softmax"))
        if self.visit_attention == "softmax":  # published: the visit weights do not depend on alpha_gru/alpha_li,
            self.alpha_gru = nn.GRU(d, d, batch_first=True)  # which would never learn (and idle parameters
            self.alpha_li = nn.Linear(d, 1)                   # would stall a data-parallel run)
        self.beta_gru = nn.GRU(d, d, batch_first=True)
        self.beta_li = nn.Linear(d, d)
        self.output = nn.Linear(d, self.n_med)

    def forward(self, batch: VisitBatch) -> torch.Tensor:
        prev = previous_visit(batch.med)
        codes = torch.cat([batch.diag,
                           torch.where(batch.proc > 0, batch.proc + self.n_diag, 0),
                           torch.where(prev > 0, prev + self.n_diag + self.n_proc, 0)], -1)
        v = (self.dropout(self.code_emb(codes)) * (codes > 0).unsqueeze(-1)).sum(-2)   # [P, T, d]
        h, _ = self.beta_gru(v)
        n_t = v.shape[1]
        causal = torch.ones(n_t, n_t, dtype=torch.bool, device=v.device).tril()
        causal = causal & batch.visit_mask.unsqueeze(1)                     # [P, t, k]
        if self.visit_attention == "published":
            alpha = causal.to(v.dtype)                                      # softmax over a size-1 axis: all ones
        else:
            g, _ = self.alpha_gru(v)
            e = self.alpha_li(g).squeeze(-1)                                # [P, T]
            scores = e.unsqueeze(1).expand(-1, n_t, -1).masked_fill(~causal, float("-inf"))
            alpha = torch.softmax(scores, -1)                               # [P, t, k]
        context = alpha @ (torch.tanh(self.beta_li(h)) * v)                 # [P, t, d]
        return self.output(context)
