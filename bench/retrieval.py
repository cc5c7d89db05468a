"""Top-K retrieval benchmark: torch matmul+topk vs exact FAISS vs IVF / HNSW, on clustered synthetic vectors.

Usage (the numbers in docs/retrieval.md come from the default call on a 2-core machine):

    PYTHONPATH=. python bench/retrieval.py [--n-items 1000000] [--n-queries 10000] [--dim 64] [--threads 2]

Vectors: item and user vectors are drawn around shared cluster centres with per-item norm variation, as trained
embeddings have (popular items get larger norms); everything is seeded. For each method it reports the build time,
the search throughput (queries per second, all queries in sensible batches), the peak resident memory above the
pre-method baseline (sampled every 5 ms, so it includes the index itself) and recall@K against exact search.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time

import numpy as np


def clustered_vectors(n_items, n_queries, dim, n_clusters, seed, noise=0.1):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Zipf-like cluster sizes: a few big genres, a long tail of small ones.
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.7
    weights /= weights.sum()
    item_cluster = rng.choice(n_clusters, size=n_items, p=weights)
    items = centres[item_cluster] + noise * rng.standard_normal((n_items, dim)).astype(np.float32)
    items *= rng.lognormal(0.0, 0.25, size=(n_items, 1)).astype(np.float32)
    user_cluster = rng.choice(n_clusters, size=n_queries, p=weights)
    # A user mixes a main taste with a second one.
    second = rng.choice(n_clusters, size=n_queries, p=weights)
    users = (centres[user_cluster] + 0.4 * centres[second]
             + noise * rng.standard_normal((n_queries, dim)).astype(np.float32))
    return np.ascontiguousarray(items, np.float32), np.ascontiguousarray(users, np.float32)


def _rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak RSS above the baseline at entry, sampled by a background thread."""

    def __enter__(self):
        gc.collect()
        self.base = _rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def mib(self):
        return (self.peak - self.base) / 2**20


def torch_topk(items_t, users, k, query_batch, item_chunk):
    """Exact top-k with bounded memory: [query_batch x item_chunk] score blocks, running top-k merge."""
    import torch

    out_scores = np.empty((len(users), k), np.float32)
    out_ids = np.empty((len(users), k), np.int64)
    n_items = items_t.shape[0]
    with torch.no_grad():
        for qs in range(0, len(users), query_batch):
            q = torch.from_numpy(users[qs:qs + query_batch])
            best_s = torch.full((len(q), k), -float("inf"))
            best_i = torch.zeros((len(q), k), dtype=torch.long)
            for cs in range(0, n_items, item_chunk):
                block = q @ items_t[cs:cs + item_chunk].T
                s, i = torch.topk(block, min(k, block.shape[1]), dim=1)
                merged_s = torch.cat([best_s, s], 1)
                merged_i = torch.cat([best_i, i + cs], 1)
                best_s, pos = torch.topk(merged_s, k, dim=1)
                best_i = torch.gather(merged_i, 1, pos)
            out_scores[qs:qs + len(q)] = best_s.numpy()
            out_ids[qs:qs + len(q)] = best_i.numpy()
    return out_scores, out_ids


