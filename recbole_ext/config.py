"""Build a RecBole ``Config`` safely: YAML overlay, type checks, absolute paths, one run directory per run."""
from __future__ import annotations

import contextlib
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import yaml

from recbole_ext.errors import UserError
from recbole_ext.options import check_options, effective_bounds
from recbole_ext.utils.paths import check_dataset_name

# Keys whose RecBole default has one type but which legitimately take another.
_POLYMORPHIC = {"topk", "metrics", "gpu_id", "train_neg_sample_args", "eval_args", "load_col", "unload_col",
                "unused_col", "seq_len", "normalize_field", "clip_grad_norm", "transform", "additional_feat_suffix",
                "val_interval", "user_inter_num_interval", "item_inter_num_interval", "numerical_features",
                "discretization", "benchmark_filename", "threshold", "preload_weight", "alias_of_user_id",
                "alias_of_item_id", "alias_of_entity_id", "alias_of_relation_id"}
_PATH_KEYS = ("data_path", "checkpoint_dir", "runs_root", "run_dir", "dataset_save_path", "dataloaders_save_path",
              "mmrec_src")


def read_yaml_file(path: str | os.PathLike) -> dict:
    """A user's config file: must exist, parse as YAML and hold a mapping."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist", fix="check the path given to --config_files")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config file {p} is not valid YAML{where}: {getattr(exc, 'problem', exc)}",
                        fix="fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of key: value, not a {type(data).__name__}",
                        fix="write one `key: value` per line")
    return data


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)


def check_types(internal: dict, external: dict, sources: dict[str, str],
                words: dict[str, tuple[str, ...]] | None = None) -> None:
    """An external value must have the type of its default (ints are fine where floats are expected); ``words``:
    per key, the strings a numeric option also takes (``Bounds.words``)."""
    for key, value in external.items():
        if key in _POLYMORPHIC or key not in internal:
            continue
        if isinstance(value, str) and value.lower() in (words or {}).get(key, ()):
            continue
        default = internal[key]
        if default is None or value is None:
            continue
        ok = True
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
                ok = value.is_integer()
        elif isinstance(default, (list, dict)):
            ok = isinstance(value, (list, dict, tuple))
        if not ok:
            src = sources.get(key, "the configuration")
            raise UserError(f"config key '{key}' from {src} must be {_type_name(default)} like its default "
                            f"{default!r}, got {_type_name(value)} {value!r}",
                            fix=f"set {key} to {_type_name(default)}")


@contextlib.contextmanager
def _argv_isolated():
    """RecBole's Config parses sys.argv; our CLI passes values explicitly instead."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def _absolute_paths(config_dict: dict) -> dict:
    out = dict(config_dict)
    for key in _PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not value.startswith("@") and not os.path.isabs(value):
            out[key] = os.path.abspath(value)
    return out


def new_run_dir(model: str, dataset: str, runs_root: str | os.PathLike) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path(runs_root).resolve() / f"{model}-{dataset}-{stamp}"


def computed_metrics(metrics: list, topk: list) -> list[str]:
    """The result keys a configuration's evaluation reports, in order: ``name@k`` for each cutoff of a top-K metric
    (Recall, NDCG, ...), the bare lower-case name for the others (Jaccard, AUC, ...)."""
    from recbole.evaluator.base_metric import TopkMetric
    from recbole.evaluator.register import metrics_dict

    out = []
    for metric in metrics or []:
        name = str(metric).lower()
        cls = metrics_dict.get(name)
        out += [f"{name}@{k}" for k in topk or []] if isinstance(cls, type) and issubclass(cls, TopkMetric) else [name]
    return out


def _computed_metric_example(metrics: list, topk: list) -> str:
    """A valid_metric the configuration computes (for an error's fix)."""
    return (computed_metrics(metrics, topk) or ["recall@20"])[0]


