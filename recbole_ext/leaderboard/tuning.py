"""Equal-budget tuning on validation: one Optuna study per (model, dataset), every model the same budget.

A spec's ``tuning:`` block sets the budget once for all models::

    tuning: {trials: 20, sampler: tpe, seed: 0, max_epochs: 50, pruner: none}

* Search spaces live beside the defaults, one file per model: ``properties/search/<Model>.yaml`` (``source:`` says
  where the space comes from; ``space:`` maps each option to ``{type: float|int, low, high, log}`` or
  ``{type: categorical, choices: [...]}``). A spec entry may replace it with ``search:``.
* Every trial trains with the tuning seed (which the spec's ``seeds`` may not contain), at most ``max_epochs``
  epochs with the task's early stopping on validation, and with ``evaluate_test: False``: the test split is never
  scored, so nothing about it can reach a choice. A trial's value is its best validation score.
* Trials are asked in rounds, one per study per round, and told in plan order: the sampler's sequence, and so the
  chosen configuration, depends on the seed and the trial results only, never on ``--workers`` or timing. All
  studies of a round run at once, so the fan-out is over models and datasets.
* The studies live in the leaderboard's SQLite file (Optuna's RDB storage, beside the ``runs`` table), and every
  trial's run is a row of ``runs`` (``phase = 'tune'``). After a kill -9 a rerun finds each finished trial in the
  store (never repeated) and reruns only the trial that was in flight, with the parameters it had been given.
* ``pruner: median | hyperband``: the worker reports each epoch's validation score to the study and stops a trial
  the pruner gives up on; a pruned trial counts against the budget like any other.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recbole_ext.errors import UserError
from recbole_ext.utils.paths import PROPERTIES_DIR

SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("none", "median", "hyperband")
TUNING_KEYS = {"trials", "sampler", "seed", "max_epochs", "pruner", "datasets"}
PER_DATASET_KEYS = {"trials", "max_epochs"}
PARAM_TYPES = ("float", "int", "categorical")
SEARCH_DIR = PROPERTIES_DIR / "search"
# TPE's random start-up trials: Optuna's default is 10, which a 10-20-trial budget would spend mostly on; 4 leaves
# the model-based part most of it. Fixed (not a share of the budget) so that raising the budget continues a study.
TPE_STARTUP_TRIALS = 4


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


# ----------------------------------------------------------------------------------------------------- studies
def storage_for(store_path: str | Path):
    import optuna

    # WAL is already on (the results store sets it); a generous lock timeout covers workers reporting epochs
    return optuna.storages.RDBStorage(f"sqlite:///{Path(store_path).resolve()}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def trial_seed(seed: int, study: str, number: int) -> int:
    """The sampler's seed for trial ``number``: a seeded sampler's generator would restart after a kill and repeat
    draws, so each trial gets its own seed, and a resumed study asks exactly what an uninterrupted one asks."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}/{study}/{number}".encode()).digest()[:4], "little")


def make_sampler(tuning: Tuning, space: SearchSpace, seed: int):
    import optuna

    if tuning.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if tuning.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS)


def make_pruner(name: str, max_epochs: int):
    import optuna

    if name == "median":
        # a trial is compared with the finished ones at the same epoch once 5 have finished, after a warm-up of a
        # quarter of the epoch cap: with a tenth, slow-starting curves (LightGCN on synth-mm) were stopped before
        # they caught up (bench/tuning.py, docs/leaderboard.md)
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, max_epochs // 4))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, max_epochs // 10), max_resource=max_epochs,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


@dataclass
class StudyPlan:
    model_spec: Any
    dataset: str
    space: SearchSpace
    trials: int          # the budget (the grid's size when that is smaller, for sampler: grid)
    max_epochs: int
    study_name: str
    base_config: dict    # run_config of the spec for this model and dataset, without the searched options


@dataclass
class TrialRecord:
    number: int
    state: str           # COMPLETE | PRUNED | FAIL
    value: float | None  # best validation score (the run's own direction)
    params: dict
    run_key: str | None
    wall_time_s: float | None


