"""Item-item kNN graphs from content features (LATTICE / MGCN / MambaRec / FREEDOM).

The official code builds a dense ``items x items`` cosine matrix and calls ``topk`` on it (2.1 GB for Clothing).
Here the neighbours come from FAISS exact inner-product search over L2-normalised rows, which is the same cosine
top-k in ``O(items x k)`` memory. Graphs are cached on disk under a key made of a hash of the feature content, ``k``
and the normalisation (and the neighbour lists under the hash and ``k``, so a second normalisation skips the
search), so a changed feature file can never reuse a stale graph (official quirk Q4).

Row 0 of every feature table is RecBole's PAD item: it is left out of the search (a zero row has no cosine) and
gets neither neighbours nor in-edges.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from recbole_ext.errors import UserError
from recbole_ext.utils.cache import cache_dir
from recbole_ext.utils.hashing import array_sha256
from recbole_ext.utils.io import atomic_file

NORMALISATIONS = ("sym", "binary_sym")
_EPS_NORM = 1e-12
_BINARY_DEGREE_EPS = 1e-7  # FREEDOM adds 1e-7 to the binary degree before the inverse square root

log = logging.getLogger(__name__)


def knn_neighbours(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine neighbours of every row (self included, as in the official code).

    Returns ``(index [n, k] int64, similarity [n, k] float32)`` sorted by decreasing similarity.
    """
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32).copy()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, _EPS_NORM)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sim, idx = index.search(x, k)
    return idx.astype(np.int64), sim.astype(np.float32)


def normalise_knn(idx: np.ndarray, sim: np.ndarray, normalisation: str) -> np.ndarray:
    """Edge weights of the kNN graph ``i -> idx[i, :]`` (not symmetrised, spec §1.7 / Q18).

    ``sym``: weighted edges ``s_ij / sqrt(d_i d_j)`` with ``d`` the row sums of the kept similarities (MGCN,
    MambaRec, LATTICE). ``binary_sym``: edges of weight 1 normalised the same way with ``d = k + 1e-7`` (FREEDOM).
    """
    n, k = idx.shape
    if normalisation == "sym":
        weight = sim.astype(np.float64)
        degree = weight.sum(axis=1)
        with np.errstate(divide="ignore"):
            inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.abs(degree)), 0.0)
    elif normalisation == "binary_sym":
        weight = np.ones((n, k), dtype=np.float64)
        inv_sqrt = np.full(n, (k + _BINARY_DEGREE_EPS) ** -0.5)
    else:
        raise UserError(f"unknown kNN normalisation {normalisation!r}", fix=f"use one of {NORMALISATIONS}")
    return (inv_sqrt[:, None] * weight * inv_sqrt[idx]).astype(np.float32)


def _cache_path(kind: str, feature_hash: str, n_rows: int, k: int, normalisation: str | None = None):
    suffix = f"-{normalisation}" if normalisation else ""
    return cache_dir("knn") / f"{kind}-{feature_hash[:32]}-n{n_rows}-k{k}{suffix}.npz"


def _load_cached(path, n_rows: int, k: int, value_name: str):
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            idx, val = z["index"], z[value_name]
    except Exception as exc:  # a corrupt cache entry is rebuilt, never trusted
        log.warning("ignoring unreadable kNN cache %s (%s)", path, exc)
        return None
    ok = (idx.shape == (n_rows, k) and val.shape == (n_rows, k) and idx.dtype == np.int64
          and val.dtype == np.float32 and (n_rows == 0 or (idx.min() >= 0 and idx.max() < n_rows))
          and np.isfinite(val).all())
    if not ok:
        log.warning("ignoring kNN cache %s: wrong shape, dtype, id range or non-finite values", path)
        return None
    return idx, val


def _save(path, **arrays) -> None:
    with atomic_file(path, "wb") as fh:
        np.savez(fh, **arrays)


def knn_graph(features: torch.Tensor | np.ndarray, k: int, normalisation: str = "sym", skip_pad: bool = True,
              use_cache: bool = True) -> torch.Tensor:
    """Sparse ``[n, n]`` item-item graph (coalesced COO, float32) from the rows of ``features``.

    With ``skip_pad`` row/column 0 is the PAD item and stays empty. Cached on disk (see module docstring).
    """
    if normalisation not in NORMALISATIONS:
        raise UserError(f"unknown kNN normalisation {normalisation!r}", fix=f"use one of {NORMALISATIONS}")
    feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if feats.ndim != 2:
        raise UserError(f"kNN features must be a 2-d array, got shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise UserError("kNN features contain NaN or inf", fix="clean the feature .npy files and re-prepare")
    n = feats.shape[0]
    offset = 1 if skip_pad else 0
    body = feats[offset:]
    m = body.shape[0]
    k_eff = int(min(k, m))
    if k_eff < 1:
        raise UserError(f"cannot build a kNN graph with k={k} over {m} items", fix="set knn_k >= 1")
    if use_cache:
        # two levels: the neighbour search (the costly part, shared by every normalisation) and the graph itself
        feature_hash = array_sha256(body.astype(np.float32, copy=False))
        graph_path = _cache_path("graph", feature_hash, m, k_eff, normalisation)
        cached = _load_cached(graph_path, m, k_eff, "value")
        if cached is not None:
            idx, val = cached
        else:
            neighbour_path = _cache_path("neighbours", feature_hash, m, k_eff)
            found = _load_cached(neighbour_path, m, k_eff, "similarity")
            if found is None:
                found = knn_neighbours(body, k_eff)
                _save(neighbour_path, index=found[0], similarity=found[1])
            idx = found[0]
            val = normalise_knn(idx, found[1], normalisation)
            _save(graph_path, index=idx, value=val)
    else:
        idx, sim = knn_neighbours(body, k_eff)
        val = normalise_knn(idx, sim, normalisation)
    rows = np.repeat(np.arange(m, dtype=np.int64), k_eff) + offset
    cols = idx.reshape(-1) + offset
    indices = torch.from_numpy(np.stack([rows, cols]))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(val.reshape(-1).copy()), (n, n)).coalesce()
