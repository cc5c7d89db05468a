"""Names of recbole-ext models, tasks and metrics, made visible to RecBole's own lookups.

Models are declared lazily ("module:Class" strings in each track package's ``MODELS`` dict) so that importing
recbole-ext stays cheap and a model whose optional dependency is missing fails only when it is used.

``install_hooks()`` (called once by ``import recbole_ext``) makes RecBole resolve them:

* ``get_model`` is re-bound in every module that imported it by name (``recbole.utils``, ``recbole.utils.utils``,
  ``recbole.config.configurator``, ``recbole.quick_start.quick_start``), so ``Config(model="MambaRec")`` works;
* ``Config._load_internal_config_dict`` overlays ``properties/{overall,dataset/<D>,model/<M>}.yaml`` (in that
  order: a model's own YAML beats the dataset YAML) onto RecBole's internal defaults (external config still wins);
* RecBole's metric tables are extended in place with our metric classes.

(``recbole.quick_start.run_recbole`` / ``load_data_and_model`` are re-bound by ``recbole_ext.quick_start`` itself,
which sits above this module.)
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from pathlib import Path
from typing import Any

from recbole_ext.errors import UserError
from recbole_ext.utils.paths import PROPERTIES_DIR

TASKS: dict[str, str] = {
    "general": "recbole_ext.training.tasks:GeneralTask",
    "mmrec": "recbole_ext.training.multimodal:MultimodalTask",
    "medrec": "recbole_ext.training.medrec:MedRecTask",
}

METRIC_MODULES = ("recbole_ext.evaluation.multimodal_metrics", "recbole_ext.evaluation.medrec_metrics")
MODEL_PACKAGES = ("recbole_ext.models.multimodal", "recbole_ext.models.medrec")

_installed = False
_extra_models: dict[str, Any] = {}


def load_object(spec: str):
    """Import ``"package.module:Attr"``."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def ext_models() -> dict[str, Any]:
    """All recbole-ext model names -> "module:Class" spec (or class, for runtime registrations)."""
    table: dict[str, Any] = {}
    for pkg in MODEL_PACKAGES:
        try:
            module = importlib.import_module(pkg)
        except ModuleNotFoundError as exc:  # a track package not installed/built yet
            if exc.name != pkg:
                raise
            continue
        table.update(getattr(module, "MODELS", {}))
    table.update(_extra_models)
    return table


def register_model(cls, name: str | None = None):
    """Register a model class at run time (for users adding models to the zoo from their own code)."""
    if not hasattr(cls, "type") or not hasattr(cls, "input_type"):
        raise TypeError(f"{cls!r} must subclass a RecBole recommender (needs `type`) and set `input_type`")
    _extra_models[name or cls.__name__] = cls
    return cls


def resolve_ext_model(name: str):
    """The class of a recbole-ext model, or None if ``name`` is not one (case-sensitive, like RecBole)."""
    spec = ext_models().get(name)
    if spec is None:
        return None
    return load_object(spec) if isinstance(spec, str) else spec


def _recbole_model(name: str):
    from recbole.utils import utils as rb_utils

    original = getattr(rb_utils.get_model, "__ext_original__", rb_utils.get_model)
    module_names = ["general_recommender", "context_aware_recommender", "sequential_recommender",
                    "knowledge_aware_recommender"]
    # exlib_recommender's package __init__ imports lightgbm/xgboost: only probe it when those are installed
    import importlib.util

    if importlib.util.find_spec("lightgbm") and importlib.util.find_spec("xgboost"):
        return original(name)
    for sub in module_names:
        path = f"recbole.model.{sub}.{name.lower()}"
        if importlib.util.find_spec(path):
            return getattr(importlib.import_module(path), name)
    raise ValueError(f"`model_name` [{name}] is not the name of an existing model.")


def get_model(model_name: str):
    """RecBole's ``get_model`` contract (raise ValueError if unknown), recbole-ext models first."""
    cls = resolve_ext_model(model_name)
    return cls if cls is not None else _recbole_model(model_name)


get_model.__ext_original__ = None  # filled by install_hooks


def model_class(name: str):
    """Like ``get_model`` but raising a one-line ``UserError`` that lists what exists."""
    try:
        return get_model(name)
    except (ValueError, AttributeError):
        known = ", ".join(sorted(ext_models()))
        raise UserError(f"unknown model '{name}'",
                        fix=f"use a recbole-ext model ({known}) or a RecBole built-in such as BPR, LightGCN, FM")


def get_task(name: str):
    if name not in TASKS:
        raise UserError(f"unknown task '{name}' in the dataset config", fix=f"use one of {sorted(TASKS)}")
    return load_object(TASKS[name])()


def register_metric(cls) -> None:
    """Add a metric class to RecBole's metric tables (they are shared by reference, so mutate in place)."""
    from recbole.evaluator import register as reg

    name = cls.__name__.lower()
    reg.metrics_dict[name] = cls
    reg.metric_information[name] = cls.metric_need
    reg.metric_types[name] = cls.metric_type
    if getattr(cls, "smaller", False) and name not in reg.smaller_metrics:
        reg.smaller_metrics.append(name)


