"""Smoke test of bench/medrec_epoch.py: the benchmark the README's epoch-time figures come from still runs and
reports what it claims (one epoch of RETAIN on the MIMIC-III-scale in-process data; no timing is asserted)."""
import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "medrec_epoch.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("medrec_epoch_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_reports_epoch_time_per_step_and_memory(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()  # the bench sets the thread count: keep this process's
    assert bench.main(["--data", "inprocess", "--models", "RETAIN", "--epochs", "1", "--interleave",
                       "--threads", str(threads), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "RETAIN" and row["epoch_s"] > 0 and row["peak_rss_mb"] > 0
    # 2/3 of the 6,350 patients in batches of 32
    assert row["train_patients"] == 4233 and row["batches"] == 133
    printed = capsys.readouterr().out
    assert f"{bench.per_step_ms(row):6.2f} ms/step" in printed
    assert abs(bench.per_step_ms(row) - 1000 * row["epoch_s"] / 133) < 1e-9


def test_bench_rejects_malformed_overrides():
    bench = load_bench()
    try:
        bench.parse_overrides(["use_charm"])
    except SystemExit as exc:
        assert "KEY=VALUE" in str(exc)
    else:
        raise AssertionError("an override without '=' must be refused")
