"""Leaderboard spec: a YAML file naming the task, datasets, models, seeds and per-model grids.

A spec expands into runs, one per (model, dataset, configuration, seed). Example::

    name: quick                    # (str) title of the tables
    task: mmrec                    # (str) general | mmrec | medrec | mixed (documents the board; plots follow
                                   #       the metrics: accuracy-vs-DDI appears wherever a DDI rate is reported)
    datasets: [synth-mm]           # (list[str]) dataset names as quick_start.run takes them
    seeds: [0, 1, 2]               # (list[int] or int n meaning 0..n-1)
    tuning_seeds: 1                # (int, optional) choose the grid point on the first n seeds only
    config: {epochs: 5}            # (dict, optional) config_dict entries for every run
    dataset_config:                # (dict, optional) per-dataset config_dict entries
      synth-mm: {topk: [10, 20]}
    metrics: [recall@20, ndcg@20]  # (list[str], optional) columns to show; default: every test metric
    models:
      - BPR                        # a bare name: defaults only
      - name: LightGCN
        datasets: [synth-mm]       # (list[str], optional) only these datasets (mixed boards such as quick.yaml)
        config: {n_layers: 2}      # fixed entries for this model
        grid:                      # every combination is tried; the best on validation is kept
          learning_rate: [0.001, 0.0005]

A tuned board replaces the grids with one budget for every model (parsed in recbole_ext/leaderboard/tuning_spec.py,
run by recbole_ext/leaderboard/tuning.py)::

    tuning: {trials: 20, sampler: tpe, seed: 0, max_epochs: 50, pruner: none}
    seeds: [1, 2, 3]               # the final runs' seeds; the tuning seed may not be one of them
    models:
      - BPR                        # searched over properties/search/BPR.yaml
      - name: LightGCN
        search:                    # (optional) this board's own space instead of the declared one
          space: {n_layers: {type: categorical, choices: [1, 2, 3]}}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recbole_ext.errors import UserError
from recbole_ext.leaderboard.tuning_spec import Tuning, parse_space, parse_tuning
from recbole_ext.utils import grids

TASKS = ("general", "mmrec", "medrec", "mixed")
SPEC_KEYS = {"name", "task", "datasets", "models", "seeds", "tuning_seeds", "config", "dataset_config", "metrics",
             "description", "tuning"}
MODEL_KEYS = {"name", "grid", "config", "datasets", "search"}
# Keys the leaderboard owns: a spec setting them would break seeding or the run identity.
RESERVED_CONFIG_KEYS = {"seed", "model", "dataset"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    datasets: tuple[str, ...] | None = None  # None: every dataset of the spec
    search: dict | None = None  # a tuned board's own search space for this model (else properties/search/)

    def runs_on(self, dataset: str) -> bool:
        return self.datasets is None or dataset in self.datasets

    def grid_points(self) -> list[dict]:
        """Every combination of the grid (``[{}]`` without one): :func:`recbole_ext.utils.grids.grid_points` over
        the keys sorted by name, not in the spec's order. The order is the plan order, and the first of equally
        scored points is chosen (stats.choose_configs), so the spec's order would choose another point on a tie
        than every board run so far; run keys do not depend on it."""
        return grids.grid_points({key: self.grid[key] for key in sorted(self.grid)})


@dataclass(frozen=True)
class LeaderboardSpec:
    name: str
    task: str
    datasets: tuple[str, ...]
    models: tuple[ModelSpec, ...]
    seeds: tuple[int, ...]
    tuning_seeds: int
    config: dict
    dataset_config: dict
    metrics: tuple[str, ...] | None
    source: str = ""
    description: str = ""
    tuning: Tuning | None = None  # a tuned board's budget, else None (grids, or defaults only)

    @property
    def n_grid_points(self) -> int:
        return sum(len(m.grid_points()) for m in self.models)


def _where(source: str, key: str) -> str:
    return f"{source}: '{key}'"


def _check_mapping(value, what: str, source: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{_where(source, what)} must be a mapping, got {type(value).__name__}",
                        fix=f"write {what}: {{key: value, ...}}")
    for k in value:
        if not isinstance(k, str):
            raise UserError(f"{_where(source, what)} has a non-text key {k!r}", fix="quote the key")
    return value


def _check_json_value(value, what: str, source: str):
    """Config values must round-trip through JSON: they are hashed into the run identity and stored."""
    try:
        json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        raise UserError(f"{_where(source, what)} holds a value that is not plain data: {value!r}",
                        fix="use numbers, strings, booleans, lists and mappings only") from None


def _check_config(value, what: str, source: str) -> dict:
    value = _check_mapping(value, what, source)
    reserved = RESERVED_CONFIG_KEYS & set(value)
    if reserved:
        raise UserError(f"{_where(source, what)} sets {sorted(reserved)}, which the leaderboard sets per run",
                        fix="use the spec's 'seeds' and 'datasets'/'models' lists instead")
    for k, v in value.items():
        _check_json_value(v, f"{what}.{k}", source)
    return dict(value)


def _check_unknown(given: dict, allowed: set, what: str, source: str):
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise UserError(f"{source}: unknown key(s) {unknown} in {what}",
                        fix=f"allowed keys are {sorted(allowed)}")


def _parse_model(entry, index: int, source: str) -> ModelSpec:
    if isinstance(entry, str):
        if not entry.strip():
            raise UserError(f"{source}: models[{index}] is an empty name", fix="name a model, e.g. BPR")
        return ModelSpec(entry.strip())
    if not isinstance(entry, dict):
        raise UserError(f"{source}: models[{index}] must be a model name or a mapping, got {type(entry).__name__}",
                        fix="write '- BPR' or '- {name: BPR, grid: {...}}'")
    _check_unknown(entry, MODEL_KEYS, f"models[{index}]", source)
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{source}: models[{index}] has no 'name'", fix="add name: <Model>")
    config = _check_config(entry.get("config"), f"models[{index}].config", source)
    grid = _check_mapping(entry.get("grid"), f"models[{index}].grid", source)
    if "grid" in entry and not grid:
        raise UserError(f"{source}: models[{index}] ({name}) has an empty grid",
                        fix="list at least one hyper-parameter with values, or remove 'grid'")
    clean_grid = {}
    for key, values in grid.items():
        if key in RESERVED_CONFIG_KEYS:
            raise UserError(f"{source}: models[{index}].grid sets '{key}', which the leaderboard sets per run",
                            fix="use the spec's 'seeds' list")
        if not isinstance(values, list):
            raise UserError(f"{source}: models[{index}].grid.{key} must be a list of values, got "
                            f"{type(values).__name__}", fix=f"write {key}: [{values!r}]")
        if not values:
            raise UserError(f"{source}: models[{index}].grid.{key} is an empty list",
                            fix="give at least one value")
        for v in values:
            _check_json_value(v, f"models[{index}].grid.{key}", source)
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise UserError(f"{source}: models[{index}].grid.{key} repeats a value", fix="list each value once")
        if key in config:
            raise UserError(f"{source}: models[{index}] sets '{key}' both in config and in grid",
                            fix="keep it in one place")
        clean_grid[key] = list(values)
    datasets = None
    if "datasets" in entry:
        datasets = _parse_str_list(entry["datasets"], f"models[{index}].datasets", source)
    search = entry.get("search")
    if search is not None:
        parse_space(name.strip(), search, f"{source}: models[{index}].search")  # checked now, used by tuning
        _check_json_value(search, f"models[{index}].search", source)
    return ModelSpec(name.strip(), config, clean_grid, datasets, search)


def _parse_str_list(value, what: str, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise UserError(f"{_where(source, what)} must be a non-empty list of names", fix=f"write {what}: [a, b]")
    for v in value:
        if not isinstance(v, str) or not v.strip():
            raise UserError(f"{_where(source, what)} holds {v!r}, not a name", fix="list names as text")
    if len(set(value)) != len(value):
        raise UserError(f"{_where(source, what)} repeats a name", fix="list each name once")
    return tuple(v.strip() for v in value)


def _parse_seeds(value, source: str) -> tuple[int, ...]:
    if isinstance(value, bool) or value is None:
        raise UserError(f"{_where(source, 'seeds')} must be a list of integers or a count",
                        fix="write seeds: [0, 1, 2] or seeds: 3")
    if isinstance(value, int):
        if value < 1:
            raise UserError(f"{_where(source, 'seeds')} must be at least 1", fix="write seeds: 5")
        return tuple(range(value))
    if not isinstance(value, list) or not value:
        raise UserError(f"{_where(source, 'seeds')} must be a non-empty list of integers or a count",
                        fix="write seeds: [0, 1, 2] or seeds: 3")
    for s in value:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32:
            raise UserError(f"{_where(source, 'seeds')} holds {s!r}, not an integer from 0 to 2**32 - 1",
                            fix="write seeds: [0, 1, 2]")
    if len(set(value)) != len(value):
        raise UserError(f"{_where(source, 'seeds')} repeats a seed", fix="list each seed once")
    return tuple(value)


def parse_spec(data: Any, source: str = "<spec>") -> LeaderboardSpec:
    """Validate a loaded spec; every mistake is one UserError naming the file and the key."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a leaderboard spec must be a YAML mapping, got {type(data).__name__}",
                        fix="see docs/leaderboard.md for the format")
    _check_unknown(data, SPEC_KEYS, "the spec", source)
    for required in ("task", "datasets", "models", "seeds"):
        if required not in data:
            raise UserError(f"{source}: missing required key '{required}'", fix="see docs/leaderboard.md")
    task = data["task"]
    if task not in TASKS:
        raise UserError(f"{source}: task {task!r} is not one of {list(TASKS)}", fix="set task: mmrec or medrec")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{_where(source, 'name')} must be text", fix="write name: my-board")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{_where(source, 'description')} must be text", fix="quote it")
    datasets = _parse_str_list(data["datasets"], "datasets", source)
    models_raw = data["models"]
    if not isinstance(models_raw, list) or not models_raw:
        raise UserError(f"{_where(source, 'models')} must be a non-empty list", fix="write models: [BPR, LightGCN]")
    models = tuple(_parse_model(m, i, source) for i, m in enumerate(models_raw))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UserError(f"{source}: models list repeats a model name", fix="merge the entries into one grid")
    for m in models:
        stray = sorted(set(m.datasets or ()) - set(datasets))
        if stray:
            raise UserError(f"{source}: model {m.name} lists datasets {stray}, which are not in datasets",
                            fix=f"use some of {list(datasets)}")
    seeds = _parse_seeds(data["seeds"], source)
    tuning = data.get("tuning_seeds", len(seeds))
    if isinstance(tuning, bool) or not isinstance(tuning, int) or not 1 <= tuning <= len(seeds):
        raise UserError(f"{_where(source, 'tuning_seeds')} must be an integer from 1 to {len(seeds)}",
                        fix="drop it to tune on every seed")
    config = _check_config(data.get("config"), "config", source)
    dataset_config_raw = _check_mapping(data.get("dataset_config"), "dataset_config", source)
    unknown_ds = sorted(set(dataset_config_raw) - set(datasets))
    if unknown_ds:
        raise UserError(f"{source}: dataset_config names {unknown_ds}, which are not in datasets",
                        fix=f"use one of {list(datasets)}")
    dataset_config = {d: _check_config(c, f"dataset_config.{d}", source) for d, c in dataset_config_raw.items()}
    metrics = data.get("metrics")
    if metrics is not None:
        metrics = tuple(m.lower() for m in _parse_str_list(metrics, "metrics", source))
    budget = None
    if "tuning" in data:
        budget = _parse_tuning(data, models, seeds, config, dataset_config, datasets, source)
    elif any(m.search is not None for m in models):
        raise UserError(f"{source}: a model gives 'search:' but the spec has no 'tuning:' budget",
                        fix="add tuning: {trials: 20, sampler: tpe, seed: 0, max_epochs: 50}")
    return LeaderboardSpec(name.strip(), task, datasets, models, seeds, tuning, config, dataset_config, metrics,
                           source, description, budget)


