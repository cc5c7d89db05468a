"""Item-item kNN graphs from content features (LATTICE / MGCN / MambaRec / FREEDOM).

The official code builds a dense ``items x items`` cosine matrix and calls ``topk`` on it (2.1 GB for Clothing).
Here the neighbours come from FAISS exact inner-product search over L2-normalised rows, which is the same cosine
top-k in ``O(items x k)`` memory besides one normalised copy of the features; a catalogue of millions of items can
use the approximate inverted-file search instead (``knn_index: ivf``, :class:`KnnIndex`). Graphs are cached on disk
under a key made of a hash of the feature content, ``k``, the index settings and the normalisation (and the
neighbour lists under the hash, ``k`` and the index settings, so a second normalisation skips the search), so a
changed feature file can never reuse a stale graph (official quirk Q4) and an approximate graph is never served for
an exact one.

Row 0 of every feature table is RecBole's PAD item: it is left out of the search (a zero row has no cosine) and
gets neither neighbours nor in-edges.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from recbole_ext.errors import UserError
from recbole_ext.options import AT_LEAST_ONE, SEED, check_choice, config_value
from recbole_ext.utils.cache import cache_dir
from recbole_ext.utils.hashing import array_sha256
from recbole_ext.utils.io import atomic_file

NORMALISATIONS = ("sym", "binary_sym")
KNN_INDEXES = ("flat", "ivf")
_ROW_BLOCK = 65536  # rows normalised (and checked) at a time
_BLOCK_CELLS = 1 << 22  # ivf: at most this many similarities (16 MB) are scored at once
_TRAIN_PER_LIST = 20  # ivf: k-means sample rows per list
_KMEANS_ITER = 8
_EPS_NORM = 1e-12
_BINARY_DEGREE_EPS = 1e-7  # FREEDOM adds 1e-7 to the binary degree before the inverse square root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnnIndex:
    """How the neighbours are searched (model keys ``knn_index``, ``knn_nlist``, ``knn_nprobe``, ``knn_seed``).

    ``flat``: exact cosine top-k (FAISS ``IndexFlatIP``). ``ivf``: inverted lists; the rows are split into
    ``nlist`` lists by spherical k-means (FAISS ``Kmeans``, trained on a sample of ``min(rows, 20 nlist)`` rows
    drawn with ``seed``), every row probes its ``nprobe`` nearest lists and gets the exact top-k among their rows.
    ``nlist`` None picks about ``2 sqrt(rows)``.
    """

    kind: str = "flat"
    nlist: int | None = None
    nprobe: int = 8
    seed: int = 0

    def __post_init__(self):
        check_choice("knn_index", self.kind, KNN_INDEXES)
        if self.nlist is not None and (not isinstance(self.nlist, (int, np.integer)) or self.nlist < 1):
            raise UserError(f"knn_nlist={self.nlist!r} must be a whole number >= 1", fix="set knn_nlist >= 1 or ~")
        if not isinstance(self.nprobe, (int, np.integer)) or self.nprobe < 1:
            raise UserError(f"knn_nprobe={self.nprobe!r} must be a whole number >= 1", fix="set knn_nprobe >= 1")

    def lists_for(self, n_rows: int) -> int:
        """The number of lists for ``n_rows`` rows; one error line when the settings cannot work."""
        nlist = self.nlist if self.nlist is not None else max(1, min(n_rows, int(round(2 * np.sqrt(n_rows)))))
        if nlist > n_rows:
            raise UserError(f"knn_nlist={nlist} is more than the {n_rows} items to index",
                            fix=f"set knn_nlist <= {n_rows} (or ~ for about 2 sqrt(items))")
        if self.nprobe > nlist:
            raise UserError(f"knn_nprobe={self.nprobe} is more than knn_nlist={nlist}",
                            fix=f"set knn_nprobe <= {nlist}")
        return int(nlist)

    def cache_suffix(self, n_rows: int) -> str:
        """Part of the cache file name: empty for ``flat`` (so its entries keep their names)."""
        if self.kind == "flat":
            return ""
        return f"-ivf{self.lists_for(n_rows)}-p{self.nprobe}-s{self.seed}"


FLAT = KnnIndex()

# the keys of the item-item kNN graphs, for the models that build them (their option_bounds merge this in)
KNN_BOUNDS = {"knn_k": AT_LEAST_ONE, "knn_nlist": AT_LEAST_ONE, "knn_nprobe": AT_LEAST_ONE, "knn_seed": SEED}


def knn_index_from_config(config) -> KnnIndex:
    """The neighbour search of the kNN graphs (keys ``knn_index``, ``knn_nlist``, ``knn_nprobe``, ``knn_seed``)."""
    nlist = config_value(config, "knn_nlist", None)
    return KnnIndex(str(config_value(config, "knn_index", "flat")), None if nlist is None else int(nlist),
                    int(config_value(config, "knn_nprobe", 8)), int(config_value(config, "knn_seed", 0)))


def _normalised_rows(features: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as float32, L2-normalised (a fresh array: the source, maybe a memory map, is not touched)."""
    x = np.array(features[start:stop], dtype=np.float32, order="C")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, _EPS_NORM)
    return x