def build_config(model: str, dataset: str, config_dict: dict | None = None,
                 config_files: list[str] | None = None, trusted_keys: Iterable[str] = ()):
    """Return ``(config, task)`` or raise ``UserError``. Nothing is written to disk here.

    Every key of ``config_files`` and ``config_dict`` must be one the run knows (``config_keys``), but for
    ``trusted_keys``: those of a checkpoint's stored configuration, which an older version may have known."""
    from recbole.config import Config

    from recbole_ext import registry
    from recbole_ext.config_keys import CONFIG_DICT, KeyOrigin, check_keys
    from recbole_ext.training.precision import autocast_dtype

    if not model or not isinstance(model, str):
        raise UserError("no model given", fix="pass --model=NAME, e.g. --model=BPR")
    if not dataset or not isinstance(dataset, str):
        raise UserError("no dataset given", fix="pass --dataset=NAME, e.g. --dataset=ml-100k")
    check_dataset_name(dataset, "ml-100k")  # it names a folder to read and the run directory to write
    model_cls = registry.model_class(model)  # a clear error for unknown names, before RecBole's own

    sources: dict[str, str] = {}
    file_values: dict = {}
    key_origins = []
    for f in config_files or []:
        values = read_yaml_file(f)
        file_values.update(values)
        sources.update({k: str(f) for k in values})
        key_origins.append((KeyOrigin("file", str(f)), list(values)))
    variable = _absolute_paths(dict(config_dict or {}))
    sources.update({k: "the command line / config_dict" for k in variable})
    file_values = _absolute_paths(file_values)
    merged = {**file_values, **variable}
    trusted = set(trusted_keys)
    key_origins.append((CONFIG_DICT, [k for k in variable if k not in trusted]))
    # a prepared dataset without a YAML of its own gets its task from its folder, under --data_path when given
    with registry.datasets_read_from(merged.get("data_path")), _argv_isolated():
        check_keys(model, model_cls, dataset, key_origins, merged)  # a misspelled key would be ignored silently
        try:
            config = Config(model=model, dataset=dataset, config_dict=merged)
        except (NotImplementedError, RuntimeError, TypeError, KeyError) as exc:
            # RecBole's Config validation (unknown metric, mixed metric types, bad topk...) is user-facing
            raise UserError(f"invalid configuration: {exc}", fix="check metrics, topk and valid_metric") from None
        except ValueError as exc:
            raise UserError(f"invalid configuration: {exc}", fix="check the option values") from None
    words = {key: b.words for key, b in effective_bounds(config.model_class).items() if b.words}
    check_types(config.internal_config_dict, config.external_config_dict, sources, words)
    check_options(config.model_class, config)
    autocast_dtype(config)  # precision: fp32 | bf16, refused here before any data is read
    config["data_path"] = os.path.abspath(config["data_path"])

    valid_metric = str(config["valid_metric"]).lower()
    metric_names = {m.lower() for m in config["metrics"]}
    topk = config["topk"] or []
    if valid_metric.split("@")[0] not in metric_names or ("@" in valid_metric and
                                                          int(valid_metric.split("@")[1]) not in topk):
        raise UserError(f"valid_metric '{config['valid_metric']}' is not computed by metrics={config['metrics']} "
                        f"topk={topk}", fix="set valid_metric to one of the computed metrics, e.g. "
                                            f"{_computed_metric_example(config['metrics'], topk)}")

    task = registry.get_task(config["task"] or "general")
    needs = getattr(config.model_class, "required_task", None)
    if needs and needs != task.name:
        task.check_data(config)  # a dataset that does not exist: say so, not that it has the wrong task
        kind = {"mmrec": "a multimodal (MMRec-format)", "medrec": "a medication (visit)"}.get(needs, f"a '{needs}'")
        raise UserError(f"model {model} needs {kind} dataset, but '{dataset}' is a '{task.name}' dataset",
                        fix=f"pick a dataset whose YAML sets task: {needs}")
    task.check_config(config)
    task.check_model(config.model_class)
    task.check_data(config)
    return config, task
