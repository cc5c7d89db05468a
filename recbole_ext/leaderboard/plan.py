"""Expanding a spec into runs, each with a content-defined identity.

A run's key hashes everything that determines its numbers: model, dataset, the full config_dict (seed included),
the content hash of the dataset files, and the run function. Rerunning a spec therefore skips exactly the runs whose
inputs did not change; editing a grid, a seed or a dataset file makes new runs and leaves old rows unused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from recbole_ext.leaderboard.spec import LeaderboardSpec, ModelSpec
from recbole_ext.utils.hashing import dir_sha256, files_sha256
from recbole_ext.utils.paths import dataset_root

DEFAULT_RUN_FN = "recbole_ext.quick_start:run"


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def short_hash(value) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DatasetHashes:
    files: str | None  # sha256 over the dataset folder's files; None when the folder does not exist (yet)
    ddi: str | None    # sha256 over files whose name mentions "ddi"; None for datasets without a DDI matrix


def dataset_hashes(dataset: str, data_path: str | None = None) -> DatasetHashes:
    """Hashes of ``<data_path>/<dataset>/`` (default: the bundled dataset root, as quick_start reads it)."""
    folder = Path(data_path or dataset_root()) / dataset
    if not folder.is_dir():
        return DatasetHashes(None, None)
    ddi_files = [p for p in folder.iterdir() if p.is_file() and "ddi" in p.name.lower()]
    return DatasetHashes(dir_sha256(folder), files_sha256(ddi_files) if ddi_files else None)


@dataclass(frozen=True)
class RunRequest:
    run_key: str
    model: str
    dataset: str
    seed: int
    grid_id: str          # identifies the grid point within (model, dataset): runs sharing it differ only by seed
    grid_point: dict
    config_dict: dict     # passed to the run function; includes 'seed'
    dataset_sha256: str | None = None
    ddi_sha256: str | None = None
    run_fn: str = DEFAULT_RUN_FN
    extra: dict = field(default_factory=dict)   # config entries added by the backend, outside the run's identity
    tuning: dict = field(default_factory=dict)  # tuning trials: phase, study, trial number, pruning settings

    def label(self) -> str:
        point = ",".join(f"{k}={v}" for k, v in sorted(self.grid_point.items()))
        return f"{self.model}/{self.dataset}/seed={self.seed}" + (f"/{point}" if point else "")

    def to_payload(self) -> dict:
        return {"run_key": self.run_key, "model": self.model, "dataset": self.dataset, "seed": self.seed,
                "grid_id": self.grid_id, "grid_point": self.grid_point, "config_dict": self.config_dict,
                "dataset_sha256": self.dataset_sha256, "ddi_sha256": self.ddi_sha256, "run_fn": self.run_fn,
                "extra": self.extra, "tuning": self.tuning}


def run_config(spec: LeaderboardSpec, model: ModelSpec, dataset: str, grid_point: dict, seed: int) -> dict:
    """Global < per-dataset < per-model < grid point; the seed always comes from the spec's seed list."""
    config = {}
    config.update(spec.config)
    config.update(spec.dataset_config.get(dataset, {}))
    config.update(model.config)
    config.update(grid_point)
    config["seed"] = seed
    config.setdefault("reproducibility", True)
    return config


def make_request(spec: LeaderboardSpec, model: ModelSpec, dataset: str, grid_point: dict, seed: int,
                 hashes: DatasetHashes, run_fn: str = DEFAULT_RUN_FN, overrides: dict | None = None,
                 identity_extra: dict | None = None, tuning: dict | None = None) -> RunRequest:
    """``overrides``: config entries above everything (a tuned board's epoch cap); ``identity_extra``: more that
    tells this run apart (a tuning trial's study and number); ``tuning``: the request's phase and, for a trial,
    its study, number and pruning settings (not part of the identity)."""
    config = run_config(spec, model, dataset, grid_point, seed)
    config.update(overrides or {})
    identity = {"model": model.name, "dataset": dataset, "config": config, "dataset_sha256": hashes.files,
                "run_fn": run_fn, **({"tuning": identity_extra} if identity_extra else {})}
    return RunRequest(run_key=short_hash(identity), model=model.name, dataset=dataset, seed=seed,
                      grid_id=short_hash({"model": model.name, "dataset": dataset, "grid_point": grid_point}),
                      grid_point=dict(grid_point), config_dict=config, dataset_sha256=hashes.files,
                      ddi_sha256=hashes.ddi, run_fn=run_fn, tuning=dict(tuning or {}))


def tuning_runs(spec: LeaderboardSpec, hashes: dict[str, DatasetHashes], run_fn: str = DEFAULT_RUN_FN):
    """Phase 1: every grid point on the tuning seeds (all seeds unless the spec sets tuning_seeds)."""
    seeds = spec.seeds[:spec.tuning_seeds]
    return [make_request(spec, m, d, point, s, hashes[d], run_fn, tuning={"phase": "grid"})
            for d in spec.datasets for m in spec.models if m.runs_on(d) for point in m.grid_points() for s in seeds]


def final_runs(spec: LeaderboardSpec, hashes: dict[str, DatasetHashes], chosen: dict[tuple[str, str], dict],
               run_fn: str = DEFAULT_RUN_FN):
    """Phase 2: the chosen configuration of each (model, dataset) on the seeds not used for tuning (a tuned board:
    every seed of the spec, none of which is the tuning seed, under the same epoch cap as the trials)."""
    seeds = spec.seeds if spec.tuning else spec.seeds[spec.tuning_seeds:]
    phase = {"phase": "final" if spec.tuning else "grid"}
    out = []
    for d in spec.datasets:
        overrides = {"epochs": spec.tuning.budget(d)[1]} if spec.tuning else None
        for m in spec.models:
            if (m.name, d) in chosen:
                out.extend(make_request(spec, m, d, chosen[(m.name, d)], s, hashes[d], run_fn, overrides,
                                        tuning=phase) for s in seeds)
    return out
