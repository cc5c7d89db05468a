"""Memory and time of ``prepare amazon`` on a large synthetic raw Amazon 2014 file (the streaming readers).

    python bench/amazon_stream.py                 # 5,000,000 reviews (a few minutes to write, a few to read)
    python bench/amazon_stream.py --n 200000      # quick
    python bench/amazon_stream.py --dir /tmp/amz  # keep the generated files there and reuse them next time

Writes, into a temporary folder (or --dir):

* ``reviews.json.gz``: N review lines in the 2014 format (reviewerID, asin, reviewerName, helpful, reviewText of
  ~80-900 characters, overall, summary, unixReviewTime, reviewTime), users and items drawn from Zipf-like
  popularity laws over populations of N users and N/5 items, so most users review once or twice and the 5-core
  keeps a real share (about a third at N = 5M);
* ``meta.json.gz``: one loose (Python-literal) 2014 meta line per item of the item population, reviewed or not;
* ``image_features.b``: records of the most popular items (``--b-items``, default 20,000; items without a record
  get the mean row, as MMRec).

then runs ``python run.py prepare amazon`` on them in a child process with the text encoder replaced by a cheap
stub (random unit vectors: the sentence building and everything else is real, the model is not), and reports the
child's wall time and peak resident memory (``ru_maxrss``). The output's image matrix (items x 4096 float32) is
part of the peak: it grows with the items that survive the 5-core, not with the file.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 100_000
WORDS = ("baby bottle great soft quality price daughter son love works well easy clean recommend would buy again "
         "small large cute color washed fits perfectly month old arrived quickly product disappointed returned "
         "sturdy cheap nice stroller seat blanket toy gift happy").split()


def _zipf_choice(rng, population: int, exponent: float, size: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, population + 1) ** exponent
    cumulative = np.cumsum(weights)
    cumulative /= cumulative[-1]
    return np.searchsorted(cumulative, rng.random(size), side="right").astype(np.int64)


def _ids(prefix: str, codes: np.ndarray, width: int) -> list[str]:
    return [f"{prefix}{c:0{width}X}" for c in codes.tolist()]


def write_reviews(path: Path, n: int, rng) -> None:
    text_pool = " ".join(rng.choice(WORDS, 400_000))
    n_users, n_items = n, max(n // 5, 10)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as fh:
        for start in range(0, n, CHUNK):
            size = min(CHUNK, n - start)
            users = _ids("A", _zipf_choice(rng, n_users, 0.8, size), 13)
            items = _ids("B0", _zipf_choice(rng, n_items, 1.05, size), 8)
            lengths = rng.integers(80, 900, size).tolist()
            offsets = rng.integers(0, len(text_pool) - 1000, size).tolist()
            ratings = rng.integers(1, 6, size).tolist()
            times = rng.integers(1_000_000_000, 1_406_000_000, size).tolist()
            helpful = rng.integers(0, 5, (size, 2)).tolist()
            fh.write("".join(
                f'{{"reviewerID": "{u}", "asin": "{i}", "reviewerName": "Reviewer \\"{u[-4:]}\\"", '
                f'"helpful": [{h[0]}, {h[0] + h[1]}], "reviewText": "{text_pool[o:o + ln]}", "overall": {r}.0, '
                f'"summary": "{text_pool[o:o + 30]}", "unixReviewTime": {t}, "reviewTime": "01 1, 2013"}}\n'
                for u, i, h, o, ln, r, t in zip(users, items, helpful, offsets, lengths, ratings, times)))


def write_meta(path: Path, n: int, rng) -> None:
    n_items = max(n // 5, 10)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as fh:
        for start in range(0, n_items, CHUNK):
            codes = np.arange(start, min(start + CHUNK, n_items))
            fh.write("".join(repr({
                "asin": asin, "title": f"Baby's \"thing\" {asin}", "price": 9.99, "imUrl": f"http://x/{asin}.jpg",
                "related": {"also_bought": [asin] * 5}, "salesRank": {"Baby": int(c)},
                "categories": [["Baby", "Nursery", "Bedding"]], "brand": "Acme",
                "description": "Soft and warm.\nMachine washable. " * 8}) + "\n"
                for c, asin in zip(codes.tolist(), _ids("B0", codes, 8))))


def write_b(path: Path, n: int, b_items: int, rng) -> None:
    count = min(b_items, max(n // 5, 10))
    with open(path, "wb") as fh:
        for start in range(0, count, 1000):
            codes = np.arange(start, min(start + 1000, count))
            block = np.zeros(len(codes), dtype=[("asin", "S10"), ("feature", "<f4", (4096,))])
            block["asin"] = [a.encode() for a in _ids("B0", codes, 8)]
            block["feature"] = rng.random((len(codes), 4096), dtype=np.float32)
            fh.write(block.tobytes())


def child(argv: list[str]) -> int:
    """The prepare itself, with the stub text encoder; run in its own process so its peak memory is its own."""
    sys.path.insert(0, str(ROOT))
    from recbole_ext import cli
    from recbole_ext.data import features

    def stub_encoder(texts, device="cpu"):
        vectors = np.random.default_rng(0).standard_normal((len(texts), 384)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    features.encode_texts = stub_encoder
    features.text_encoder_info = lambda: {"name": "stub (random unit vectors): benchmark only"}
    return cli.main(argv)


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f} MB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5_000_000, help="reviews to write")
    parser.add_argument("--b-items", type=int, default=20_000, help="items with an image record")
    parser.add_argument("--dir", help="write (and reuse) the raw files here instead of a temporary folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="amazon-bench-") as tmp:
        data = Path(args.dir) if args.dir else Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        tag = f"n{args.n}-s{args.seed}"
        reviews, meta, b = data / f"reviews-{tag}.json.gz", data / f"meta-{tag}.json.gz", data / f"img-{tag}.b"
        rng = np.random.default_rng(args.seed)
        started = time.perf_counter()
        if not reviews.is_file():
            write_reviews(reviews, args.n, rng)
        if not meta.is_file():
            write_meta(meta, args.n, rng)
        if not b.is_file():
            write_b(b, args.n, args.b_items, rng)
        print(f"raw files ({time.perf_counter() - started:.0f} s to write or find): reviews {_mb(reviews.stat().st_size)}"
              f" gzip ({args.n:,} lines), meta {_mb(meta.stat().st_size)} gzip, image features {_mb(b.stat().st_size)}")
        out = Path(tmp) / "out"
        command = [sys.executable, __file__, "--child", "prepare", "amazon", "--reviews", str(reviews), "--meta",
                   str(meta), "--image-features", str(b), "--name", "bench", "--out", str(out)]
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        wall = time.perf_counter() - started
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: kilobytes
        print(proc.stdout.rstrip())
        if proc.returncode:
            print(proc.stderr.rstrip(), file=sys.stderr)
            return proc.returncode
        manifest = json.loads((out / "bench" / "mm_features.json").read_text())
        read = manifest["provenance"]["preprocessing"]["steps"][0]
        print(f"distinct ids in the reviews: {read['users']:,} users, {read['items']:,} items")
        print(f"text encoder: STUB (random unit vectors), so the time excludes all-MiniLM-L6-v2 "
              f"({manifest['n_items']:,} sentences to encode for real)")
        print(f"prepare amazon: {wall:.1f} s wall ({args.n / wall:,.0f} reviews/s), peak RSS {_mb(peak_kb * 1024)} "
              f"(child process ru_maxrss); output image matrix {_mb(manifest['n_items'] * 4096 * 4)}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2:]))
    sys.exit(main())
