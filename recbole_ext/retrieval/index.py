"""FAISS inner-product index over a model's final item vectors: build, search with seen-item masking, persist.

Every index uses ``METRIC_INNER_PRODUCT`` (the coarse quantizer of IVF indexes included) because the models it
serves score ``user_vector . item_vector``. The PAD item (internal id 0) is never indexed; FAISS row ``r`` holds
the item whose internal id is ``item_ids[r]``, and every result is reported by item id, so masking a user's
history works on ids, not on rank positions.

Where the index lives (``faiss_device: auto | cpu | gpu``, :func:`choose_faiss_device`): ``auto`` puts it on the
GPU only when the installed faiss has GPU support (``faiss-gpu``: ``StandardGpuResources`` and
``get_num_gpus() > 0``) and the run's device is CUDA; ``gpu`` asks for the GPU whatever the run's device; anything
else, an index type FAISS cannot place on a GPU included, stays on the CPU. The choice is logged. A GPU index is
built and searched on the GPU and copied back to the CPU to be saved.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path

import numpy as np

from recbole_ext.errors import UserError
from recbole_ext.options import check_choice
from recbole_ext.utils.hashing import file_sha256
from recbole_ext.utils.io import atomic_dir
from recbole_ext.utils.segments import indptr_from_segment_ids

DEFAULT_FACTORY = "Flat"
# Above this many items an exact index is slow to query; the suggested ANN setting is the one bench/retrieval.py
# measured at recall@20 >= 0.95 and >= 5x exact throughput (docs/retrieval.md).
LARGE_CATALOGUE = 1_000_000
LARGE_CATALOGUE_SUGGESTION = {"faiss_index": "IVF4096,Flat", "faiss_nprobe": 64}
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
ITEM_IDS_FILE = "item_ids.npy"
FORMAT_VERSION = 1


FAISS_DEVICES = ("auto", "cpu", "gpu")
GPU_MAX_K = 2048  # FAISS's GPU indexes return at most this many results per query


def _faiss():
    import faiss  # imported lazily: `import recbole_ext` must not pay for it

    return faiss


def faiss_gpu_missing(faiss) -> str | None:
    """None when this faiss module can put an index on a GPU, else why it cannot."""
    if not (hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "index_cpu_to_gpu")):
        return "the installed faiss has no GPU support (faiss-cpu; install faiss-gpu)"
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() < 1:
        return "faiss sees no GPU"
    return None


def choose_faiss_device(setting, run_device) -> str:
    """``"gpu"`` or ``"cpu"``: where the index of a run on ``run_device`` goes under ``faiss_device: setting``
    (module docstring); logs the choice and its reason."""
    setting = check_choice("faiss_device", str(setting or "auto").strip().lower(), FAISS_DEVICES)
    log = getLogger()
    if setting == "cpu":
        log.info("retrieval: FAISS index on the CPU (faiss_device: cpu)")
        return "cpu"
    cuda_run = str(run_device or "cpu").startswith("cuda")
    if setting == "auto" and not cuda_run:
        log.info("retrieval: FAISS index on the CPU (the run's device is %s)", run_device or "cpu")
        return "cpu"
    missing = faiss_gpu_missing(_faiss())
    if missing:
        (log.warning if setting == "gpu" else log.info)("retrieval: FAISS index on the CPU: %s", missing)
        return "cpu"
    log.info("retrieval: FAISS index on the GPU (faiss_device: %s, run on %s)", setting, run_device)
    return "gpu"


def _to_gpu(faiss, index, factory: str):
    """``(index on GPU 0, its resources)``, or ``(index, None)`` when FAISS has no GPU version of this index."""
    resources = faiss.StandardGpuResources()
    try:
        return faiss.index_cpu_to_gpu(resources, 0, index), resources
    except (RuntimeError, AttributeError) as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        getLogger().warning("retrieval: faiss_index %r has no GPU version (%s); the index stays on the CPU",
                            factory, first)
        return index, None


@dataclass(frozen=True)
class History:
    """Items to exclude per query row, as CSR: the items of row ``r`` are ``items[indptr[r]:indptr[r+1]]``."""

    indptr: np.ndarray  # int64 [n_rows + 1]
    items: np.ndarray   # int64 [nnz] internal item ids

    @classmethod
    def from_pairs(cls, rows, items, n_rows: int) -> "History":
        rows = np.asarray(rows, dtype=np.int64).ravel()
        items = np.asarray(items, dtype=np.int64).ravel()
        if rows.shape != items.shape:
            raise ValueError("history rows and items differ in length")
        if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
            raise ValueError(f"history rows must lie in [0, {n_rows})")
        order = np.argsort(rows, kind="stable")
        indptr = indptr_from_segment_ids(rows, n_rows)
        return cls(indptr, items[order])

    @classmethod
    def empty(cls, n_rows: int) -> "History":
        return cls(np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), self.lengths())


def drop_seen(scores: np.ndarray, ids: np.ndarray, k: int, history: History | None):
    """Keep, per row, the first ``k`` results whose item id is not in that row's history (nor -1, FAISS's
    "no result"). Rows keep FAISS's score order; short rows are padded with id -1 and score -inf."""
    n_rows, fetched = ids.shape
    invalid = ids < 0
    if history is not None and history.items.size:
        if history.n_rows != n_rows:
            raise ValueError(f"history has {history.n_rows} rows for {n_rows} queries")
        # One integer key per (row, item) pair turns "is this item in this row's history" into a set lookup.
        width = int(max(ids.max(initial=0), history.items.max(initial=0))) + 1
        result_keys = np.arange(n_rows, dtype=np.int64)[:, None] * width + np.where(invalid, 0, ids)
        history_keys = history.rows() * width + history.items
        invalid |= np.isin(result_keys, history_keys)
    order = np.argsort(invalid, axis=1, kind="stable")[:, :k]  # valid results first, in their original order
    out_ids = np.take_along_axis(ids, order, axis=1).astype(np.int64, copy=True)
    out_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32, copy=True)
    dropped = np.take_along_axis(invalid, order, axis=1)
    out_ids[dropped] = -1
    out_scores[dropped] = -np.inf
    if out_ids.shape[1] < k:  # fewer results than asked for (k > catalogue)
        pad = k - out_ids.shape[1]
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return out_scores, out_ids


