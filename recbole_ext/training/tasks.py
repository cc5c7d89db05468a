"""Tasks own what differs between recommendation problems: which dataset class, which split and dataloaders,
which trainer, which protocol. ``run()`` treats every task the same way (PyHealth's "the task owns the cohort")."""
from __future__ import annotations

import os

from recbole_ext.errors import UserError
from recbole_ext.evaluation.medrec_metrics import METRICS as MEDICATION_SET_METRICS
from recbole_ext.options import number_value


class Task:
    """Base task: RecBole's own dataset, dataloaders and trainer."""

    name = "general"
    # Numeric options the task reads: key -> (default, type, Bounds), the task's counterpart of a model's
    # ``option_bounds``; all are checked before any data is read (``check_config``) and read through ``option``.
    numeric_options: dict[str, tuple] = {}
    # keys the task's code reads with a default in the code only (no dataset YAML sets them): known to the
    # unknown-key check (recbole_ext.config_keys) like the numeric_options
    extra_config_keys: tuple[str, ...] = ()

    @classmethod
    def option(cls, config, key: str):
        """A declared numeric option, read and checked (a bad value is a one-line error naming the key)."""
        default, kind, bounds = cls.numeric_options[key]
        return number_value(config, key, default, kind, bounds)

    def check_config(self, config) -> None:
        """Raise ``UserError`` for options this task cannot run with; called before any data is read."""
        self.check_metrics(config)
        for key in self.numeric_options:
            self.option(config, key)

    def check_metrics(self, config) -> None:
        # RecBole's Config accepts the medication-set metrics (they are registered with it), and its collector
        # fails on them later: refuse them here, on a task that ranks items
        set_metrics = {cls.__name__.lower() for cls in MEDICATION_SET_METRICS}
        misplaced = [m for m in config["metrics"] if str(m).lower() in set_metrics]
        if misplaced:
            raise UserError(f"metrics {misplaced} score medication sets, but '{config['dataset']}' is a "
                            f"'{self.name}' dataset",
                            fix="use ranking metrics such as Recall and NDCG here, or a dataset with task: medrec")

    def check_model(self, model_class) -> None:
        """Raise ``UserError`` if ``model_class`` cannot run on this task."""

    def check_data(self, config) -> None:
        """Raise ``UserError`` (with the command that fixes it) if the dataset is not on disk. Never downloads."""
        path = config["data_path"]
        if config["dataset"] == "ml-100k" or os.path.isdir(path):
            return
        from recbole_ext.data.prepare.recbole_download import is_recbole_dataset
        from recbole_ext.utils.paths import dataset_root

        if is_recbole_dataset(config["dataset"]):  # RecBole would download it here; recbole-ext names the command
            raise UserError(f"dataset '{config['dataset']}' not found at {path}; recbole-ext never downloads "
                            "during a run",
                            fix=f"download RecBole's files once with `python run.py prepare recbole "
                                f"{config['dataset']}`, or set --data_path=<folder holding {config['dataset']}/>")
        root = dataset_root()
        here = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []
        raise UserError(f"dataset '{config['dataset']}' not found at {path}",
                        fix=f"use ml-100k or a bundled dataset ({', '.join(here) or 'none'}), prepare one with "
                            f"`python run.py prepare ...`, or set --data_path=<folder holding {config['dataset']}/>")

    def create_dataset(self, config):
        from recbole.data import create_dataset

        return create_dataset(config)

    def data_preparation(self, config, dataset):
        from recbole.data import data_preparation

        return data_preparation(config, dataset)

    def trainer_class(self, config, model_class):
        from recbole.utils import get_trainer

        return get_trainer(config["MODEL_TYPE"], config["model"])

    def protocol(self, config) -> dict:
        """What a reader needs to know to compare numbers across runs."""
        return {"task": self.name, "eval_args": config["eval_args"], "metrics": list(config["metrics"]),
                "topk": list(config["topk"] or []), "valid_metric": config["valid_metric"],
                "masking": "RecBole (valid: train items; test: train+valid items)"}


class GeneralTask(Task):
    name = "general"
