"""FaissEvalMixin against RecBole's real dense ``Trainer._full_sort_batch_eval`` on a tiny inner-product model."""
import logging

import numpy as np
import torch

from recbole.data.interaction import Interaction
from recbole.trainer import Trainer

from recbole_ext.retrieval.evaluation import FaissEvalMixin, with_faiss_eval

N_USERS, N_ITEMS, DIM = 6, 40, 4


class TinyIPModel(torch.nn.Module):
    """Scores are user . item; exposes the retrieval contract and counts how often vectors are computed."""

    def __init__(self, with_vectors=True):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.users = torch.nn.Parameter(torch.randn(N_USERS, DIM, generator=g))
        self.items = torch.nn.Parameter(torch.randn(N_ITEMS, DIM, generator=g))
        self.vector_calls = 0
        if not with_vectors:
            self.user_vectors = None
            self.item_vectors = None

    def user_vectors(self, user_ids=None):
        self.vector_calls += 1
        return self.users if user_ids is None else self.users[user_ids]

    def item_vectors(self):
        return self.items

    def full_sort_predict(self, interaction):
        return (self.users[interaction["user_id"]] @ self.items.T).view(-1)


def _trainer(cls, model):
    trainer = cls.__new__(cls)  # no RecBole Config needed for the scoring hook
    trainer.model = model
    trainer.config = {"USER_ID_FIELD": "user_id", "topk": [3, 5], "faiss_index": None}
    trainer.device = torch.device("cpu")
    trainer.tot_item_num = N_ITEMS
    return trainer


def _batch():
    users = torch.tensor([1, 3, 5])
    # User row 0 has seen its two best items; row 2 has seen nothing.
    model = TinyIPModel()
    best = torch.argsort(model.users[1] @ model.items.T, descending=True)
    best = best[best != 0][:2]
    hist_u = torch.tensor([0, 0, 1, 1, 1])
    hist_i = torch.cat([best, torch.tensor([7, 8, 9])])
    return (Interaction({"user_id": users}), (hist_u, hist_i), None, None), best


def test_faiss_scores_give_the_same_top_k_as_dense_scoring():
    batched, best_seen = _batch()
    dense_trainer = _trainer(Trainer, TinyIPModel())
    faiss_trainer = _trainer(with_faiss_eval(Trainer), TinyIPModel())
    _, dense, _, _ = Trainer._full_sort_batch_eval(dense_trainer, batched)
    _, approx, _, _ = faiss_trainer._full_sort_batch_eval(batched)
    d_val, d_idx = torch.topk(dense, 5, dim=1)
    f_val, f_idx = torch.topk(approx, 5, dim=1)
    assert torch.equal(d_idx, f_idx)
    torch.testing.assert_close(d_val, f_val)
    assert not set(best_seen.tolist()) & set(f_idx[0].tolist())  # seen top items masked by id
    assert torch.isneginf(approx[:, 0]).all()
    # Vectors are taken once per evaluation, not per batch.
    faiss_trainer._full_sort_batch_eval(batched)
    assert faiss_trainer.model.vector_calls == 1


def test_models_without_vectors_fall_back_to_dense_with_one_notice(caplog):
    batched, _ = _batch()
    trainer = _trainer(with_faiss_eval(Trainer), TinyIPModel(with_vectors=False))
    with caplog.at_level(logging.WARNING):
        _, scores, _, _ = trainer._full_sort_batch_eval(batched)
        trainer._full_sort_batch_eval(batched)
    assert sum("dense full-sort" in r.getMessage() for r in caplog.records) == 1
    expected = TinyIPModel().full_sort_predict(batched[0]).view(3, -1)
    assert torch.equal(torch.isfinite(scores).sum(1), torch.tensor([N_ITEMS - 3, N_ITEMS - 4, N_ITEMS - 1]))
    torch.testing.assert_close(scores[:, 1:][torch.isfinite(scores[:, 1:])],
                               expected[:, 1:][torch.isfinite(scores[:, 1:])])


def test_mixin_composes_with_other_trainers_and_rebuilds_per_evaluate():
    calls = []

    class ProtocolTrainer(Trainer):
        def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
            calls.append("protocol")
            assert self._faiss_state is None  # the index of a previous evaluate is never reused
            self._full_sort_batch_eval(eval_data)
            return {"recall@5": 1.0}

    cls = with_faiss_eval(ProtocolTrainer)
    assert cls.__mro__[1] is FaissEvalMixin and issubclass(cls, ProtocolTrainer)
    assert with_faiss_eval(cls) is cls
    trainer = _trainer(cls, TinyIPModel())
    batched, _ = _batch()
    assert trainer.evaluate(batched, load_best_model=False) == {"recall@5": 1.0}
    assert trainer.evaluate(batched) == {"recall@5": 1.0}
    assert calls == ["protocol", "protocol"] and trainer.model.vector_calls == 2
    assert trainer._faiss_state is None


def test_short_approximate_results_never_credit_an_unretrieved_positive():
    from recbole_ext.retrieval.vectors import final_vectors

    class OneResultIndex:  # an approximate index that found a single item per user
        def search_raw(self, queries, fetch):
            return np.full((len(queries), 1), 9.0, np.float32), np.full((len(queries), 1), 11, np.int64)

    model = TinyIPModel()
    trainer = _trainer(with_faiss_eval(Trainer), model)
    trainer._faiss_state = (final_vectors(model), OneResultIndex())
    interaction = Interaction({"user_id": torch.tensor([1, 2])})
    positive_u, positive_i = torch.tensor([0, 0, 1]), torch.tensor([11, 12, 30])
    _, scores, _, _ = trainer._full_sort_batch_eval((interaction, None, positive_u, positive_i))
    top = torch.topk(scores, 5, dim=1).indices
    assert top[:, 0].tolist() == [11, 11]
    assert 12 not in top[0].tolist() and 30 not in top[1].tolist()
    assert torch.isneginf(scores[0, 12]) and torch.isneginf(scores[1, 30]) and torch.isfinite(scores[0, 30])


def test_vectors_that_do_not_reproduce_the_models_scores_fall_back_to_dense(caplog):
    class BiasedModel(TinyIPModel):  # breaks the contract: its score has an item bias the vectors lack
        def full_sort_predict(self, interaction):
            return (super().full_sort_predict(interaction).view(-1, N_ITEMS) + torch.arange(N_ITEMS)).view(-1)

    batched, _ = _batch()
    trainer = _trainer(with_faiss_eval(Trainer), BiasedModel())
    with caplog.at_level(logging.WARNING):
        _, scores, _, _ = trainer._full_sort_batch_eval(batched)
    assert "differs from user_vectors" in caplog.text and trainer._faiss_state is False
    _, dense, _, _ = Trainer._full_sort_batch_eval(_trainer(Trainer, BiasedModel()), batched)
    assert torch.equal(scores, dense)
