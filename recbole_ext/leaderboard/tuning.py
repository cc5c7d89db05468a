"""Equal-budget tuning on validation: one Optuna study per (model, dataset), every model the same budget.

A spec's ``tuning:`` block sets the budget once for all models::

    tuning: {trials: 20, sampler: tpe, seed: 0, max_epochs: 50, pruner: none}

* Search spaces live beside the defaults, one file per model: ``properties/search/<Model>.yaml`` (``source:`` says
  where the space comes from; ``space:`` maps each option to ``{type: float|int, low, high, log}`` or
  ``{type: categorical, choices: [...]}``). A spec entry may replace it with ``search:``. The budget and the spaces
  are parsed in tuning_spec.py, which spec.py uses too; this module runs the studies.
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
* The budget counts distinct configurations. A sampler may propose a configuration the study has already run
  (TPE does, over categorical and integer spaces): that trial is answered from the record (the same value or
  state, marked ``repeat_of``), not run and not counted, and the study asks again. A study made before this rule
  continues: its repeated trials stop counting, so it asks for new configurations up to the budget. A study that keeps proposing
  known configurations (``MAX_REPEATED_ASKS`` asks in a row) has exhausted its space and stops below the budget;
  the report says so.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recbole_ext.leaderboard.plan import make_request, run_config, short_hash
from recbole_ext.leaderboard.tuning_spec import SearchSpace, Tuning, space_for

# TPE's random start-up trials: Optuna's default is 10, which a 10-20-trial budget would spend mostly on; 4 leaves
# the model-based part most of it. Fixed (not a share of the budget) so that raising the budget continues a study.
TPE_STARTUP_TRIALS = 4
# Asks in a row that only propose configurations the study has run before it counts as exhausted: a space of a few
# points runs out long before the budget, while over a large space a sampler repeats itself only now and then.
MAX_REPEATED_ASKS = 64
REPEAT_ATTR = "repeat_of"         # on a trial answered from the record: the number of the trial it repeats
EXHAUSTED_ATTR = "exhausted_after"  # on a study whose space ran out: how many distinct configurations it ran


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
    trials: list          # TrialRecord, by trial number (the configurations run; repeats are not runs)
    chosen: dict | None   # the best complete trial's params
    best_value: float | None
    study_name: str
    bigger: bool = True   # direction of the validation metric
    repeats: int = 0      # proposals of an already-run configuration, answered from the record
    exhausted: bool = False  # the space ran out before the budget

    @property
    def wall_time_s(self) -> float:
        return sum(t.wall_time_s or 0.0 for t in self.trials)


def study_name(spec, model_spec, dataset: str, space: SearchSpace, max_epochs: int, base: dict,
               dataset_sha: str | None) -> str:
    # the trial count is not part of it: a larger budget continues the same study
    tuning = {k: v for k, v in spec.tuning.to_dict().items() if k not in ("trials", "datasets")}
    identity = {"space": space.to_dict()["space"], "max_epochs": max_epochs, "tuning": tuning,
                "config": {k: v for k, v in base.items() if k != "seed"}, "dataset_sha256": dataset_sha}
    return f"{spec.name}/{model_spec.name}/{dataset}/{short_hash(identity)}"


def study_plans(spec, hashes) -> list[StudyPlan]:
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
            earlier = _first_of_each_configuration(trials) if running else {}
            if running and _params_key(running[0].params) in earlier:  # a kill came before a repeat was told
                _answer_from_record(study, running[0], earlier[_params_key(running[0].params)])
                trials = study.get_trials(deepcopy=False)
                running = []
            if running:  # left by a killed run: rerun it with the parameters it was given
                t = running[0]
                round_requests.append((plan, t.number, trial_request(spec, plan, dict(t.params), t.number, hashes,
                                                                     run_fn, store.path)))
            elif len(_run_trials(trials)) < plan.trials and EXHAUSTED_ATTR not in study.user_attrs:
                asked = _ask_new_configuration(study, spec, plan)
                if asked is not None:
                    trial, params = asked
                    round_requests.append((plan, trial.number, trial_request(spec, plan, params, trial.number,
                                                                             hashes, run_fn, store.path)))
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


def _first_of_each_configuration(trials) -> dict:
    """``{configuration: number}`` of the first finished trial of each configuration."""
    first = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state.is_finished():
            first.setdefault(_params_key(t.params), t.number)
    return first


def _run_trials(trials) -> list:
    """The trials that count against the budget: each configuration's first trial (finished or running). A later
    trial of a configuration already run is a repeat, whether it was answered from the record or, in a study made
    before this rule, run again."""
    first = _first_of_each_configuration(trials)
    return [t for t in trials if first.get(_params_key(t.params), t.number) == t.number]


def _finished(study) -> int:
    return sum(t.state.is_finished() for t in _run_trials(study.get_trials(deepcopy=False)))


def _params_key(params: dict) -> tuple:
    return tuple(sorted((name, repr(value)) for name, value in params.items()))


def _answer_from_record(study, trial, repeat_of: int) -> None:
    """Tell ``trial`` what trial ``repeat_of`` (the same configuration, already run) got."""
    from optuna.trial import TrialState

    prior = study.get_trials(deepcopy=False)[repeat_of]
    if prior.state == TrialState.COMPLETE:
        study.tell(trial, prior.value, skip_if_finished=True)
    else:
        study.tell(trial, state=prior.state, skip_if_finished=True)


def _ask_new_configuration(study, spec, plan):
    """``(trial, params)`` of a configuration the study has not run, answering every repeat from the record on the
    way; None (and the study marked exhausted) after ``MAX_REPEATED_ASKS`` repeats in a row. Each ask gets the
    seed of its trial number, so a resumed study proposes what an uninterrupted one proposes."""
    known = _first_of_each_configuration(study.get_trials(deepcopy=False))
    for _ in range(MAX_REPEATED_ASKS):
        number = len(study.get_trials(deepcopy=False))
        study.sampler = make_sampler(spec.tuning, plan.space,
                                     trial_seed(spec.tuning.seed, plan.study_name.rsplit("/", 1)[0], number))
        trial = study.ask()
        params = {p.name: p.suggest(trial) for p in plan.space.params}
        repeat_of = known.get(_params_key(params))
        if repeat_of is None:
            return trial, params
        trial.set_user_attr(REPEAT_ATTR, repeat_of)
        _answer_from_record(study, trial, repeat_of)
    study.set_user_attr(EXHAUSTED_ATTR, len(known))
    return None


def outcomes(plans, studies, store) -> list[StudyOutcome]:
    from optuna.trial import TrialState

    rows = {(r["study"], r["trial"]): r for r in store.rows_of_phase("tune") if r.get("study")}
    out = []
    for plan in plans:
        records = []
        best = None
        study = studies.get(plan.study_name)
        all_trials = study.get_trials(deepcopy=False) if study else []
        for t in sorted(_run_trials(all_trials), key=lambda t: t.number):
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
                                plan.study_name, bigger, repeats=len(all_trials) - len(_run_trials(all_trials)),
                                exhausted=bool(study and EXHAUSTED_ATTR in study.user_attrs)))
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