# A dataset without its own YAML (a user's `prepare ... --name my-data`) gets its task's protocol defaults from the
# YAML of a dataset of the same kind, chosen by what its folder holds.
TASK_DEFAULTS = {"medrec": "mimic3.yaml", "mmrec": "synth-mm.yaml"}


# Where detection looks while a run's configuration is built: its --data_path, when it gives one.
_DETECTION_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("detection_root", default=None)


@contextlib.contextmanager
def datasets_read_from(data_path):
    """Detect prepared datasets under ``data_path`` (a run's ``data_path``: it reads ``<data_path>/<dataset>/``)
    instead of the dataset root, inside the block; ``None`` or an ``@`` marker keeps the dataset root."""
    root = None if not data_path or str(data_path).startswith("@") else Path(data_path).expanduser()
    token = _DETECTION_ROOT.set(root)
    try:
        yield
    finally:
        _DETECTION_ROOT.reset(token)


def detected_task(dataset: str) -> str | None:
    """'medrec' or 'mmrec' when ``<root>/<dataset>`` holds that kind of prepared dataset, else None; the root is
    the dataset root, or the run's data_path inside ``datasets_read_from``."""
    from recbole_ext.data.mmrec_format import MANIFEST_NAME
    from recbole_ext.utils.paths import dataset_root

    folder = (_DETECTION_ROOT.get() or dataset_root()) / dataset
    if (folder / f"{dataset}.visit").is_file():
        return "medrec"
    if (folder / f"{dataset}.inter").is_file() and (folder / MANIFEST_NAME).is_file():
        return "mmrec"
    return None


def dataset_property_file(dataset: str):
    """``properties/dataset/<dataset>.yaml``, else the task defaults of a detected prepared dataset, else None."""
    own = PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"
    if own.is_file():
        return own
    task = detected_task(dataset)
    return PROPERTIES_DIR / "dataset" / TASK_DEFAULTS[task] if task else None


def property_files(model: str, dataset: str) -> list[str]:
    """Our YAML defaults, lowest precedence first: overall < dataset < model.

    The dataset YAML owns the protocol (split, metrics, evaluation batch sizes); a model's own YAML owns its
    training hyper-parameters, so where both set a key the model's value wins (MMRec's order: it loads the model
    YAML last). A run's config files and command line win over both. ``yaml_conflicts`` names every such key, and
    each run logs them."""
    files = [PROPERTIES_DIR / "overall.yaml", dataset_property_file(dataset),
             PROPERTIES_DIR / "model" / f"{model}.yaml"]
    return [str(f) for f in files if f is not None and f.is_file()]


def read_yaml_mapping(path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return data if isinstance(data, dict) else {}


def yaml_conflicts(model: str, dataset: str) -> list[tuple[str, Any, Any, str, str]]:
    """Keys set by both the dataset YAML and the model YAML: ``(key, dataset value, model value, dataset file,
    model file)``; the model's value is the one used unless the run sets the key itself."""
    dataset_file = dataset_property_file(dataset)
    model_file = PROPERTIES_DIR / "model" / f"{model}.yaml"
    if dataset_file is None or not dataset_file.is_file() or not model_file.is_file():
        return []
    from_dataset, from_model = read_yaml_mapping(dataset_file), read_yaml_mapping(model_file)
    return [(k, from_dataset[k], from_model[k], dataset_file.name, model_file.name)
            for k in from_dataset if k in from_model]


def _install_config_overlay():
    from recbole.config.configurator import Config

    original = Config._load_internal_config_dict
    if getattr(original, "__ext_original__", None):
        return

    def _load_internal_config_dict(self, model, model_class, dataset):
        original(self, model, model_class, dataset)
        for path in property_files(model, dataset):
            added = self._update_internal_config_dict(path) or {}
            if os.path.basename(os.path.dirname(path)) == "dataset":
                self.parameters["Dataset"] += [k for k in added if k not in self.parameters["Dataset"]]
        data_path = self.internal_config_dict.get("data_path")
        if data_path == "@bundled":  # overall.yaml's marker for the project's dataset_atomic/ (or $RECBOLE_EXT_DATA)
            from recbole_ext.utils.paths import dataset_root

            self.internal_config_dict["data_path"] = str(dataset_root())

    _load_internal_config_dict.__ext_original__ = original
    Config._load_internal_config_dict = _load_internal_config_dict


def _rebind_get_model():
    import recbole.config.configurator as configurator
    import recbole.quick_start.quick_start as qs
    import recbole.utils as rb_utils_pkg
    import recbole.utils.utils as rb_utils

    if get_model.__ext_original__ is None:
        get_model.__ext_original__ = rb_utils.get_model
    for module in (rb_utils_pkg, rb_utils, configurator, qs):
        module.get_model = get_model


def _register_metrics():
    for module_name in METRIC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        for cls in getattr(module, "METRICS", []):
            register_metric(cls)


def install_hooks() -> None:
    """Idempotent: safe to call any number of times."""
    global _installed
    if _installed:
        return
    _install_config_overlay()
    _rebind_get_model()
    _register_metrics()
    _installed = True
