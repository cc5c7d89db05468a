"""CafeMed against RETAIN and RecBole's context-aware models on the bundled synth-ehr-small, via quick_start.run.

Every model runs with the dataset's own training settings (properties/dataset/synth-ehr-small.yaml, chosen on
validation Jaccard) except ``epochs``, cut to 10 for the time budget; the test split is scored with the task's
bootstrap protocol. The margins asserted here held for seeds 0, 1 and 2 (docs/medication-models.md).
"""
from __future__ import annotations

import json

import pytest
import torch

from recbole_ext import quick_start
from recbole_ext.utils.paths import dataset_root

CONTEXT_MODELS = ("MedFM", "MedDeepFM", "MedWideDeep")
SETTINGS = {"epochs": 10, "show_progress": False, "state": "WARNING", "seed": 0}


@pytest.fixture(scope="module")
def test_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RECBOLE_EXT_CACHE", str(root / "cache"))
            return {name: quick_start.run(name, "synth-ehr-small",
                                          config_dict={**SETTINGS, "runs_root": str(root / "runs")}).test_result
                    for name in ("CafeMed", "RETAIN") + CONTEXT_MODELS}
    finally:
        torch.set_num_threads(previous)


def test_cafemed_beats_recbole_context_models(test_results):
    cafemed = test_results["CafeMed"]["jaccard"]
    for name in CONTEXT_MODELS:
        assert cafemed > test_results[name]["jaccard"] + 0.03, (name, test_results[name]["jaccard"], cafemed)


def test_cafemed_ddi_rate_at_most_the_data_rate(test_results):
    stats = json.loads((dataset_root() / "synth-ehr-small" / "synth-ehr-small.json").read_text())["statistics"]
    assert test_results["CafeMed"]["ddi_rate"] <= stats["ground_truth_ddi_rate"]