def _parse_tuning(data: dict, models, seeds, config: dict, dataset_config: dict, datasets, source: str):
    """A tuned board: one budget, no grids, the epoch cap owned by the budget, a tuning seed apart from the seeds."""
    budget = parse_tuning(data["tuning"], source, datasets)
    if "tuning_seeds" in data:
        raise UserError(f"{source}: 'tuning_seeds' belongs to grid boards; a tuned board tunes on tuning.seed",
                        fix="drop tuning_seeds")
    gridded = [m.name for m in models if m.grid]
    if gridded:
        raise UserError(f"{source}: models {gridded} give a 'grid', but the board is tuned with one budget for all",
                        fix="drop the grids (spaces live in properties/search/<Model>.yaml or a model's 'search:')")
    if budget.seed in seeds:
        raise UserError(f"{source}: the tuning seed {budget.seed} is also in seeds; the final runs must use other "
                        f"seeds than the trials", fix=f"drop {budget.seed} from seeds or change tuning.seed")
    for where, entries in [("config", config), *((f"dataset_config.{d}", c) for d, c in dataset_config.items()),
                           *((f"models.{m.name}.config", m.config) for m in models)]:
        if "epochs" in entries:
            raise UserError(f"{source}: {where} sets epochs, but a tuned board caps epochs with tuning.max_epochs",
                            fix="drop epochs (tuning.datasets.<name>.max_epochs sets a dataset's own cap)")
    return budget


def load_spec(path: str | Path) -> LeaderboardSpec:
    from recbole_ext.config import read_yaml_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"leaderboard spec {path} does not exist", fix="give the path of a YAML spec")
    return parse_spec(read_yaml_file(path), str(path))