def _normalised_table(features: np.ndarray) -> np.ndarray:
    """All rows L2-normalised into one float32 table, filled in blocks (one copy of the features, no temporaries of
    their size)."""
    n, d = features.shape
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, _ROW_BLOCK):
        out[start:start + _ROW_BLOCK] = _normalised_rows(features, start, start + _ROW_BLOCK)
    return out


def _flat_neighbours(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    n, d = features.shape
    index = faiss.IndexFlatIP(d)
    for start in range(0, n, _ROW_BLOCK):
        index.add(_normalised_rows(features, start, start + _ROW_BLOCK))
    # the queries are the index's own rows: search them in place rather than keeping a second normalised copy
    stored = faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d) if n else np.empty((0, d), np.float32)
    sim, idx = index.search(stored, k)
    return idx.astype(np.int64), sim.astype(np.float32)


def _merge_topk(best_sim, best_idx, rows, sim, cand, k):
    """Fold the candidates ``cand`` (scored ``sim [len(rows), len(cand)]``) into the running top-``k`` of ``rows``
    (a row meets each candidate once)."""
    kk = min(k, sim.shape[1])
    top_sim, top = sim.topk(kk, dim=1, sorted=False)
    all_sim = torch.cat([best_sim[rows], top_sim], dim=1)
    all_idx = torch.cat([best_idx[rows], cand[top]], dim=1)
    keep_sim, keep = all_sim.topk(k, dim=1, sorted=False)
    best_sim[rows] = keep_sim
    best_idx[rows] = all_idx.gather(1, keep)


