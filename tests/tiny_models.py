"""A minimal inner-product model used to test the model zoo's registration path."""
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.loss import BPRLoss
from recbole.utils import InputType


class TinyMF(GeneralRecommender):
    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.user_emb = torch.nn.Embedding(self.n_users, config["tiny_dim"])
        self.item_emb = torch.nn.Embedding(self.n_items, config["tiny_dim"])
        self.loss = BPRLoss()

    def calculate_loss(self, interaction):
        u = self.user_emb(interaction[self.USER_ID])
        pos = (u * self.item_emb(interaction[self.ITEM_ID])).sum(-1)
        neg = (u * self.item_emb(interaction[self.NEG_ITEM_ID])).sum(-1)
        return self.loss(pos, neg)

    def predict(self, interaction):
        return (self.user_emb(interaction[self.USER_ID]) * self.item_emb(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        return (self.user_emb(interaction[self.USER_ID]) @ self.item_emb.weight.T).reshape(-1)
