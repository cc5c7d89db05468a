"""Grid search over YAML-declared lists: selection on validation only, test reported for the chosen point only."""
from types import SimpleNamespace

import pytest

from recbole_ext.errors import UserError
from recbole_ext.grid_search import declared_grid, format_grid, grid_points, run_grid


def test_mambarec_declares_the_official_grid():
    grid = declared_grid("MambaRec")
    assert grid == {"mmd_weight": [0.1, 0.15, 0.2], "mmd_kernel_bandwidth": [1.0, 1.5, 2.0]}
    points = grid_points(grid)
    assert len(points) == 9 and points[1] == {"mmd_weight": 0.1, "mmd_kernel_bandwidth": 1.5}


def test_selection_uses_validation_and_reports_only_the_chosen_test():
    # valid and test disagree on purpose: the official loop (test-selected) would pick (0.2, 2.0)
    valid = {(0.1, 1.0): 0.30, (0.1, 2.0): 0.35, (0.2, 1.0): 0.33, (0.2, 2.0): 0.31}
    test = {(0.1, 1.0): 0.20, (0.1, 2.0): 0.21, (0.2, 1.0): 0.22, (0.2, 2.0): 0.40}
    calls = []

    def fake_run(model, dataset, config_dict=None, config_files=None):
        key = (config_dict["mmd_weight"], config_dict["mmd_kernel_bandwidth"])
        calls.append(config_dict)
        return SimpleNamespace(config={"valid_metric": "recall@20", "valid_metric_bigger": True},
                               best_valid_score=valid[key], best_valid_result={"recall@20": valid[key]},
                               test_result={"recall@20": test[key]}, run_dir=f"runs/{key}")

    grid = {"mmd_weight": [0.1, 0.2], "mmd_kernel_bandwidth": [1.0, 2.0]}
    result = run_grid("MambaRec", "synth", grid=grid, config_dict={"epochs": 3}, runner=fake_run)
    assert len(calls) == 4 and all(c["epochs"] == 3 for c in calls)
    assert result.chosen == {"mmd_weight": 0.1, "mmd_kernel_bandwidth": 2.0}
    assert result.test_result == {"recall@20": 0.21}
    assert all("test" not in str(p.keys()) for p in result.points)
    assert "<- chosen" in format_grid(result)


def test_grid_errors_are_user_errors():
    with pytest.raises(UserError, match="both fixed and searched"):
        run_grid("MambaRec", "x", config_dict={"mmd_weight": 0.1}, runner=lambda *a, **k: None)
    with pytest.raises(UserError, match="non-empty list"):
        run_grid("MambaRec", "x", grid={"mmd_weight": 0.1}, runner=lambda *a, **k: None)
    with pytest.raises(UserError, match="unknown model 'NoSuchModel'"):
        run_grid("NoSuchModel", "x", runner=lambda *a, **k: None)


def test_every_grid_point_is_checked_before_the_first_run_trains():
    calls = []
    grid = {"mmd_weight": [0.1, 0.2], "mmd_kernel_bandwidth": [1.0, 0.0]}  # the last value is out of range
    with pytest.raises(UserError, match="mmd_kernel_bandwidth=0.0 must be > 0"):
        run_grid("MambaRec", "x", grid=grid, runner=lambda *a, **k: calls.append(a))
    assert calls == []