@dataclass
class StudyOutcome:
    model: str
    dataset: str
    space: SearchSpace
    budget: int
    max_epochs: int
    trials: list          # TrialRecord, by trial number
    chosen: dict | None   # the best complete trial's params
    best_value: float | None
    study_name: str
    bigger: bool = True   # direction of the validation metric

    @property
    def wall_time_s(self) -> float:
        return sum(t.wall_time_s or 0.0 for t in self.trials)


def study_name(spec, model_spec, dataset: str, space: SearchSpace, max_epochs: int, base: dict,
               dataset_sha: str | None) -> str:
    from recbole_ext.leaderboard.plan import short_hash

    # the trial count is not part of it: a larger budget continues the same study
    tuning = {k: v for k, v in spec.tuning.to_dict().items() if k not in ("trials", "datasets")}
    identity = {"space": space.to_dict()["space"], "max_epochs": max_epochs, "tuning": tuning,
                "config": {k: v for k, v in base.items() if k != "seed"}, "dataset_sha256": dataset_sha}
    return f"{spec.name}/{model_spec.name}/{dataset}/{short_hash(identity)}"


def study_plans(spec, hashes) -> list[StudyPlan]:
    from recbole_ext.leaderboard.plan import run_config

    plans = []
    for dataset in spec.datasets:
        trials, max_epochs = spec.tuning.budget(dataset)
        for m in spec.models:
            if not m.runs_on(dataset):
                continue
            space = space_for(m, spec.source)
            budget = min(trials, space.grid_size()) if spec.tuning.sampler == "grid" else trials
            base = run_config(spec, m, dataset, {}, spec.tuning.seed)
            base["epochs"] = max_epochs
            plans.append(StudyPlan(m, dataset, space, budget, max_epochs,
                                   study_name(spec, m, dataset, space, max_epochs, base, hashes[dataset].files),
                                   base))
    return plans


def trial_request(spec, plan: StudyPlan, params: dict, number: int, hashes, run_fn: str, store_path):
    """The run of one trial: the spec's config for the model, the trial's parameters, the tuning seed, the epoch
    cap, no test evaluation. The trial's study and number are part of its identity (one row per trial); with a
    pruner, the worker reports its epochs to the study in ``store_path``."""
    from recbole_ext.leaderboard.plan import make_request

    tuning = {"phase": "tune", "trial": number, "study": plan.study_name, "store": str(store_path)}
    if spec.tuning.pruner != "none":
        tuning["pruning"] = {"pruner": spec.tuning.pruner, "max_epochs": plan.max_epochs}
    return make_request(spec, plan.model_spec, plan.dataset, params, spec.tuning.seed, hashes[plan.dataset], run_fn,
                        overrides={"epochs": plan.max_epochs, "evaluate_test": False},
                        identity_extra={"study": plan.study_name, "trial": number}, tuning=tuning)


def _signed(value: float, bigger: bool) -> float:
    """Studies maximise; a smaller-is-better validation metric is negated."""
    return value if bigger else -value


