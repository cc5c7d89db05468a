"""A reference medication model for the task's own tests: logistic regression on multi-hot codes.

p(m | visit t) = sigmoid(b_m + sum_{d in D_t} W_dm + sum_{p in P_t} V_pm + sum_{m' in M_{t-1}} U_m'm). Not a
published baseline; it only exercises the VisitBatch contract and MedRecTrainer end to end.
"""
import torch
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import InputType, ModelType
from torch import nn


class MedLogReg(AbstractRecommender):
    type = ModelType.GENERAL
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__()
        self.n_med = dataset.n_med
        self.diag = nn.Embedding(dataset.n_diag + 1, self.n_med, padding_idx=0)
        self.proc = nn.Embedding(dataset.n_proc + 1, self.n_med, padding_idx=0)
        self.prev = nn.Embedding(dataset.n_med + 1, self.n_med, padding_idx=0)
        for emb in (self.diag, self.proc, self.prev):
            nn.init.zeros_(emb.weight)
        self.bias = nn.Parameter(torch.full((self.n_med,), -2.0))
        self.loss = nn.BCEWithLogitsLoss(reduction="none")

    def forward(self, batch):
        prev_med = torch.zeros_like(batch.med)
        prev_med[:, 1:] = batch.med[:, :-1]
        return (self.diag(batch.diag).sum(2) + self.proc(batch.proc).sum(2) + self.prev(prev_med).sum(2)
                + self.bias)

    def calculate_loss(self, batch):
        loss = self.loss(self.forward(batch), batch.target).mean(-1)
        return loss[batch.visit_mask].mean()

    def predict_visits(self, batch):
        return torch.sigmoid(self.forward(batch))