def _as_float32_matrix(vectors, what: str) -> np.ndarray:
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise UserError(f"{what} must be a 2-d matrix, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise UserError(f"{what} contain NaN or infinite values", fix="check the checkpoint / the model's training")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _sub_indexes(index):
    """The index and every index nested in it (IVF quantizer, pre-transform, HNSW storage)."""
    faiss = _faiss()
    stack, seen = [index], []
    while stack:
        idx = faiss.downcast_index(stack.pop())
        seen.append(idx)
        for attr in ("quantizer", "index", "storage", "base_index"):
            child = getattr(idx, attr, None)
            if child is not None and hasattr(child, "metric_type"):
                stack.append(child)
    return seen


class ItemIndex:
    """A FAISS index over items ``item_ids`` (internal ids, PAD excluded) with its search settings."""

    def __init__(self, index, item_ids: np.ndarray, factory: str, nprobe: int | None = None,
                 ef_search: int | None = None, gpu_resources=None):
        self.index = index
        self.gpu_resources = gpu_resources  # kept alive with a GPU index; None: the index is on the CPU
        self._cpu_copy = None
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.factory = factory
        self.nprobe = nprobe
        self.ef_search = ef_search
        self._apply_search_params()

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, item_vectors, factory: str | None = DEFAULT_FACTORY, nprobe: int | None = None,
              ef_search: int | None = None, item_ids=None, train_size: int | None = None,
              ef_construction: int | None = None, seed: int = 0, device: str = "cpu") -> "ItemIndex":
        """Index ``item_vectors`` ([n_items, d], row 0 = PAD unless ``item_ids`` names the rows).

        ``factory`` is "Flat" (exact, ``IndexFlatIP``) or any FAISS ``index_factory`` string; IVF/PQ indexes are
        trained on (a seeded sample of ``train_size``) item vectors. ``device="gpu"`` (see
        :func:`choose_faiss_device`) trains, fills and searches the index on GPU 0 where FAISS can.
        """
        faiss = _faiss()
        factory = (factory or DEFAULT_FACTORY).strip()
        vectors = _as_float32_matrix(item_vectors, "item vectors")
        if item_ids is None:
            if vectors.shape[0] < 2:
                raise UserError("no items to index (only the PAD row)")
            item_ids = np.arange(1, vectors.shape[0], dtype=np.int64)
            vectors = vectors[1:]
        item_ids = np.asarray(item_ids, dtype=np.int64)
        if item_ids.shape[0] != vectors.shape[0]:
            raise ValueError("item_ids and item_vectors differ in length")
        dim = vectors.shape[1]
        try:
            index = faiss.IndexFlatIP(dim) if factory == "Flat" else faiss.index_factory(
                dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            raise UserError(f"faiss_index {factory!r} is not a valid FAISS index_factory string ({first})",
                            fix="use Flat, e.g. IVF1024,Flat, IVF1024,PQ16, HNSW32") from None
        for sub in _sub_indexes(index):
            if sub.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise UserError(f"faiss_index {factory!r} builds a {type(sub).__name__} with a non inner-product "
                                "metric", fix="choose an index_factory string whose parts all support METRIC_IP")
            if isinstance(sub, (faiss.IndexIDMap, faiss.IndexIDMap2)):  # its add() refuses ids-less vectors
                raise UserError(f"faiss_index {factory!r} wraps an IDMap; the index keeps its own item id map",
                                fix=f"drop the IDMap part, e.g. {factory.replace('IDMap2,', '').replace('IDMap,', '')}")
            if isinstance(sub, faiss.IndexPreTransform) and any(
                    isinstance(faiss.downcast_VectorTransform(sub.chain.at(i)), faiss.NormalizationTransform)
                    for i in range(sub.chain.size())):
                raise UserError(f"faiss_index {factory!r} normalises the vectors: it would rank by cosine, not by "
                                "the model's inner-product scores", fix="drop the L2norm part")
        if ef_construction is not None:
            for sub in _sub_indexes(index):
                if hasattr(sub, "hnsw"):
                    sub.hnsw.efConstruction = int(ef_construction)
        resources = None
        if device == "gpu":
            index, resources = _to_gpu(faiss, index, factory)
        if not index.is_trained:
            sample = vectors
            if train_size is not None and train_size < len(vectors):
                rng = np.random.default_rng(seed)
                sample = vectors[np.sort(rng.choice(len(vectors), size=train_size, replace=False))]
            try:
                index.train(sample)
            except RuntimeError as err:
                raise UserError(f"training faiss_index {factory!r} on {len(sample)} item vectors of dimension "
                                f"{dim} failed: {str(err).strip().splitlines()[-1]}",
                                fix="fit the string to this catalogue (fewer IVF lists or PQ centroids, a PCA to "
                                    f"at most {dim} dimensions), or use Flat") from None
        if factory == "Flat" and len(vectors) >= LARGE_CATALOGUE:
            getLogger().info("exact FAISS index over %d items; for approximate search at a fraction of the cost set "
                             "faiss_index: %s and faiss_nprobe: %d (see docs/retrieval.md)", len(vectors),
                             LARGE_CATALOGUE_SUGGESTION["faiss_index"], LARGE_CATALOGUE_SUGGESTION["faiss_nprobe"])
        index.add(vectors)
        return cls(index, item_ids, factory, nprobe=nprobe, ef_search=ef_search, gpu_resources=resources)

    @property
    def on_gpu(self) -> bool:
        return self.gpu_resources is not None

    def cpu_index(self):
        """The index on the CPU (a copy, made once, of a GPU index): to save, or to fetch more than GPU_MAX_K."""
        if not self.on_gpu:
            return self.index
        if self._cpu_copy is None:
            self._cpu_copy = _faiss().index_gpu_to_cpu(self.index)
        return self._cpu_copy

    def _searcher(self, fetch: int):
        """The index to search for ``fetch`` results per query: a GPU index answers at most GPU_MAX_K."""
        if self.on_gpu and fetch > GPU_MAX_K:
            return self.cpu_index()
        return self.index

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None):
        self.nprobe, self.ef_search = nprobe, ef_search
        self._apply_search_params()

    def _apply_search_params(self):
        faiss = _faiss()
        for name, value in (("faiss_nprobe", self.nprobe), ("faiss_ef_search", self.ef_search)):
            if value is not None and int(value) < 1:  # FAISS raises inside search (nprobe) or returns 1 item (ef)
                raise UserError(f"{name} must be >= 1, got {value}", fix=f"set {name} >= 1 or leave it unset")
        self._cpu_copy = None  # a CPU copy would keep the old settings
        if self.nprobe is not None and self.on_gpu:
            try:
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", int(self.nprobe))
            except RuntimeError:
                raise UserError(f"faiss_nprobe is set but faiss_index {self.factory!r} is not an IVF index",
                                fix="remove faiss_nprobe or use an IVF index") from None
        elif self.nprobe is not None:
            try:
                faiss.extract_index_ivf(self.index).nprobe = int(self.nprobe)
            except RuntimeError:
                raise UserError(f"faiss_nprobe is set but faiss_index {self.factory!r} is not an IVF index",
                                fix="remove faiss_nprobe or use an IVF index") from None
        if self.ef_search is not None:
            hnsw = [s for s in _sub_indexes(self.index) if hasattr(s, "hnsw")]
            if not hnsw:
                raise UserError(f"faiss_ef_search is set but faiss_index {self.factory!r} has no HNSW part",
                                fix="remove faiss_ef_search or use an HNSW index")
            for sub in hnsw:
                sub.hnsw.efSearch = int(self.ef_search)

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def n_indexed(self) -> int:
        return self.index.ntotal

    # ----------------------------------------------------------------- search
    def search(self, queries, k: int, history: History | None = None, batch_size: int = 4096):
        """Top-``k`` (scores, internal item ids) per query row, excluding each row's ``history`` items.

        Over-fetches ``k`` + the longest history among the rows of a batch so that masking never starves the
        top-``k``; returns float32 [n, k] scores and int64 [n, k] ids (-1 / -inf where fewer than ``k`` remain).
        """
        queries = _as_float32_matrix(queries, "user vectors")
        if queries.shape[1] != self.dim:
            raise UserError(f"user vectors have {queries.shape[1]} dims but the index has {self.dim}",
                            fix="rebuild the index from the same checkpoint as the user vectors")
        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        n = queries.shape[0]
        lengths = history.lengths() if history is not None else np.zeros(n, dtype=np.int64)
        out_scores = np.empty((n, k), dtype=np.float32)
        out_ids = np.empty((n, k), dtype=np.int64)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            fetch = min(k + int(lengths[start:stop].max(initial=0)), self.n_indexed)
            scores, rows = self._searcher(fetch).search(queries[start:stop], fetch)
            ids = np.where(rows >= 0, self.item_ids[np.maximum(rows, 0)], -1)
            sub_history = None
            if history is not None:
                lo, hi = history.indptr[start], history.indptr[stop]
                sub_history = History(history.indptr[start:stop + 1] - lo, history.items[lo:hi])
            out_scores[start:stop], out_ids[start:stop] = drop_seen(scores, ids, k, sub_history)
        return out_scores, out_ids

    def search_raw(self, queries, fetch: int):
        """Top-``fetch`` (scores, internal item ids) without any masking (-1 where FAISS found fewer)."""
        fetch = min(fetch, self.n_indexed)
        scores, rows = self._searcher(fetch).search(_as_float32_matrix(queries, "user vectors"), fetch)
        return scores, np.where(rows >= 0, self.item_ids[np.maximum(rows, 0)], -1)

    # ------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
             extra: dict | None = None, files: dict[str, str] | None = None, overwrite: bool = True) -> Path:
        """Write ``index.faiss``, ``item_ids.npy``, ``meta.json`` (with the sha256 of ``checkpoint``) and any
        extra text ``files`` (name -> content), all in one atomic folder write."""
        faiss = _faiss()
        folder = Path(folder)
        meta = {
            "format": FORMAT_VERSION,
            "factory": self.factory,
            "nprobe": self.nprobe,
            "ef_search": self.ef_search,
            "dim": int(self.dim),
            "n_indexed": int(self.n_indexed),
            "checkpoint_sha256": file_sha256(checkpoint) if checkpoint is not None else None,
            "checkpoint_name": Path(checkpoint).name if checkpoint is not None else None,
            **(extra or {}),
        }
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            faiss.write_index(self.cpu_index(), str(tmp / INDEX_FILE))
            np.save(tmp / ITEM_IDS_FILE, self.item_ids, allow_pickle=False)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
            for name, text in (files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
             nprobe: int | None = None, ef_search: int | None = None) -> tuple["ItemIndex", dict]:
        """Read an index written by :meth:`save`; if ``checkpoint`` is given its sha256 must match the record."""
        faiss = _faiss()
        folder = Path(folder)
        meta_path, index_path, ids_path = folder / META_FILE, folder / INDEX_FILE, folder / ITEM_IDS_FILE
        for path in (meta_path, index_path, ids_path):
            if not path.is_file():
                raise UserError(f"FAISS index folder {folder} lacks {path.name}",
                                fix="rebuild it (recommend --rebuild-index)")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{meta_path} is not valid JSON ({err})", fix="rebuild the index") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise UserError(f"{meta_path} is not a recbole-ext index record (format {FORMAT_VERSION})",
                            fix="rebuild the index")
        if checkpoint is not None:
            actual = file_sha256(checkpoint)
            if meta.get("checkpoint_sha256") != actual:
                raise UserError(f"FAISS index {folder} was built from another checkpoint "
                                f"(recorded sha256 {str(meta.get('checkpoint_sha256'))[:12]}, "
                                f"{Path(checkpoint).name} has {actual[:12]})",
                                fix="rebuild the index from this checkpoint (recommend --rebuild-index)")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as err:
            raise UserError(f"{index_path} is not a readable FAISS index ({str(err).strip().splitlines()[-1]})",
                            fix="rebuild the index") from None
        try:
            item_ids = np.load(ids_path, allow_pickle=False)
        except ValueError as err:
            raise UserError(f"{ids_path} is not a plain .npy array ({err})", fix="rebuild the index") from None
        if item_ids.ndim != 1 or item_ids.dtype.kind not in "iu" or len(item_ids) != index.ntotal \
                or index.d != meta.get("dim") or (item_ids.size and item_ids.min() < 1):
            raise UserError(f"FAISS index folder {folder} is inconsistent (item id map {item_ids.shape} "
                            f"{item_ids.dtype}, index of {index.ntotal} x {index.d})", fix="rebuild the index")
        for sub in _sub_indexes(index):
            if sub.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise UserError(f"{index_path} is not an inner-product index", fix="rebuild the index")
        return cls(index, item_ids, meta.get("factory", DEFAULT_FACTORY),
                   nprobe=meta.get("nprobe") if nprobe is None else nprobe,
                   ef_search=meta.get("ef_search") if ef_search is None else ef_search), meta