def _exact_rows(x: torch.Tensor, rows: torch.Tensor, k: int, best_sim, best_idx) -> None:
    """Exact top-``k`` of ``rows`` over all of ``x``, in blocks of rows (the few rows IVF left short)."""
    best_sim[rows] = -np.inf
    best_idx[rows] = -1
    step = max(1, _BLOCK_CELLS // max(1, len(rows)))
    for start in range(0, len(x), step):
        cand = torch.arange(start, min(start + step, len(x)))
        _merge_topk(best_sim, best_idx, rows, x[rows] @ x[cand].T, cand, k)


def _ivf_neighbours(features: np.ndarray, k: int, settings: KnnIndex) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    n, d = features.shape
    nlist = settings.lists_for(n)
    x = _normalised_table(features)
    n_train = min(n, _TRAIN_PER_LIST * nlist)
    sample = np.sort(np.random.default_rng(settings.seed).choice(n, size=n_train, replace=False))
    kmeans = faiss.Kmeans(d, nlist, niter=_KMEANS_ITER, seed=int(settings.seed) % 2**31, spherical=True,
                          max_points_per_centroid=_TRAIN_PER_LIST, min_points_per_centroid=_TRAIN_PER_LIST,
                          verbose=False)
    kmeans.train(x[sample])
    _, probes = kmeans.index.search(x, settings.nprobe)  # [n, nprobe] nearest lists of every row
    members = np.argsort(probes[:, 0], kind="stable")  # rows of each list, by their nearest list
    member_starts = np.searchsorted(probes[members, 0], np.arange(nlist + 1))
    flat_probes = probes.reshape(-1)
    by_list = np.argsort(flat_probes, kind="stable")
    queries = torch.from_numpy(by_list // settings.nprobe)  # rows probing each list
    query_starts = np.searchsorted(flat_probes[by_list], np.arange(nlist + 1))
    del by_list, flat_probes, probes
    members = torch.from_numpy(members)
    xt = torch.from_numpy(x)
    best_sim = torch.full((n, k), -np.inf)
    best_idx = torch.full((n, k), -1, dtype=torch.int64)
    for c in range(nlist):
        cand = members[member_starts[c]:member_starts[c + 1]]
        if len(cand) == 0:
            continue
        cand_x = xt[cand].T
        rows_of_c = queries[query_starts[c]:query_starts[c + 1]]
        step = max(1, _BLOCK_CELLS // len(cand))
        for start in range(0, len(rows_of_c), step):
            rows = rows_of_c[start:start + step]
            _merge_topk(best_sim, best_idx, rows, xt[rows] @ cand_x, cand, k)
    short = torch.nonzero((best_idx < 0).any(dim=1)).view(-1)
    if len(short):  # fewer than k rows in a row's probed lists (tiny lists): search those rows exactly
        _exact_rows(xt, short, k, best_sim, best_idx)
    best_sim, order = best_sim.sort(dim=1, descending=True, stable=True)
    return best_idx.gather(1, order).numpy(), best_sim.numpy()


def knn_neighbours(features: np.ndarray, k: int, settings: KnnIndex = FLAT) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours of every row (self included, as in the official code): exact with the ``flat``
    index, approximate with ``ivf`` (see :class:`KnnIndex`).

    Returns ``(index [n, k] int64, similarity [n, k] float32)`` sorted by decreasing similarity. Memory: the
    normalised rows (one float32 copy, filled in blocks; a memory-mapped ``features`` is only read) plus
    ``O(n k)``; never an ``n x n`` matrix.
    """
    if settings.kind == "flat":
        return _flat_neighbours(features, k)
    return _ivf_neighbours(features, k, settings)


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


def _cache_path(kind: str, feature_hash: str, n_rows: int, k: int, index: str, normalisation: str | None = None):
    suffix = f"-{normalisation}" if normalisation else ""
    return cache_dir("knn") / f"{kind}-{feature_hash[:32]}-n{n_rows}-k{k}{index}{suffix}.npz"


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


def _all_finite(feats: np.ndarray) -> bool:
    return all(np.isfinite(feats[i:i + _ROW_BLOCK]).all() for i in range(0, len(feats), _ROW_BLOCK))


def knn_graph(features: torch.Tensor | np.ndarray, k: int, normalisation: str = "sym", skip_pad: bool = True,
              use_cache: bool = True, index: KnnIndex = FLAT) -> torch.Tensor:
    """Sparse ``[n, n]`` item-item graph (coalesced COO, float32, ``n k`` entries) from the rows of ``features``.

    With ``skip_pad`` row/column 0 is the PAD item and stays empty. ``index`` chooses the neighbour search
    (:class:`KnnIndex`). Cached on disk (see module docstring).
    """
    if normalisation not in NORMALISATIONS:
        raise UserError(f"unknown kNN normalisation {normalisation!r}", fix=f"use one of {NORMALISATIONS}")
    feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if feats.ndim != 2:
        raise UserError(f"kNN features must be a 2-d array, got shape {feats.shape}")
    if not _all_finite(feats):
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
        index_key = index.cache_suffix(m)
        graph_path = _cache_path("graph", feature_hash, m, k_eff, index_key, normalisation)
        cached = _load_cached(graph_path, m, k_eff, "value")
        if cached is not None:
            idx, val = cached
        else:
            neighbour_path = _cache_path("neighbours", feature_hash, m, k_eff, index_key)
            found = _load_cached(neighbour_path, m, k_eff, "similarity")
            if found is None:
                found = knn_neighbours(body, k_eff, index)
                _save(neighbour_path, index=found[0], similarity=found[1])
            idx = found[0]
            val = normalise_knn(idx, found[1], normalisation)
            _save(graph_path, index=idx, value=val)
    else:
        idx, sim = knn_neighbours(body, k_eff, index)
        val = normalise_knn(idx, sim, normalisation)
    rows = np.repeat(np.arange(m, dtype=np.int64), k_eff) + offset
    cols = idx.reshape(-1) + offset
    indices = torch.from_numpy(np.stack([rows, cols]))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(val.reshape(-1).copy()), (n, n)).coalesce()
