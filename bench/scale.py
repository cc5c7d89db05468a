"""Catalogue scale: the kNN item graph and full-sort evaluation at 100k and 1M items.

    python bench/scale.py knn --items 100000 1000000 --nprobe 4     # graph: flat vs ivf, time, peak RSS, recall@10
    python bench/scale.py eval --items 100000 1000000                # evaluation peak RSS for two chunk settings

Each measurement runs in its own process, so its peak RSS (``ru_maxrss``) is its own. The features are seeded
clustered tables (``recbole_ext.testing.clustered``, 384-d) written once into ``.npy`` files under ``--work``
and memory-mapped.

knn: ``ivf`` builds the whole graph (``knn_neighbours`` with ``KnnIndex("ivf", nprobe=...)``). ``flat`` builds it
whole up to ``--flat-full`` items; above that the exact search is timed on ``--queries`` sampled rows against every
row and the time extrapolated to all rows (the index build is timed in full), and the figure says so. recall@10 of
ivf is measured against the exact top-10 of the sampled rows.

eval: a fake model with 64-d user and item embeddings scores ``--users`` users over all items in blocks of users
sized as the MMRec evaluation loader sizes them (``eval_users_per_batch``, else ``eval_batch_size // items``),
keeping RecBole's top-k per block, as the trainer's collector does.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM, K, CLUSTERS_PER_ITEM = 384, 10, 1 / 500  # ~500 items per kind


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _features(work: Path, n: int) -> Path:
    from recbole_ext.testing.clustered import write_clustered_npy

    path = work / f"clustered-{n}x{DIM}.npy"
    if not path.exists():
        write_clustered_npy(path, n, DIM, max(1, int(n * CLUSTERS_PER_ITEM)), seed=0)
    return path


def _exact_rows(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine top-k of ``rows`` against all of ``x`` (blocks of 65536 rows)."""
    def unit(a):
        a = np.array(a, dtype=np.float32)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    q = unit(x[rows])
    best_s = np.full((len(rows), k), -np.inf, np.float32)
    best_i = np.zeros((len(rows), k), np.int64)
    for start in range(0, len(x), 65536):
        s = q @ unit(x[start:start + 65536]).T
        s_all = np.concatenate([best_s, s], 1)
        i_all = np.concatenate([best_i, np.arange(start, start + s.shape[1])[None].repeat(len(rows), 0)], 1)
        keep = np.argpartition(-s_all, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s_all, keep, 1), np.take_along_axis(i_all, keep, 1)
    return best_i


def worker_knn(path: str, kind: str, nprobe: int, queries: int, flat_full: int) -> dict:
    import faiss

    from recbole_ext.models.layers.knn import KnnIndex, knn_neighbours

    x = np.load(path, mmap_mode="r")
    n = len(x)
    out = {"items": n, "dim": x.shape[1], "index": kind, "threads": faiss.omp_get_max_threads()}
    sample = np.sort(np.random.default_rng(1).choice(n, size=min(queries, n), replace=False))
    if kind == "ivf" or n <= flat_full:
        settings = KnnIndex("ivf", nprobe=nprobe) if kind == "ivf" else KnnIndex()
        start = time.perf_counter()
        idx, _ = knn_neighbours(x, K, settings)
        out["seconds"] = round(time.perf_counter() - start, 1)
        out["peak_rss_mb"] = round(_peak_mb())
        if kind == "ivf":
            out["nlist"], out["nprobe"] = settings.lists_for(n), nprobe
            exact = _exact_rows(x, sample, K)
            out["recall_at_10"] = round(float(np.mean([len(set(a) & set(b)) for a, b in zip(idx[sample], exact)]))
                                        / K, 4)
            out["recall_queries"] = len(sample)
        return out
    # exact flat at this size: build the index in full, time the search on the sampled rows, extrapolate
    from recbole_ext.models.layers.knn import _ROW_BLOCK, _normalised_rows

    start = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    for s in range(0, n, _ROW_BLOCK):
        index.add(_normalised_rows(x, s, s + _ROW_BLOCK))
    build = time.perf_counter() - start
    q = np.concatenate([_normalised_rows(x, r, r + 1) for r in sample])
    start = time.perf_counter()
    index.search(q, K)
    search = time.perf_counter() - start
    out["seconds"] = round(build + search * n / len(sample), 1)
    out["extrapolated_from_queries"] = len(sample)
    out["peak_rss_mb"] = round(_peak_mb())
    return out


def worker_eval(n_items: int, n_users: int, users_per_batch: int | None, eval_batch_size: int) -> dict:
    import torch

    torch.manual_seed(0)
    users, items = torch.randn(n_users, 64), torch.randn(n_items, 64)
    per_batch = users_per_batch or max(eval_batch_size // n_items, 1)  # MMRecEvalDataLoader's rule
    base = _peak_mb()
    start = time.perf_counter()
    tops = []
    for s in range(0, n_users, per_batch):
        scores = users[s:s + per_batch] @ items.T  # the model's full_sort_predict block
        scores[:, 0] = -torch.inf  # PAD, as the trainer masks it
        tops.append(torch.topk(scores, 50, dim=1).indices)
        del scores
    return {"items": n_items, "users": n_users, "users_per_batch": per_batch,
            "score_block_mb": round(per_batch * n_items * 4 / 2**20, 1), "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(_peak_mb()), "rss_before_scoring_mb": round(base)}


def _run(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "_worker", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["_worker"]:
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "knn":
            print(json.dumps(worker_knn(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))))
        else:
            upb = None if rest[2] == "none" else int(rest[2])
            print(json.dumps(worker_eval(int(rest[0]), int(rest[1]), upb, int(rest[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["knn", "eval"])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--queries", type=int, default=200, help="sampled rows for recall and the flat timing")
    parser.add_argument("--flat-full", type=int, default=200_000, help="largest size whose flat graph is built whole")
    parser.add_argument("--users", type=int, default=4096)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench-scale")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    for n in args.items:
        if args.part == "knn":
            path = str(_features(args.work, n))
            for kind in ("ivf", "flat"):
                print(json.dumps(_run(["knn", path, kind, str(args.nprobe), str(args.queries), str(args.flat_full)])),
                      flush=True)
        else:
            for upb, cells in (("none", 2**25), ("none", 2**28)):
                print(json.dumps(_run(["eval", str(n), str(args.users), upb, str(cells)])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
