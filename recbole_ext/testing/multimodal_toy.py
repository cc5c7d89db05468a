"""Small in-memory multimodal data for tests and benchmarks, without RecBole's data pipeline.

:class:`ToyMMDataset` implements the part of RecBole's ``Dataset`` API the multimodal models read (``num``,
``inter_matrix(form="coo")``, ``mm_features``, ``mm_feature_hash``). :func:`planted_clusters` draws interactions
whose structure is visible in the item features: items belong to latent clusters, each user prefers a few clusters,
and the image/text features are noisy cluster centroids. Shuffling the feature rows destroys that signal, which is
what the sanity tests rely on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from recbole_ext.utils.segments import positions_in_segments, segment_starts

USER_FIELD, ITEM_FIELD, NEG_PREFIX = "user_id", "item_id", "neg_"


@dataclass
class ToyMMDataset:
    n_users: int  # including PAD (id 0), like RecBole
    n_items: int
    train: np.ndarray  # [n, 2] (user, item) with ids >= 1
    valid: np.ndarray
    test: np.ndarray
    mm_features: dict = field(default_factory=dict)
    mm_feature_hash: dict = field(default_factory=dict)

    def num(self, name: str) -> int:
        return self.n_users if name == USER_FIELD else self.n_items

    def inter_matrix(self, form: str = "coo", value_field=None):
        data = np.ones(len(self.train), dtype=np.float32)
        m = sp.coo_matrix((data, (self.train[:, 0], self.train[:, 1])), shape=(self.n_users, self.n_items))
        return m if form == "coo" else m.asformat(form)

    def with_features(self, features: dict) -> "ToyMMDataset":
        return ToyMMDataset(self.n_users, self.n_items, self.train, self.valid, self.test, features, {})

    def shuffled_features(self, seed: int = 0) -> "ToyMMDataset":
        """Same interactions, feature rows permuted over the real items (PAD row kept)."""
        rng = np.random.default_rng(seed)
        perm = np.concatenate([[0], 1 + rng.permutation(self.n_items - 1)])
        return self.with_features({k: v[torch.from_numpy(perm)] for k, v in self.mm_features.items()})


def toy_config(**overrides) -> dict:
    """The config keys every model reads, with RecBole's field names."""
    cfg = {"USER_ID_FIELD": USER_FIELD, "ITEM_ID_FIELD": ITEM_FIELD, "NEG_PREFIX": NEG_PREFIX,
           "device": torch.device("cpu"), "train_batch_size": 2048}
    cfg.update(overrides)
    return cfg


def random_batch(dataset: ToyMMDataset, n: int = 32, seed: int = 0) -> dict:
    """A pairwise batch of ``n`` uniform (user, positive, negative) ids (PAD excluded), for unit tests."""
    g = torch.Generator().manual_seed(seed)
    return {USER_FIELD: torch.randint(1, dataset.n_users, (n,), generator=g),
            ITEM_FIELD: torch.randint(1, dataset.n_items, (n,), generator=g),
            NEG_PREFIX + ITEM_FIELD: torch.randint(1, dataset.n_items, (n,), generator=g)}


def planted_clusters(n_users: int, n_items: int, n_interactions: int, n_clusters: int = 20,
                     image_dim: int = 4096, text_dim: int = 384, feature_noise: float = 1.0,
                     clusters_per_user: int = 2, popularity_skew: float = 2.0, seed: int = 0) -> ToyMMDataset:
    """Interactions with cluster structure shared with the features, split per user like MMRec.

    Each user picks ``clusters_per_user`` clusters; an interaction draws a user (Pareto activity), one of the
    user's clusters and an item of that cluster (skewed by ``popularity_skew``). Features are the cluster centroid
    plus Gaussian noise of scale ``feature_noise`` (abs() for the non-negative "CNN" image features).
    """
    rng = np.random.default_rng(seed)
    item_cluster = rng.integers(0, n_clusters, n_items)
    user_clusters = rng.integers(0, n_clusters, (n_users, clusters_per_user))
    members = [np.flatnonzero(item_cluster == c) for c in range(n_clusters)]
    members = [m if len(m) else np.array([0]) for m in members]
    # each interaction: a user (power-law activity), one of the user's clusters, a Zipf-ish item in it
    activity = rng.pareto(1.5, n_users) + 1.0
    users = rng.choice(n_users, n_interactions, p=activity / activity.sum())
    chosen = user_clusters[users, rng.integers(0, clusters_per_user, n_interactions)]
    sizes = np.array([len(m) for m in members])
    # rank inside the cluster: u^skew concentrates on the first members (skew 1 = uniform)
    rank = np.minimum((rng.random(n_interactions) ** popularity_skew * sizes[chosen]).astype(np.int64),
                      sizes[chosen] - 1)
    offsets = segment_starts(sizes)
    flat = np.concatenate(members)
    items = flat[offsets[chosen] + rank]
    pairs = np.unique(np.stack([users, items], 1), axis=0) + 1  # ids >= 1 (0 = PAD), duplicates removed
    train, valid, test = _split_per_user(pairs, rng)
    feats = {}
    for name, dim in (("image", image_dim), ("text", text_dim)):
        centroids = rng.standard_normal((n_clusters, dim), dtype=np.float32)
        # filled in place, row 0 = PAD zeros: the Clothing-shaped image table alone is 377 MB
        table = np.zeros((n_items + 1, dim), dtype=np.float32)
        body = table[1:]
        rng.standard_normal(out=body, dtype=np.float32)
        body *= feature_noise
        for c in range(n_clusters):
            body[item_cluster == c] += centroids[c]
        if name == "image":
            np.abs(body, out=body)  # CNN activations are non-negative
        feats[name] = torch.from_numpy(table)
    return ToyMMDataset(n_users + 1, n_items + 1, train, valid, test, feats, {})


