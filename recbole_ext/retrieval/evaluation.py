"""Full-sort evaluation through a FAISS index (``retrieval: faiss``).

``FaissEvalMixin`` overrides RecBole's ``Trainer._full_sort_batch_eval`` hook. At the first batch of each
``evaluate`` (after the best checkpoint has been reloaded) it takes the model's final vectors once and builds the
index; each batch then searches ``maxK`` + the longest history in the batch, scatters the results into the dense
score matrix RecBole's collector expects, and masks PAD and history by item id exactly as the dense path does.
With the default exact index (``IndexFlatIP``) metrics equal dense scoring. Models without final vectors fall back
to the dense path of the trainer it is mixed into, with one logged notice.

Config keys: ``faiss_index`` (index_factory string, default Flat), ``faiss_nprobe``, ``faiss_ef_search``.
"""
from __future__ import annotations

from logging import getLogger

import numpy as np
import torch

from recbole_ext.options import config_value
from recbole_ext.retrieval.index import DEFAULT_FACTORY, ItemIndex, choose_faiss_device
from recbole_ext.retrieval.vectors import final_vectors


class FaissEvalMixin:
    """Mix in before a RecBole ``Trainer`` subclass (``class T(FaissEvalMixin, SomeTrainer)``)."""

    _faiss_state = None          # (FinalVectors, ItemIndex) for the evaluation in progress, or False if unsupported
    _faiss_fallback_logged = False

    def evaluate(self, eval_data, *args, **kwargs):
        self._faiss_state = None  # the index is rebuilt lazily, after a best-model reload inside evaluate()
        try:
            return super().evaluate(eval_data, *args, **kwargs)
        finally:
            self._faiss_state = None

    def _faiss_prepare(self):
        vectors = final_vectors(self.model)
        if vectors is None:
            if not self._faiss_fallback_logged:
                getLogger().warning(
                    "retrieval: faiss -- %s does not expose user_vectors()/item_vectors() (its score is not a "
                    "plain inner product); using dense full-sort scoring instead", type(self.model).__name__)
                self._faiss_fallback_logged = True
            return False
        config = self.config
        index = ItemIndex.build(
            vectors.items.cpu(),
            factory=config_value(config, "faiss_index", DEFAULT_FACTORY),
            nprobe=config_value(config, "faiss_nprobe"),
            ef_search=config_value(config, "faiss_ef_search"),
            seed=int(config_value(config, "seed", 0)),
            device=choose_faiss_device(config_value(config, "faiss_device", "auto"), self.device),
        )
        return vectors, index

    def _vectors_reproduce_scores(self, vectors, interaction) -> bool:
        """Check the contract on the batch's first user: ``full_sort_predict == user . items``."""
        first = interaction[:1].to(self.device)
        try:
            dense = self.model.full_sort_predict(first).view(-1).float().cpu()
        except NotImplementedError:
            return True  # nothing to compare with; the model's vectors are its only full-sort scorer
        user = first[self.config["USER_ID_FIELD"]].cpu()
        from_vectors = (vectors.user_rows(user) @ vectors.items.T).view(-1).float().cpu()
        scale = float(dense.abs().max()) or 1.0
        if dense.shape == from_vectors.shape and torch.allclose(dense, from_vectors, rtol=1e-4, atol=1e-5 * scale):
            return True
        getLogger().warning("retrieval: faiss -- %s.full_sort_predict differs from user_vectors() . item_vectors(); "
                            "using dense full-sort scoring for this evaluation", type(self.model).__name__)
        return False

    @torch.no_grad()
    def _full_sort_batch_eval(self, batched_data):
        interaction, history_index, positive_u, positive_i = batched_data
        if self._faiss_state is None:
            self._faiss_state = self._faiss_prepare()
            if self._faiss_state and not self._vectors_reproduce_scores(self._faiss_state[0], interaction):
                self._faiss_state = False
        if self._faiss_state is False:
            return super()._full_sort_batch_eval(batched_data)
        vectors, index = self._faiss_state
        users = interaction[self.config["USER_ID_FIELD"]]
        n_rows = len(users)
        max_k = max(self.config["topk"]) if isinstance(self.config["topk"], (list, tuple)) else int(
            self.config["topk"])
        longest = 0
        if history_index is not None and len(history_index[0]):
            longest = int(torch.bincount(history_index[0].cpu(), minlength=n_rows).max())
        # +1: the PAD row is not indexed, but keep the spare slot so a K'-th tie cannot starve the top-K.
        scores_k, ids_k = index.search_raw(vectors.user_rows(users.cpu()).cpu().numpy(), max_k + longest + 1)
        # Items the index did not return get the lowest finite score, so they rank after every retrieved item but
        # before masked ones; an unretrieved positive gets -inf so a short (approximate) result list can never
        # be padded with a hit by torch.topk's tie order.
        scores = torch.full((n_rows, self.tot_item_num), torch.finfo(torch.float32).min, device=self.device)
        found = ids_k >= 0
        rows = torch.from_numpy(np.broadcast_to(np.arange(n_rows)[:, None], ids_k.shape)[found]).to(self.device)
        items = torch.from_numpy(ids_k[found]).to(self.device)
        scores[rows, items] = torch.from_numpy(scores_k[found]).to(self.device)
        if positive_u is not None and len(positive_u):
            retrieved = torch.zeros_like(scores, dtype=torch.bool)
            retrieved[rows, items] = True
            missed = ~retrieved[positive_u, positive_i]
            scores[positive_u[missed], positive_i[missed]] = -np.inf
        scores[:, 0] = -np.inf
        if history_index is not None:
            scores[history_index] = -np.inf
        return interaction, scores, positive_u, positive_i


def with_faiss_eval(trainer_cls: type) -> type:
    """``trainer_cls`` with FAISS full-sort evaluation mixed in (idempotent)."""
    if issubclass(trainer_cls, FaissEvalMixin):
        return trainer_cls
    return type(f"Faiss{trainer_cls.__name__}", (FaissEvalMixin, trainer_cls),
                {"__module__": __name__, "__doc__": f"{trainer_cls.__name__} evaluated through a FAISS index."})