def recall_at_k(approx_ids, exact_ids):
    k = exact_ids.shape[1]
    hits = [len(np.intersect1d(a, e, assume_unique=True)) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits)) / k


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-items", type=int, default=1_000_000)
    parser.add_argument("--n-queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.1,
                        help="per-dimension std of the within-cluster noise (centres have unit norm)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--ivf", default="IVF4096,Flat", help="IVF index_factory string")
    parser.add_argument("--ivf-train-size", type=int, default=262144, help="k-means sample (64 per list)")
    parser.add_argument("--nprobe", default="4,8,16,32,64")
    parser.add_argument("--hnsw", default="HNSW32", help="HNSW index_factory string ('' to skip)")
    parser.add_argument("--ef-search", default="16,32,64,128")
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--torch-query-batch", type=int, default=1024)
    parser.add_argument("--torch-item-chunk", type=int, default=65536)
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from recbole_ext.retrieval.index import ItemIndex

    t0 = time.perf_counter()
    items, users = clustered_vectors(args.n_items, args.n_queries, args.dim, args.clusters, args.seed, args.noise)
    # Row 0 is PAD (zeros) as in a model's item_vectors(); ItemIndex never indexes it.
    items_with_pad = np.vstack([np.zeros((1, args.dim), np.float32), items])
    print(f"data: {args.n_items} items x {args.dim}-d, {args.n_queries} queries, {args.clusters} clusters "
          f"(noise {args.noise}), "
          f"{time.perf_counter() - t0:.1f} s to generate; threads={args.threads}", flush=True)
    rows = []

    def report(method, setting, build_s, search, mem, ids, exact_ids):
        search_s, search_cpu = search
        row = {"method": method, "setting": setting, "build_s": round(build_s, 2), "search_s": round(search_s, 2),
               "search_cpu_s": round(search_cpu, 2), "qps": round(args.n_queries / search_s),
               "qps_per_cpu_s": round(args.n_queries / search_cpu), "peak_mib": round(mem, 0),
               f"recall@{args.k}": round(recall_at_k(ids, exact_ids), 4) if exact_ids is not None else 1.0}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def timed(fn):
        """(result, (wall s, process CPU s), peak MiB) of ``fn()``."""
        with PeakMemory() as mem:
            t, c = time.perf_counter(), time.process_time()
            result = fn()
            spent = (time.perf_counter() - t, time.process_time() - c)
        return result, spent, mem.mib

    def sweep(method, factory, param, values, **build_kwargs):
        """Build ``factory`` once, then search at each value of the search-time ``param``."""
        index, (build_s, _), build_mib = timed(lambda: ItemIndex.build(items_with_pad, factory, **build_kwargs))
        for value in values:
            index.set_search_params(**{param: value})
            (_, ids), spent, mib = timed(lambda: index.search(users, args.k))
            label = {"nprobe": "nprobe", "ef_search": "efSearch"}[param]
            extra = f" efC={args.ef_construction}" if param == "ef_search" else ""
            report(method, f"{factory}{extra} {label}={value}", build_s, spent, build_mib + mib, ids, exact_ids)
        del index
        gc.collect()

    # torch matmul + topk (the dense baseline); its ids are 0-based rows of `items`, +1 = item id.
    items_t = torch.from_numpy(items)
    (_, torch_ids), torch_spent, torch_mib = timed(
        lambda: torch_topk(items_t, users, args.k, args.torch_query_batch, args.torch_item_chunk))
    torch_ids += 1
    del items_t

    flat, (flat_build, _), flat_build_mib = timed(lambda: ItemIndex.build(items_with_pad, "Flat"))
    (_, exact_ids), flat_spent, flat_mib = timed(lambda: flat.search(users, args.k))
    report("torch matmul+topk", f"q{args.torch_query_batch} x items{args.torch_item_chunk}", 0.0, torch_spent,
           torch_mib, torch_ids, exact_ids)
    report("faiss exact", "Flat (IndexFlatIP)", flat_build, flat_spent, flat_build_mib + flat_mib, exact_ids,
           exact_ids)
    del flat
    gc.collect()

    if args.ivf:
        sweep("faiss IVF", args.ivf, "nprobe", [int(x) for x in args.nprobe.split(",") if x],
              train_size=args.ivf_train_size, seed=args.seed)
    if args.hnsw:
        sweep("faiss HNSW", args.hnsw, "ef_search", [int(x) for x in args.ef_search.split(",") if x],
              ef_construction=args.ef_construction)

    exact = next(r for r in rows if r["method"] == "faiss exact")
    print()
    print(f"| method | setting | build (s) | search wall (s) | queries/s | x exact | search CPU (s) | "
          f"queries/CPU-s | x exact (CPU) | peak mem (MiB) | recall@{args.k} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['setting']} | {r['build_s']:.1f} | {r['search_s']:.2f} | {r['qps']:,} | "
              f"{r['qps'] / exact['qps']:.1f} | {r['search_cpu_s']:.2f} | {r['qps_per_cpu_s']:,} | "
              f"{r['qps_per_cpu_s'] / exact['qps_per_cpu_s']:.1f} | {r['peak_mib']:.0f} | "
              f"{r[f'recall@{args.k}']:.4f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