def _split_per_user(pairs: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MMRec-style random split per user: n<10 -> n-2/1/1 (when n>=3), else 80/10/10; vectorised."""
    pairs = pairs[rng.permutation(len(pairs))]
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    _, counts = np.unique(pairs[:, 0], return_counts=True)
    pos = positions_in_segments(counts)
    n = np.repeat(counts, counts)
    held = np.where(n < 3, 0, np.where(n < 10, 2, (0.2 * n).astype(np.int64)))
    n_valid = held // 2
    is_valid = (pos >= n - held) & (pos < n - held + n_valid)
    is_test = pos >= n - held + n_valid
    return pairs[~(is_valid | is_test)], pairs[is_valid], pairs[is_test]


def negatives(dataset: ToyMMDataset, users: np.ndarray, rng) -> np.ndarray:
    """Uniform negatives over training items, rejecting each user's training items (vectorised resampling)."""
    train_items = np.unique(dataset.train[:, 1])
    key_seen = np.unique(dataset.train[:, 0].astype(np.int64) * dataset.n_items + dataset.train[:, 1])
    neg = rng.choice(train_items, len(users))
    for _ in range(100):
        keys = users.astype(np.int64) * dataset.n_items + neg
        pos = np.searchsorted(key_seen, keys)
        bad = (pos < len(key_seen)) & (key_seen[np.minimum(pos, len(key_seen) - 1)] == keys)
        if not bad.any():
            break
        neg[bad] = rng.choice(train_items, int(bad.sum()))
    return neg


def fit(model, dataset: ToyMMDataset, epochs: int, learning_rate: float = 1e-3, batch_size: int = 2048,
        seed: int = 0) -> list[float]:
    """Plain Adam training loop (RecBole-free); returns the mean loss per epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    history = []
    for _ in range(epochs):
        model.train()
        if hasattr(model, "pre_epoch_processing"):
            model.pre_epoch_processing()
        order = rng.permutation(len(dataset.train))
        neg = negatives(dataset, dataset.train[order, 0], rng)
        losses = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = {USER_FIELD: torch.from_numpy(dataset.train[rows, 0]),
                     ITEM_FIELD: torch.from_numpy(dataset.train[rows, 1]),
                     NEG_PREFIX + ITEM_FIELD: torch.from_numpy(neg[start:start + batch_size])}
            loss = model.calculate_loss(batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss))
        history.append(float(np.mean(losses)))
    return history


def recall_at_k(model, dataset: ToyMMDataset, split: str = "test", k: int = 20, user_batch: int = 4096) -> float:
    """MMRec protocol: full ranking, training items masked (only), Recall@K = hits / |P_u| averaged over users."""
    model.eval()
    target = getattr(dataset, split)
    users = np.unique(target[:, 0])
    train_mask = sp.csr_matrix((np.ones(len(dataset.train)), (dataset.train[:, 0], dataset.train[:, 1])),
                               shape=(dataset.n_users, dataset.n_items))
    truth = sp.csr_matrix((np.ones(len(target)), (target[:, 0], target[:, 1])),
                          shape=(dataset.n_users, dataset.n_items))
    recalls = []
    with torch.no_grad():
        for start in range(0, len(users), user_batch):
            u = users[start:start + user_batch]
            scores = model.full_sort_predict({USER_FIELD: torch.from_numpy(u)}).view(len(u), -1).clone()
            scores[:, 0] = -np.inf
            m = train_mask[u].tocoo()
            scores[torch.from_numpy(m.row).long(), torch.from_numpy(m.col).long()] = -np.inf
            top = torch.topk(scores, k, dim=1).indices.numpy()
            t = truth[u]
            hits = np.asarray(t[np.repeat(np.arange(len(u)), k), top.ravel()]).reshape(len(u), k).sum(1)
            recalls.append(hits / np.asarray(t.sum(1)).ravel())
    return float(np.concatenate(recalls).mean())


def planted_benchmark(seed: int) -> ToyMMDataset:
    """The planted-signal data of the model tests and bench scripts: 500 users, 1,000 items, 2,000 interactions, 10
    clusters, one cluster per user, 64-d image and 32-d text features."""
    return planted_clusters(500, 1000, 2000, n_clusters=10, image_dim=64, text_dim=32, clusters_per_user=1, seed=seed)


def trained_recall(cls, dataset: ToyMMDataset, epochs: int, learning_rate: float = 1e-2, **cfg) -> float:
    """Test Recall@20 of ``cls`` (width 32, torch seed 0) after :func:`fit` (batch 1024, seed 0)."""
    torch.manual_seed(0)
    model = cls(toy_config(embedding_size=32, **cfg), dataset)
    fit(model, dataset, epochs, learning_rate=learning_rate, batch_size=1024, seed=0)
    return recall_at_k(model, dataset, "test", 20)