def tune(spec, hashes, store, execute, run_fn: str, progress=None, execute_runs: bool = True) -> list[StudyOutcome]:
    """Run every study of the spec to its budget (resuming what a previous, killed run left) and return them.

    ``execute(requests)`` runs the requests not finished yet and records their rows in ``store``. With
    ``execute_runs`` False (a report from the store) nothing is asked, run or written: the studies are read."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plans = study_plans(spec, hashes)
    storage = storage_for(store.path)
    studies = {}
    # a report loads the studies that exist and creates none
    existing = set() if execute_runs else {s.study_name for s in storage.get_all_studies()}
    for plan in plans:
        sampler = make_sampler(spec.tuning, plan.space, spec.tuning.seed)
        pruner = make_pruner(spec.tuning.pruner, plan.max_epochs)
        if not execute_runs:
            if plan.study_name in existing:
                studies[plan.study_name] = optuna.load_study(study_name=plan.study_name, storage=storage,
                                                             sampler=sampler, pruner=pruner)
            continue
        studies[plan.study_name] = optuna.create_study(storage=storage, study_name=plan.study_name,
                                                       direction="maximize", load_if_exists=True, sampler=sampler,
                                                       pruner=pruner)
    if not execute_runs:
        return outcomes(plans, studies, store)
    if progress is not None:
        progress(sum(max(0, p.trials - _finished(studies[p.study_name])) for p in plans))

    while True:
        round_requests = []  # (plan, trial number, request)
        for plan in plans:
            study = studies[plan.study_name]
            trials = study.get_trials(deepcopy=False)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if running:  # left by a killed run: rerun it with the parameters it was given
                t = running[0]
                round_requests.append((plan, t.number, trial_request(spec, plan, dict(t.params), t.number, hashes,
                                                                     run_fn, store.path)))
            elif len(trials) < plan.trials:
                study.sampler = make_sampler(spec.tuning, plan.space,
                                             trial_seed(spec.tuning.seed, plan.study_name.rsplit("/", 1)[0],
                                                        len(trials)))
                trial = study.ask()
                params = {p.name: p.suggest(trial) for p in plan.space.params}
                round_requests.append((plan, trial.number, trial_request(spec, plan, params, trial.number, hashes,
                                                                         run_fn, store.path)))
        if not round_requests:
            break
        execute([r for _, _, r in round_requests])
        rows = {r["run_key"]: r for r in store.rows(r.run_key for _, _, r in round_requests)}
        for plan, number, request in round_requests:  # plan order: the told sequence never depends on timing
            row = rows.get(request.run_key)
            study = studies[plan.study_name]
            if row is None:  # a failed run kept as failed (--no-retry-failed) has a row; nothing else lacks one
                raise RuntimeError(f"tuning trial {plan.study_name}#{number} finished without a stored row")
            if row["status"] != "ok":
                study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            elif row.get("pruned"):
                study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
            else:
                study.tell(number, _signed(row["best_valid_score"], bool(row.get("valid_bigger", 1))),
                           skip_if_finished=True)
    return outcomes(plans, studies, store)


def _finished(study) -> int:
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def outcomes(plans, studies, store) -> list[StudyOutcome]:
    from optuna.trial import TrialState

    rows = {(r["study"], r["trial"]): r for r in store.rows_of_phase("tune") if r.get("study")}
    out = []
    for plan in plans:
        records = []
        best = None
        study = studies.get(plan.study_name)
        for t in sorted(study.get_trials(deepcopy=False) if study else [], key=lambda t: t.number):
            if not t.state.is_finished():
                continue
            row = rows.get((plan.study_name, t.number))
            value = row.get("best_valid_score") if row and row["status"] == "ok" else None
            records.append(TrialRecord(t.number, t.state.name, value, dict(t.params), row and row["run_key"],
                                       row and row.get("wall_time_s")))
            if t.state == TrialState.COMPLETE and (best is None or t.value > best.value):  # ties: earlier trial
                best = t
        own = [rows[(plan.study_name, t.number)] for t in records if (plan.study_name, t.number) in rows]
        bigger = bool(next((r["valid_bigger"] for r in own if r.get("valid_bigger") is not None), 1))
        out.append(StudyOutcome(plan.model_spec.name, plan.dataset, plan.space, plan.trials, plan.max_epochs,
                                records, dict(best.params) if best else None,
                                rows.get((plan.study_name, best.number), {}).get("best_valid_score") if best else None,
                                plan.study_name, bigger))
    return out


# ----------------------------------------------------------------------------------------------------- worker side
def pruning_callback(tuning: dict):
    """In a worker: ``on_valid(epoch, score, bigger)`` reporting each validation score to the trial's study; it
    returns True once the pruner gives the trial up. None when the trial is not pruned."""
    pruning = (tuning or {}).get("pruning")
    store_path = (tuning or {}).get("store")
    if not pruning or not store_path:
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_for(store_path)
    study = optuna.load_study(study_name=tuning["study"], storage=storage,
                              pruner=make_pruner(pruning["pruner"], int(pruning["max_epochs"])))
    trial = optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(tuning["study"]), tuning["trial"]))

    def on_valid(epoch: int, score: float, bigger: bool = True) -> bool:
        with warnings.catch_warnings():  # a rerun trial reports epochs its killed attempt reported already
            warnings.simplefilter("ignore")
            trial.report(_signed(score, bigger), int(epoch))
        return trial.should_prune()

    return on_valid
