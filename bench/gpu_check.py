"""Every model of both tracks trains on the CPU and, when CUDA is available, on the GPU: metrics compared, seconds
per epoch side by side.

    PYTHONPATH=. python bench/gpu_check.py [--quick] [--epochs 2] [--models MambaRec,CafeMed] [--tolerance 0.02]
                                           [--precision fp32|bf16] [--threads N]

Data, generated in a temporary folder: a baby-shaped multimodal set in MMRec's format (``prepare synthetic-mm``:
4096-d image and 384-d text features, like Amazon Baby; fewer users and items) for the multimodal models, and a
synthetic medication set (``prepare synthetic-ehr``) for the medication models. Each model runs through
``recbole_ext.quick_start.run`` with the same seed on each device (``use_gpu: False`` / ``True``; the medication
models with ``patients_per_batch: 16``, a batch worth a GPU, instead of the published one patient). The table lists
the mean training seconds per epoch on each device and the selection metric on the test split (recall@20,
jaccard); a GPU result further than ``--tolerance`` (absolute) from the CPU one is marked DIFF and the exit status
is 1. GPU kernels sum in another order than CPU ones, so the numbers agree to the tolerance, not to the bit. Without
CUDA the CPU side runs alone, the script says that no GPU was found and exits 0.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import recbole_ext  # noqa: F401  (compat shims and registry before any RecBole import)

ROOT = Path(__file__).resolve().parents[1]
MM_YAML = str(ROOT / "properties" / "dataset" / "synth-mm.yaml")
SIZES = {  # (multimodal users, items, interactions), (patients, diagnoses, procedures, medications)
    "quick": ((300, 400, 4000), (300, 200, 100, 60)),
    "full": ((2000, 1500, 30000), (1500, 800, 400, 131)),
}
METRIC = {"mmrec": "recall@20", "medrec": "jaccard"}


def prepare(root: Path, quick: bool) -> dict:
    """Both synthetic datasets under ``root``; returns ``{track: dataset name}``."""
    from recbole_ext.data.prepare import synthetic_ehr, synthetic_mm

    (users, items, inter), (patients, diag, proc, med) = SIZES["quick" if quick else "full"]
    os.environ["RECBOLE_EXT_DATA"] = str(root)
    assert synthetic_mm.main(["--name", "gpu-mm", "--users", str(users), "--items", str(items),
                              "--interactions", str(inter), "--seed", "1"]) == 0
    assert synthetic_ehr.main(["--name", "gpu-ehr", "--out", str(root), "--patients", str(patients),
                               "--diagnoses", str(diag), "--procedures", str(proc), "--medications", str(med),
                               "--seed", "1"]) == 0
    return {"mmrec": "gpu-mm", "medrec": "gpu-ehr"}


def train(model: str, track: str, dataset: str, device: str, args, runs_root: str) -> dict:
    from recbole_ext.quick_start import run

    result = run(model, dataset, saved=False, config_files=[MM_YAML] if track == "mmrec" else None, config_dict={
        "epochs": args.epochs, "seed": 2020, "use_gpu": device == "cuda", "precision": args.precision,
        "show_progress": False, "state": "WARNING", "runs_root": runs_root, "stopping_step": args.epochs,
        **({"patients_per_batch": 16} if track == "medrec" else {})})
    return {"s_epoch": statistics.mean(h["time_s"] for h in result.history),
            "metric": result.test_result[METRIC[track]], "device": str(result.config.get("device", device))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data (a few minutes on two CPU cores)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default=None, help="comma-separated model names (default: every model)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="largest |GPU - CPU| of the test metric")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    import torch

    from recbole_ext.models.medrec import MODELS as MEDREC
    from recbole_ext.models.multimodal import MODELS as MULTIMODAL

    if args.threads:
        torch.set_num_threads(args.threads)
    tracks = {**{m: "mmrec" for m in MULTIMODAL}, **{m: "medrec" for m in MEDREC}}
    models = args.models.split(",") if args.models else list(tracks)
    unknown = [m for m in models if m not in tracks]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(tracks)}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gpu_name = torch.cuda.get_device_name(0) if len(devices) > 1 else None
    print(f"devices: cpu ({torch.get_num_threads()} threads)" + (f", cuda ({gpu_name})" if gpu_name else
                                                                  ", no CUDA GPU found: CPU side only"))
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        datasets = prepare(Path(tmp) / "data", args.quick)
        print(f"{'model':<15} {'metric':<10} {'cpu s/epoch':>11} {'gpu s/epoch':>11} {'cpu':>8} {'gpu':>8} "
              f"{'check':>6}", flush=True)
        for model in models:
            track = tracks[model]
            rows = {d: train(model, track, datasets[track], d, args, str(Path(tmp) / "runs")) for d in devices}
            cpu, gpu = rows["cpu"], rows.get("cuda")
            check = "-" if gpu is None else "ok" if abs(gpu["metric"] - cpu["metric"]) <= args.tolerance else "DIFF"
            if check == "DIFF":
                failed.append(model)
            print(f"{model:<15} {METRIC[track]:<10} {cpu['s_epoch']:>11.2f} "
                  f"{'-' if gpu is None else format(gpu['s_epoch'], '.2f'):>11} {cpu['metric']:>8.4f} "
                  f"{'-' if gpu is None else format(gpu['metric'], '.4f'):>8} {check:>6}", flush=True)
    if gpu_name is None:
        print("no GPU found: the GPU columns are empty; run this on a CUDA machine to compare")
        return 0
    if failed:
        print(f"GPU and CPU disagree beyond {args.tolerance} for {failed}", file=sys.stderr)
        return 1
    print(f"every model agrees within {args.tolerance} between CPU and GPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
