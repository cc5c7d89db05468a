"""A tuned board's part of the spec: the ``tuning:`` budget and the models' search spaces, parsed and checked.

spec.py checks a spec's ``tuning:`` and ``search:`` entries with these; tuning.py runs the studies they describe.
This module imports neither of them (nor Optuna: :meth:`Param.suggest` is handed a trial), so the imports run one
way: spec -> tuning_spec, and tuning -> plan -> spec.

* The budget, ``tuning: {trials: 20, sampler: tpe, seed: 0, max_epochs: 50, pruner: none, datasets: {...}}``,
  is the same for every model on a dataset (:class:`Tuning`).
* Search spaces live beside the defaults, one file per model: ``properties/search/<Model>.yaml`` (``source:`` says
  where the space comes from; ``space:`` maps each option to ``{type: float|int, low, high, log}`` or
  ``{type: categorical, choices: [...]}``). A spec entry may replace it with ``search:`` (:func:`space_for`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from recbole_ext.errors import UserError
from recbole_ext.utils.paths import PROPERTIES_DIR

SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("none", "median", "hyperband")
TUNING_KEYS = {"trials", "sampler", "seed", "max_epochs", "pruner", "datasets"}
PER_DATASET_KEYS = {"trials", "max_epochs"}
PARAM_TYPES = ("float", "int", "categorical")
SEARCH_DIR = PROPERTIES_DIR / "search"


# ----------------------------------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class Tuning:
    trials: int
    sampler: str
    seed: int
    max_epochs: int
    pruner: str = "none"
    per_dataset: dict = field(default_factory=dict)  # dataset -> {"trials": n, "max_epochs": e}

    def budget(self, dataset: str) -> tuple[int, int]:
        """(trials, max_epochs) on ``dataset``: the same for every model there."""
        own = self.per_dataset.get(dataset, {})
        return int(own.get("trials", self.trials)), int(own.get("max_epochs", self.max_epochs))

    def to_dict(self) -> dict:
        return {"trials": self.trials, "sampler": self.sampler, "seed": self.seed, "max_epochs": self.max_epochs,
                "pruner": self.pruner, "datasets": self.per_dataset}


def _positive_int(value, what: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{source}: {what} must be a positive integer, got {value!r}", fix=f"write {what}: 20")
    return value


def parse_tuning(value, source: str, datasets: tuple[str, ...]) -> Tuning:
    if not isinstance(value, dict):
        raise UserError(f"{source}: 'tuning' must be a mapping, got {type(value).__name__}",
                        fix="write tuning: {trials: 20, sampler: tpe, seed: 0, max_epochs: 50}")
    unknown = sorted(set(value) - TUNING_KEYS)
    if unknown:
        raise UserError(f"{source}: unknown key(s) {unknown} in tuning", fix=f"allowed keys are {sorted(TUNING_KEYS)}")
    for key in ("trials", "max_epochs"):
        if key not in value:
            raise UserError(f"{source}: tuning needs '{key}'", fix="write tuning: {trials: 20, max_epochs: 50}")
    sampler = value.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise UserError(f"{source}: tuning.sampler {sampler!r} is not one of {list(SAMPLERS)}", fix="use tpe")
    pruner = value.get("pruner", "none")
    if pruner not in PRUNERS:
        raise UserError(f"{source}: tuning.pruner {pruner!r} is not one of {list(PRUNERS)}", fix="use none")
    seed = value.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UserError(f"{source}: tuning.seed must be an integer from 0 to 2**32 - 1, got {seed!r}",
                        fix="write seed: 0")
    per_dataset = value.get("datasets") or {}
    if not isinstance(per_dataset, dict):
        raise UserError(f"{source}: tuning.datasets must map dataset names to budgets",
                        fix="write datasets: {mimic3-demo: {trials: 5}}")
    clean = {}
    for name, own in per_dataset.items():
        if name not in datasets:
            raise UserError(f"{source}: tuning.datasets names {name!r}, which is not in datasets",
                            fix=f"use one of {list(datasets)}")
        if not isinstance(own, dict) or not own or set(own) - PER_DATASET_KEYS:
            raise UserError(f"{source}: tuning.datasets.{name} must set some of {sorted(PER_DATASET_KEYS)}",
                            fix=f"write {name}: {{trials: 5, max_epochs: 20}}")
        clean[name] = {k: _positive_int(v, f"tuning.datasets.{name}.{k}", source) for k, v in own.items()}
    return Tuning(_positive_int(value["trials"], "tuning.trials", source), sampler, seed,
                  _positive_int(value["max_epochs"], "tuning.max_epochs", source), pruner, clean)


# ----------------------------------------------------------------------------------------------------- spaces
@dataclass(frozen=True)
class Param:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def extremes(self) -> list:
        """Every value a trial can get at the edges: each choice, or a range's two ends (for bound checks)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def grid_values(self) -> list | None:
        """The values a grid sampler walks; None for a continuous range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1))
        return None

    def describe(self) -> str:
        if self.type == "categorical":
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} in [{self.low}, {self.high}]{' (log)' if self.log else ''}{' int' if self.type == 'int' else ''}"


@dataclass(frozen=True)
class SearchSpace:
    model: str
    params: tuple[Param, ...]
    source: str          # where the space comes from (paper, official code), for the docs and the report
    origin: str          # the file or spec entry that declared it

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def grid(self) -> dict[str, list]:
        out = {}
        for p in self.params:
            values = p.grid_values()
            if values is None:
                raise UserError(f"{self.origin}: {p.name} is a continuous range, which the grid sampler cannot walk",
                                fix="use sampler: tpe or random, or give the option as choices")
            out[p.name] = values
        return out

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def to_dict(self) -> dict:
        return {"source": self.source, "origin": self.origin,
                "space": {p.name: p.describe() for p in self.params}}


def _number(value, what: str, where: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as text
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {what} must be a finite number, got {value!r}", fix=f"write {what}: 0.001")
    return value


def parse_param(name: str, spec, where: str) -> Param:
    if not isinstance(spec, dict):
        raise UserError(f"{where}: {name} must be a mapping such as {{type: float, low: 1.0e-4, high: 1.0e-2, "
                        f"log: true}}", fix="see docs/leaderboard.md, 'Tuning'")
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise UserError(f"{where}: {name}.type must be one of {list(PARAM_TYPES)}, got {kind!r}",
                        fix="write type: float, int or categorical")
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise UserError(f"{where}: {name} has unknown key(s) {unknown}", fix=f"{kind} takes {sorted(allowed)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: {name}.choices must be a non-empty list", fix="write choices: [32, 64]")
        if len({json.dumps(c, sort_keys=True) for c in choices}) != len(choices):
            raise UserError(f"{where}: {name}.choices repeats a value", fix="list each value once")
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise UserError(f"{where}: {name}.choices holds {c!r}; Optuna takes numbers, text, booleans",
                                fix="write a list of scalars")
        return Param(name, kind, choices=tuple(choices))
    low, high = _number(spec.get("low"), f"{name}.low", where), _number(spec.get("high"), f"{name}.high", where)
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise UserError(f"{where}: {name} is an int range with non-integer bounds", fix="use whole numbers")
    if not low < high:
        raise UserError(f"{where}: {name} needs low < high, got [{low}, {high}]", fix="swap or widen the bounds")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: {name}.log must be true or false", fix="write log: true")
    if log and low <= 0:
        raise UserError(f"{where}: {name} is log-scaled, so low must be > 0", fix="raise low or drop log")
    return Param(name, kind, float(low) if kind == "float" else int(low), float(high) if kind == "float" else int(high),
                 log)


def parse_space(model: str, data, origin: str) -> SearchSpace:
    if not isinstance(data, dict) or "space" not in data:
        raise UserError(f"{origin}: a search space is a mapping with 'space:' (and 'source:')",
                        fix="see properties/search/BPR.yaml for the format")
    unknown = sorted(set(data) - {"source", "space"})
    if unknown:
        raise UserError(f"{origin}: unknown key(s) {unknown}", fix="use source: and space:")
    space = data["space"]
    if not isinstance(space, dict) or not space:
        raise UserError(f"{origin}: 'space' must map at least one option to its range",
                        fix="write space: {learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}")
    reserved = sorted({"seed", "model", "dataset", "epochs", "evaluate_test"} & set(space))
    if reserved:
        raise UserError(f"{origin}: {reserved} cannot be searched: the leaderboard sets them for every trial",
                        fix="the epoch cap is tuning.max_epochs; seeds are the spec's")
    source = data.get("source", "")
    if not isinstance(source, str):
        raise UserError(f"{origin}: 'source' must be text", fix="quote it")
    return SearchSpace(model, tuple(parse_param(str(k), v, origin) for k, v in space.items()), source.strip(),
                       origin)


def declared_space(model: str) -> SearchSpace | None:
    """``properties/search/<model>.yaml``, or None when the model declares no space."""
    path = SEARCH_DIR / f"{model}.yaml"
    if not path.is_file():
        return None
    from recbole_ext.config import read_yaml_file

    return parse_space(model, read_yaml_file(path), f"properties/search/{model}.yaml")


def space_for(model_spec, source: str) -> SearchSpace:
    """The spec entry's ``search:`` if given, else the model's declared space; a tuned board needs one."""
    if model_spec.search is not None:
        return parse_space(model_spec.name, model_spec.search, f"{source}: {model_spec.name}.search")
    space = declared_space(model_spec.name)
    if space is None:
        raise UserError(f"{source}: model {model_spec.name} declares no search space, so it cannot be tuned with the "
                        f"others' budget", fix=f"add properties/search/{model_spec.name}.yaml or give the model a "
                                               f"'search:' entry in the spec")
    clash = sorted(set(space.names()) & set(model_spec.config))
    if clash:
        raise UserError(f"{source}: model {model_spec.name} fixes {clash} in config, which its search space searches",
                        fix="drop them from config, or give the model a 'search:' without them")
    return space
