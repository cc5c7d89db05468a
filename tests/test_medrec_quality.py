"""CafeMed against RETAIN and RecBole's context-aware models on the bundled synth-ehr-small, via quick_start.run.

Every model runs with the same training settings (SETTINGS: 16 patients per step, lr 0.005, 20 epochs, best
validation epoch kept; the settings the dataset YAML used to impose on every model, chosen on validation Jaccard);
the test split is scored with the task's bootstrap protocol. ``target_ddi`` 0.04 sits below the data's DDI rate
(0.0499) so that the DDI check below tests the DDI control; it was first picked after seeing a test DDI rate, so it
serves this test only: the README's tables tune target_ddi on validation (leaderboards/readme-medrec.yaml). Test Jaccard / DDI rate per seed (one thread, this code), CafeMed vs RETAIN vs the
best context model: seed 0 0.2324 / 0.0453 vs 0.2108 vs 0.1328; seed 1 0.2249 / 0.0469 vs 0.2098 vs 0.1402;
seed 2 0.2316 / 0.0465 vs 0.2104 vs 0.1100 (data's DDI rate 0.0499). The default run checks seed 1 (the smallest
lead over RETAIN); ``MEDREC_QUALITY_SEEDS=0,1,2`` checks all three (three times as long).
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from recbole_ext import quick_start
from recbole_ext.utils.paths import dataset_root

CONTEXT_MODELS = ("MedFM", "MedDeepFM", "MedWideDeep")
SETTINGS = {"show_progress": False, "state": "WARNING", "patients_per_batch": 16, "learning_rate": 0.005, "epochs": 20,
            "target_ddi": 0.04}
SEEDS = [int(s) for s in os.environ.get("MEDREC_QUALITY_SEEDS", "1").split(",")]
# Smallest CafeMed - model test Jaccard over seeds 0, 1, 2: RETAIN 0.0151, context models 0.0847.
MARGIN_OVER_RETAIN = 0.005
MARGIN_OVER_CONTEXT = 0.05


@pytest.fixture(scope="module", params=SEEDS, ids=lambda seed: f"seed{seed}")
def test_results(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"quality{request.param}")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RECBOLE_EXT_CACHE", str(root / "cache"))
            config = {**SETTINGS, "seed": request.param, "runs_root": str(root / "runs")}
            return {name: quick_start.run(name, "synth-ehr-small", config_dict=config).test_result
                    for name in ("CafeMed", "RETAIN") + CONTEXT_MODELS}
    finally:
        torch.set_num_threads(previous)


def test_cafemed_beats_retain(test_results):
    cafemed, retain = test_results["CafeMed"]["jaccard"], test_results["RETAIN"]["jaccard"]
    assert cafemed > retain + MARGIN_OVER_RETAIN, (cafemed, retain)


def test_cafemed_beats_recbole_context_models(test_results):
    cafemed = test_results["CafeMed"]["jaccard"]
    for name in CONTEXT_MODELS:
        assert cafemed > test_results[name]["jaccard"] + MARGIN_OVER_CONTEXT, (name, test_results[name]["jaccard"],
                                                                                cafemed)


def test_cafemed_ddi_rate_at_most_the_data_rate(test_results):
    stats = json.loads((dataset_root() / "synth-ehr-small" / "synth-ehr-small.json").read_text())["statistics"]
    assert test_results["CafeMed"]["ddi_rate"] <= stats["ground_truth_ddi_rate"], test_results["CafeMed"]
