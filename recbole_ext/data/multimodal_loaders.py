"""The MMRec protocol's training sampler and evaluation loader, for any RecBole general recommender.

* one uniform negative per positive, drawn from items seen in training, rejecting the user's training items
  (RecBole draws from all items): ``TrainItemNegativeSampler``;
* RecBole's training loader with page-locked batches when the run's device is CUDA: ``MMRecTrainDataLoader``;
* full ranking over all items with ONLY the given history (the training items) masked, at validation and test
  (RecBole masks train+valid at test), ``eval_users_per_batch`` users per batch: ``MMRecEvalDataLoader``.
"""
from __future__ import annotations

from logging import getLogger

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader, TrainDataLoader
from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader
from recbole.data.interaction import Interaction

from recbole_ext.errors import UserError
from recbole_ext.utils.device import wants_pinned_memory
from recbole_ext.utils.segments import indptr_from_segment_ids


def pairs_csr(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int):
    """Distinct (user, item) pairs as CSR arrays (indptr [n_users+1], indices sorted per user)."""
    keys = np.unique(users.astype(np.int64) * n_items + items.astype(np.int64))
    rows, cols = keys // n_items, keys % n_items
    indptr = indptr_from_segment_ids(rows, n_users)
    return indptr, cols, keys


def pinned_interaction(interaction: Interaction) -> Interaction:
    """The same batch with every tensor in page-locked host memory."""
    return Interaction({key: value.pin_memory() for key, value in interaction.interaction.items()})


class MMRecTrainDataLoader(TrainDataLoader):
    """RecBole's ``TrainDataLoader``; its batches are page-locked when the run's device is CUDA, so the trainer's
    copy to the GPU goes by DMA without a staging copy (torch's own ``pin_memory=True`` leaves RecBole's
    ``Interaction`` batches as they are: it pins tensors, mappings and sequences only)."""

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self.pin_batches = wants_pinned_memory(config["device"])

    def collate_fn(self, index):
        batch = super().collate_fn(index)
        return pinned_interaction(batch) if self.pin_batches else batch


class TrainItemNegativeSampler:
    """Uniform negatives from the items that occur in training, never one of the user's training items.

    RecBole's ``Sampler`` interface as far as the training dataloader uses it (``sample_by_user_ids``, ``phase``,
    ``used_ids``). Vectorised rejection sampling with numpy's global RNG, which ``init_seed`` seeds.
    """

    phase = "train"

    def __init__(self, train_dataset, pool: str = "train"):
        self.uid_field, self.iid_field = train_dataset.uid_field, train_dataset.iid_field
        self.n_items = train_dataset.item_num
        users = train_dataset.inter_feat[self.uid_field].numpy()
        items = train_dataset.inter_feat[self.iid_field].numpy()
        _, _, self._keys = pairs_csr(users, items, train_dataset.user_num, self.n_items)
        if pool == "train":
            self.pool = np.unique(items)
        elif pool == "all":
            self.pool = np.arange(1, self.n_items)
        else:
            raise UserError(f"neg_sampling_pool must be 'train' (MMRec) or 'all' (RecBole), got {pool!r}",
                            fix="set --neg_sampling_pool=train")
        per_user = np.bincount(self._keys // self.n_items, minlength=train_dataset.user_num)
        full = np.flatnonzero(per_user >= len(self.pool))
        if len(full):
            token = train_dataset.id2token(self.uid_field, full[:1])[0]
            raise UserError(f"user {token} has interacted with every candidate negative item, so no negative can be "
                            f"sampled", fix="remove such users from the dataset")
        self.used_ids = None  # RecBole's per-user sets are not built: membership is tested on sorted pair keys

    def sample_by_user_ids(self, user_ids, item_ids, num):
        users = np.tile(np.asarray(user_ids, dtype=np.int64), num)
        out = self.pool[np.random.randint(0, len(self.pool), len(users))]
        todo = np.arange(len(users))
        while len(todo):
            keys = users[todo] * self.n_items + out[todo]
            pos = np.searchsorted(self._keys, keys)
            clash = (pos < len(self._keys)) & (self._keys[np.minimum(pos, len(self._keys) - 1)] == keys)
            todo = todo[clash]
            out[todo] = self.pool[np.random.randint(0, len(self.pool), len(todo))]
        return torch.from_numpy(out)


class MMRecEvalDataLoader(FullSortEvalDataLoader):
    """Full-sort evaluation whose mask ("history") is a given set of items per user: the training items.

    Same attributes and batches as RecBole's ``FullSortEvalDataLoader`` (``uid_list``, ``uid2positive_item``,
    ``uid2history_item``, ``uid2items_num``, ``user_df``), built vectorised; ``eval_users_per_batch`` users per batch.
    """

    def __init__(self, config, dataset, history_csr):
        self.logger = getLogger()
        self.uid_field, self.iid_field = dataset.uid_field, dataset.iid_field
        self.is_sequential = False
        n_users, n_items = dataset.user_num, dataset.item_num
        users = dataset.inter_feat[self.uid_field].numpy()
        items = dataset.inter_feat[self.iid_field].numpy()
        pos_ptr, pos_items, _ = pairs_csr(users, items, n_users, n_items)
        hist_ptr, hist_items = history_csr
        counts = np.diff(pos_ptr)
        evaluated = np.flatnonzero(counts)
        self.uid_list = torch.from_numpy(evaluated)
        self.uid2items_num = counts
        self.uid2positive_item = np.full(n_users, None, dtype=object)
        self.uid2history_item = np.full(n_users, None, dtype=object)
        pos_t, hist_t = torch.from_numpy(pos_items), torch.from_numpy(hist_items)
        for u in evaluated.tolist():  # one small tensor per evaluated user (views, no copies)
            self.uid2positive_item[u] = pos_t[pos_ptr[u]:pos_ptr[u + 1]]
            self.uid2history_item[u] = hist_t[hist_ptr[u]:hist_ptr[u + 1]]
        self.user_df = dataset.join(Interaction({self.uid_field: self.uid_list}))
        self.sample_size = len(self.uid_list)
        AbstractDataLoader.__init__(self, config, dataset, None, shuffle=False)

    def _init_batch_size_and_step(self):
        users = self.config["eval_users_per_batch"] or max(self.config["eval_batch_size"] // self._dataset.item_num, 1)
        self.step = int(users)
        self.set_batch_size(self.step * self._dataset.item_num)
