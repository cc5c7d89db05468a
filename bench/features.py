"""Feature extraction throughput: items per second of the offline text encoder (all-MiniLM-L6-v2) and image encoder
(ImageNet EfficientNet-Lite0) of recbole_ext/data/features, by batch size and device, with peak memory.

Usage (the figures in docs/data.md come from the default call on a 2-core machine):

    PYTHONPATH=. python bench/features.py [--texts 2000] [--words 60] [--images 256] [--image-size 500]
        [--text-batch-sizes 32,64,128] [--image-batch-sizes 16,32,64] [--devices cpu[,cuda]] [--threads N]
        [--check-batch-sizes] [--out features.json] [--stream-reviews 5000000]

Inputs are synthetic and seeded (recbole_ext/testing/product_media.py): Amazon-like product texts of about
``--words`` words, and ``--images`` product-like pictures of ``--image-size`` pixels square saved as JPEG (quality
90). Each row times one call of ``encode_texts`` / ``encode_images`` without cache, as a dataset build makes it;
``items/s`` leaves out the model load (timed on its own, once per device), ``items/s with load`` includes it. Peak
memory is the resident set above the pre-call baseline, sampled every 5 ms (the model and every batch included);
on CUDA also the peak of torch's allocator. The ``cache hit`` rows time a second call answered from the feature
cache (the inputs hashed, the entry read and checked). ``--check-batch-sizes`` reports how far the features move
with the batch size (max abs difference against batch size 32, MMRec's default for the texts).
``--stream-reviews N`` also runs bench/amazon_stream.py: a synthetic raw Amazon 2014 reviews file of N lines through
``prepare amazon`` in a child process (text encoding stubbed), reporting wall time and peak memory.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _sibling_benchmark(name: str):
    """Another bench/ script as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# peak RSS above the baseline, sampled every 5 ms: the retrieval benchmark's meter
PeakMemory = _sibling_benchmark("retrieval").PeakMemory


def write_images(folder: Path, n: int, size: int) -> list[Path]:
    from recbole_ext.testing.product_media import product_photo

    paths = []
    for i in range(n):
        path = folder / f"item{i:05d}.jpg"
        product_photo(i, (size, size)).save(path, quality=90)
        paths.append(path)
    return paths


def load_seconds(kind: str, device: str) -> float:
    """Seconds to load the encoder's model alone (what each uncached call pays once)."""
    from recbole_ext.data.features import images, text

    start = time.perf_counter()
    model = text._load_text_model(device, False) if kind == "text" else images._load_encoder(None, device)
    seconds = time.perf_counter() - start
    del model
    gc.collect()
    return seconds


def timed_call(fn, device: str):
    """(result, wall s, peak RSS MiB above the baseline, CUDA peak MiB or None) of ``fn()``."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakMemory() as mem:
        start = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    cuda_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return result, wall, mem.mib, cuda_mib


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--words", type=int, default=60, help="typical words per text")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=500)
    parser.add_argument("--text-batch-sizes", default="32,64,128")
    parser.add_argument("--image-batch-sizes", default="16,32,64")
    parser.add_argument("--devices", default=None, help="comma-separated; default cpu, and cuda when available")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--check-batch-sizes", action="store_true")
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--stream-reviews", type=int, default=0,
                        help="also time the streaming raw-Amazon preprocessing on a synthetic file of this many "
                             "reviews (bench/amazon_stream.py; 5000000 for the documented figure)")
    args = parser.parse_args(argv)

    import torch

    from recbole_ext.data.features import encode_images, encode_texts, image_encoder_info, text_encoder_info
    from recbole_ext.testing.product_media import product_descriptions

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    texts = product_descriptions(args.texts, words=args.words, seed=0)
    rows, checks = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), args.images, args.image_size)
        inputs = {"text": texts, "image": paths}
        encoders = {"text": lambda items, **kw: encode_texts(items, **kw),
                    "image": lambda items, **kw: encode_images(items, **kw).features}
        sizes = {"text": [int(b) for b in args.text_batch_sizes.split(",") if b],
                 "image": [int(b) for b in args.image_batch_sizes.split(",") if b]}
        for device in devices:
            for kind in ("text", "image"):
                load_s = load_seconds(kind, device)
                for batch in sizes[kind]:
                    _, wall, mib, cuda_mib = timed_call(
                        lambda: encoders[kind](inputs[kind], batch_size=batch, device=device, cache_dir=False,
                                               progress=False), device)
                    n = len(inputs[kind])
                    row = {"kind": kind, "device": device, "batch_size": batch, "items": n,
                           "load_s": round(load_s, 2), "wall_s": round(wall, 2),
                           "items_per_s": round(n / max(wall - load_s, 1e-9), 1),
                           "items_per_s_with_load": round(n / wall, 1), "peak_rss_mib": round(mib),
                           "cuda_peak_mib": None if cuda_mib is None else round(cuda_mib)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        cache = Path(tmp) / "cache"
        for kind in ("text", "image"):
            encoders[kind](inputs[kind], cache_dir=cache, progress=False)  # fill the entry
            _, wall, mib, _ = timed_call(lambda: encoders[kind](inputs[kind], cache_dir=cache, progress=False), "cpu")
            n = len(inputs[kind])
            rows.append({"kind": kind, "device": "cache hit", "batch_size": None, "items": n, "load_s": 0.0,
                         "wall_s": round(wall, 3), "items_per_s": round(n / wall, 1),
                         "items_per_s_with_load": round(n / wall, 1), "peak_rss_mib": round(mib),
                         "cuda_peak_mib": None})
            print(json.dumps(rows[-1]), flush=True)
        if args.check_batch_sizes:
            for kind, subset, batches in (("text", texts[:256], (1, 32, 64, 128)), ("image", paths[:64], (1, 32))):
                reference = encoders[kind](subset, batch_size=32, cache_dir=False, progress=False)
                checks[kind] = {str(b): float(np.abs(encoders[kind](subset, batch_size=b, cache_dir=False,
                                                                     progress=False) - reference).max())
                                for b in batches if b != 32}
                checks[kind]["items"] = len(subset)
            print(json.dumps({"max_abs_difference_vs_batch_32": checks}), flush=True)

    print()
    print("| kind | device | batch | items | model load (s) | wall (s) | items/s | items/s with load | "
          "peak RSS (MiB) | CUDA peak (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['device']} | {r['batch_size'] or '-'} | {r['items']:,} | {r['load_s']:.1f} | "
              f"{r['wall_s']:.2f} | {r['items_per_s']:,.1f} | {r['items_per_s_with_load']:,.1f} | "
              f"{r['peak_rss_mib']:,} | {r['cuda_peak_mib'] if r['cuda_peak_mib'] is not None else '-'} |")
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess peak RSS {max_rss:,.0f} MiB; torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}")
    if args.stream_reviews:  # the raw-file side of a dataset build: wall time and peak memory of a child process
        print(f"\nstreaming preprocessing of {args.stream_reviews:,} raw Amazon reviews (bench/amazon_stream.py):",
              flush=True)
        # in a fresh interpreter: ru_maxrss of a child can start from its parent's resident size at fork, and this
        # process holds both encoders by now, which would be reported as the preprocessing's peak
        import subprocess

        subprocess.run([sys.executable, str(Path(__file__).with_name("amazon_stream.py")), "--n",
                        str(args.stream_reviews)], check=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "encoders": {"text": text_encoder_info(), "image": image_encoder_info()},
                       "torch_threads": torch.get_num_threads(), "process_peak_rss_mib": round(max_rss),
                       "rows": rows, "batch_size_check": checks}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
