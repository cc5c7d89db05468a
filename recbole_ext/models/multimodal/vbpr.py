"""VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback.

Reference: Ruining He, Julian McAuley. AAAI 2016. Behaviour of MMRec's "recommended version"
(``enoche/MMRec`` ``src/models/vbpr.py``): an item is ``[ID embedding (d) | Linear([text | image]) (d)]``, a user
is one ``2d`` vector, raw features are frozen, loss = BPR + ``reg_weight`` * EmbLoss where MMRec's EmbLoss is the
sum of the (unsquared) Frobenius norms of the batch's user/pos/neg matrices divided by the batch length.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from recbole_ext.models.multimodal.base import MultimodalRecommender
from recbole_ext.options import config_value

_BPR_GAMMA = 1e-10  # MMRec's BPRLoss: -log(gamma + sigmoid(pos - neg))


class VBPR(MultimodalRecommender):
    paper = "He & McAuley, VBPR (AAAI 2016)"
    year = 2016
    uses = "interactions, image + text features"
    parity = "none yet"
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = int(config_value(config, "embedding_size", 64))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        d = self.embedding_size
        self.u_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * d)))
        self.i_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        # MMRec feeds concat(text, image); one Linear over the concatenation keeps its init (xavier_normal over the
        # full fan-in, zero bias) while the forward applies the column blocks separately, so the concatenated
        # [n_items, 4480] table is never materialised.
        self.feature_order = [m for m in ("text", "image") if m in self.modalities]
        widths = [self.raw_feature(m).shape[1] for m in self.feature_order]
        self.item_linear = nn.Linear(sum(widths), d)
        nn.init.xavier_normal_(self.item_linear.weight)
        nn.init.zeros_(self.item_linear.bias)
        self.column_blocks = []
        start = 0
        for w in widths:
            self.column_blocks.append((start, start + w))
            start += w

    def content_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        out = self.item_linear.bias
        for m, (a, b) in zip(self.feature_order, self.column_blocks):
            x = self.raw_feature(m) if items is None else self.raw_feature(m)[items]
            out = out + x @ self.item_linear.weight[:, a:b].T
        return out

    def item_rows(self, items: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.i_embedding if items is None else self.i_embedding[items]
        return torch.cat([ids, self.content_vectors(items)], dim=-1)

    def compute_vectors(self):
        return self.u_embedding, self.item_rows()

    def calculate_loss(self, interaction):
        users, pos, neg = self.batch_ids(interaction)
        u = self.u_embedding[users]
        # project each distinct batch item once (about half the rows of pos ++ neg on Amazon-sized data)
        items, inverse = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        rows = self.item_rows(items)[inverse]
        p, n = rows[:len(pos)], rows[len(pos):]
        diff = (u * p).sum(-1) - (u * n).sum(-1)
        bpr = -torch.log(_BPR_GAMMA + torch.sigmoid(diff)).mean()
        emb = (u.norm(p=2) + p.norm(p=2) + n.norm(p=2)) / n.shape[0]
        return bpr + self.reg_weight * emb
