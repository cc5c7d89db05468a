"""A deterministic stand-in for ``quick_start.run``, for testing the leaderboard machinery only.

It trains nothing: its numbers are a hash of (model, dataset, grid point) plus seed noise, so tests can check
selection, statistics, reports, resumption and kills in seconds. Select it with the hidden CLI option
``--run-fn recbole_ext.testing.fake_runs:run``; rows it writes carry that name in ``run_fn`` and have their own run
keys, so they never mix with real results.

Config keys it understands (tests use them to script behaviour):
``fake_sleep`` seconds to sleep, ``fake_fail`` raise an error, ``fake_crash`` exit the process abruptly,
``fake_epochs`` length of the history (``on_valid``, a tuning trial's pruner, sees it epoch by epoch), ``fake_quality`` the model's level instead of the hash (to plant a difference
between two models), ``fake_users`` the number of test users (50) and ``fake_user_noise`` the sd of each user's
run-to-run noise (0.05). Test metrics are means over the users of per-user values = model level + a user effect
shared by every model (some users are harder) + noise. With ``$RECBOLE_EXT_FAKE_MARKERS`` set, it writes
``<run_key-ish>.<pid>.start`` / ``.done`` files there so tests can see and kill running workers.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np

from recbole_ext.quick_start import RunResult

MEDREC_HINTS = ("ehr", "mimic")


def _unit(*parts) -> float:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2 ** 64


def run(model: str, dataset: str, config_dict: dict | None = None, config_files=None, on_valid=None) -> RunResult:
    config = dict(config_dict or {})
    started = time.time()
    markers = os.environ.get("RECBOLE_EXT_FAKE_MARKERS")
    tag = f"{model}-{dataset}-{config.get('seed')}-{_unit(model, dataset, config):.8f}.{os.getpid()}"
    if markers:
        open(os.path.join(markers, tag + ".start"), "w").close()
    time.sleep(float(config.get("fake_sleep", 0)))
    if config.get("fake_fail"):
        raise RuntimeError(f"fake failure requested for {model} on {dataset}")
    if config.get("fake_crash"):
        os._exit(3)
    seed = int(config.get("seed", 0))
    point = {k: v for k, v in config.items() if k not in ("seed", "reproducibility", "run_dir", "show_progress",
                                                          "epochs", "evaluate_test") and not k.startswith("fake_")}
    quality = float(config["fake_quality"]) if "fake_quality" in config else \
        0.1 + 0.3 * _unit(model, dataset) + 0.05 * _unit(model, dataset, point)
    rng = np.random.default_rng(int(_unit(model, dataset, point, seed) * 2 ** 32))
    medrec = config.get("fake_task") == "medrec" or any(h in dataset.lower() for h in MEDREC_HINTS)
    valid_key = "jaccard" if medrec else "ndcg@10"

    def metrics(shift: float) -> dict:
        q = quality + shift + rng.normal(0, 0.01)
        if medrec:
            return {"jaccard": q, "f1": min(1.0, 1.3 * q), "prauc": min(1.0, 1.5 * q),
                    "ddi_rate": 0.1 - 0.1 * q + rng.normal(0, 0.003), "avg_med": 15 + 10 * q}
        return {"recall@10": 1.4 * q, "ndcg@10": q, "recall@20": 1.8 * q, "ndcg@20": 1.1 * q}

    epochs = int(config.get("fake_epochs", 4))
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1) + rng.normal(0, 0.01),
                "valid": {valid_key: quality * (1 - 0.5 ** (e + 1))}, "time_s": 0.01} for e in range(epochs)]
    valid = metrics(0.0)
    n_users = int(config.get("fake_users", 50))
    effect = np.random.default_rng(int(_unit(dataset, "users") * 2 ** 32)).normal(0, 0.1, n_users)
    noise = float(config.get("fake_user_noise", 0.05))
    per_user = {k: v + effect + rng.normal(0, noise, n_users) for k, v in metrics(-0.01).items()}
    test = {k: float(v.mean()) for k, v in per_user.items()}
    if config.get("evaluate_test", True) is False:
        test, per_user = {}, {}
    stopped = None
    for h in history:  # a tuning trial's pruner sees the validation curve epoch by epoch
        if on_valid is not None and on_valid(h["epoch"], h["valid"][valid_key], True):
            stopped = h["epoch"]
            valid = {valid_key: h["valid"][valid_key]}
            history = history[:stopped + 1]
            break
    if markers:
        open(os.path.join(markers, tag + ".done"), "w").close()
    return RunResult(
        model=model, dataset=dataset, task="medrec" if medrec else "general", run_dir=None, checkpoint=None,
        config={**config, "valid_metric": valid_key.upper(), "valid_metric_bigger": True},
        best_valid_score=valid[valid_key], best_valid_result=valid, test_result=test, history=history,
        wall_time_s=time.time() - started, peak_rss_mb=0.0,
        protocol={"split": "fake", "mask": "none", "bootstrap": False}, stopped_at_epoch=stopped,
        per_user_test={"users": [f"u{i}" for i in range(n_users)], "metrics": {k: v.tolist() for k, v in
                                                                               per_user.items()}} if per_user else {})
