"""Every shim recbole-ext needs to run RecBole 1.2.1 on today's numpy / pandas / scipy / torch.

Each shim is a small function with a *gate*: it is applied only where the installed versions have the problem
(recbole-host.md §2.2 gives the measurements), and ``tests/test_compat.py`` has one test per shim that fails if the
shim is missing while the bug is present. When upstream fixes land, the gate turns the shim off and the shim can
be deleted.

Source patches re-compile one RecBole method after a textual replacement. They raise ``CompatError`` if the
pattern is gone, so an upstream change is noticed instead of silently skipped.
"""
from __future__ import annotations

import csv
import importlib.util
import inspect
import sys
import textwrap
import types
from dataclasses import dataclass
from typing import Callable

import numpy as np

from recbole_ext.options import safe_literal

RECBOLE_VERSION = "1.2.1"


class CompatError(RuntimeError):
    """A shim's precondition no longer holds (RecBole or a dependency changed): review the shim."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _installed(dist: str) -> tuple[int, ...]:
    from importlib.metadata import version

    return _version_tuple(version(dist))


@dataclass
class Shim:
    name: str
    why: str
    gate: Callable[[], bool]
    apply: Callable[[], None]
    applied: bool = False


SHIMS: dict[str, Shim] = {}


def shim(name: str, why: str, gate: Callable[[], bool]):
    def deco(fn):
        SHIMS[name] = Shim(name, why, gate, fn)
        return fn

    return deco


def source_patch(owner, method_name: str, replacements: list[tuple[str, str]], module=None):
    """Re-define ``owner.method_name`` from its source with exact textual replacements."""
    func = getattr(owner, method_name)
    func = getattr(func, "__ext_original__", func)
    src = textwrap.dedent(inspect.getsource(func))
    for old, new in replacements:
        if old not in src:
            raise CompatError(f"{owner.__name__}.{method_name}: pattern {old!r} not found; review the shim")
        src = src.replace(old, new)
    module = module or sys.modules[func.__module__]
    namespace: dict = {}
    code = compile(src, inspect.getsourcefile(func) or "<compat>", "exec")
    exec(code, module.__dict__, namespace)  # RecBole's own source, edited; never user input
    patched = namespace[method_name]
    patched.__ext_original__ = func
    setattr(owner, method_name, patched)


# --------------------------------------------------------------------------------------------------------------
# numpy 2 removed aliases that RecBole (and ray 2.6.3) use.


@shim(
    "numpy_aliases",
    "numpy>=2 removed np.float_/np.complex_/np.unicode_ (RecBole's Config aliases np.float to them) and np.bool8 "
    "(ray.tune uses it)",
    gate=lambda: not hasattr(np, "float_") or not hasattr(np, "bool8"),
)
def _numpy_aliases():
    for alias, target in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_),
                          ("bool8", np.bool_)):
        if not hasattr(np, alias):
            setattr(np, alias, target)


# --------------------------------------------------------------------------------------------------------------
# ray 2.6.3 imports pkg_resources, gone from setuptools>=81; recbole.quick_start imports ray.tune at import time
# but only uses tune.report in the hyper-parameter objective.


def _ray_importable() -> bool:
    return importlib.util.find_spec("pkg_resources") is not None and importlib.util.find_spec("ray") is not None


@shim(
    "ray_stub",
    "recbole.quick_start does `from ray import tune`; ray 2.6.3 needs pkg_resources, which setuptools>=81 removed",
    gate=lambda: "ray" not in sys.modules and not _ray_importable(),
)
def _ray_stub():
    ray = types.ModuleType("ray")
    ray.__path__ = []  # a package, so `import ray.tune` works
    ray.__recbole_ext_stub__ = True
    tune = types.ModuleType("ray.tune")

    def report(*args, **kwargs):  # outside a tune session real ray only logs a warning
        return None

    tune.report = report
    ray.tune = tune
    sys.modules["ray"] = ray
    sys.modules["ray.tune"] = tune


RAY_PKG_RESOURCES_NOTICE = r"pkg_resources is deprecated as an API"


@shim(
    "ray_pkg_resources_notice",
    "with the ray extra installed, recbole.quick_start's `from ray import tune` makes ray 2.6.3 import "
    "pkg_resources, which setuptools >= 67.5 deprecates with a UserWarning printed by every run",
    gate=lambda: "ray" not in sys.modules and _ray_importable(),
)
def _ray_pkg_resources_notice():
    import warnings

    warnings.filterwarnings("ignore", message=RAY_PKG_RESOURCES_NOTICE, category=UserWarning)


# --------------------------------------------------------------------------------------------------------------
# scipy>=1.13 removed the private dok_matrix._update used by LightGCN, NGCF, GCMC, SpectralCF, NCL, KGIN, MCCLK.


@shim(
    "scipy_dok_update",
    "scipy>=1.13 removed dok_matrix._update, used by RecBole's graph models to fill adjacency matrices",
    gate=lambda: not hasattr(__import__("scipy.sparse", fromlist=["dok_matrix"]).dok_matrix, "_update"),
)
def _scipy_dok_update():
    import scipy.sparse as sp

    def _update(self, data):
        # dok_matrix is a dict of (row, col) -> value; dict.update keeps RecBole's semantics (later wins)
        dict.update(self._dict, data) if hasattr(self, "_dict") else dict.update(self, data)

    sp.dok_matrix._update = _update


# --------------------------------------------------------------------------------------------------------------
# pandas 3: Series.agg(len) reduces; fillna(inplace=True) on a column is a silent no-op (copy-on-write).


def _pandas_major() -> int:
    import pandas as pd

    return _version_tuple(pd.__version__)[0]


@shim(
    "pandas_agg_len",
    "pandas>=3 Series.agg(len) returns the Series length instead of per-cell lengths: token_seq/float_seq fields "
    "break in Dataset._remap, _normalize and _discretization",
    gate=lambda: _pandas_major() >= 3,
)
def _pandas_agg_len():
    from recbole.data.dataset import dataset as ds_mod

    for meth in ("_remap", "_normalize", "_discretization"):
        source_patch(ds_mod.Dataset, meth, [(".agg(len)", ".map(len)")])


@shim(
    "pandas_fillna_inplace",
    "pandas>=3 copy-on-write makes df[col].fillna(..., inplace=True) a silent no-op: NaN tokens are not set to 0, "
    "NaN floats are not mean-imputed, empty seq cells crash",
    gate=lambda: _pandas_major() >= 3,
)
def _pandas_fillna_inplace():
    from recbole.data.dataset import dataset as ds_mod

    source_patch(ds_mod.Dataset, "_load_feat", [
        ('df[field].fillna(value="", inplace=True)', 'df[field] = df[field].fillna(value="")'),
    ])
    source_patch(ds_mod.Dataset, "_fill_nan", [
        ("feat[field].fillna(value=0, inplace=True)", "feat[field] = feat[field].fillna(value=0)"),
        ("feat[field].fillna(value=feat[field].mean(), inplace=True)",
         "feat[field] = feat[field].fillna(value=feat[field].mean())"),
    ])


@shim(
    "pandas_readonly_values",
    "pandas>=3 copy-on-write hands out read-only column arrays: Dataset._dataframe_to_interaction's "
    "torch.LongTensor(df[k].values) shares that memory with a warning (writing the tensor would change the frame)",
    gate=lambda: _pandas_major() >= 3,
)
def _pandas_readonly_values():
    from recbole.data.dataset import dataset as ds_mod

    source_patch(ds_mod.Dataset, "_dataframe_to_interaction", [
        ("value = data[k].values", "value = data[k].to_numpy(copy=True)"),  # object columns: a shallow copy
    ])


# --------------------------------------------------------------------------------------------------------------
# RecBole bug #2194: Collector.get_data_struct calls .cpu() on ints and Counters (ItemCoverage, GiniIndex, ...).


@shim(
    "collector_cpu",
    "RecBole 1.2.1 Collector.get_data_struct calls .cpu() on every entry, including int/Counter ones (#2194)",
    gate=lambda: _installed("recbole") == _version_tuple(RECBOLE_VERSION),
)
def _collector_cpu():
    from recbole.evaluator import collector as col_mod

    source_patch(col_mod.Collector, "get_data_struct", [(
        "self.data_struct._data_dict[key] = self.data_struct._data_dict[key].cpu()",
        "value = self.data_struct._data_dict[key]\n"
        "        if isinstance(value, torch.Tensor):\n"
        "            self.data_struct._data_dict[key] = value.cpu()",
    )])


# --------------------------------------------------------------------------------------------------------------
# Pop counts an item once per training batch however often it occurs in it: `cnt[item] = cnt[item] + 1` with a
# repeated index writes the same incremented value several times. Popular items repeat within a batch, so their
# counts (and the ranking) come out wrong.


@shim(
    "pop_repeated_items",
    "RecBole 1.2.1 Pop.calculate_loss counts an item once per batch however many of the batch's rows hold it "
    "(indexed assignment with repeated indices); its popularity ranking then depends on the batch size",
    gate=lambda: _installed("recbole") == _version_tuple(RECBOLE_VERSION),
)
def _pop_repeated_items():
    from recbole.model.general_recommender import pop

    source_patch(pop.Pop, "calculate_loss", [(
        "self.item_cnt[item, :] = self.item_cnt[item, :] + 1",
        "self.item_cnt.index_add_(0, item, torch.ones_like(self.item_cnt[item, :]))",  # every row counts
    )])


# --------------------------------------------------------------------------------------------------------------
# Interaction.sort calls np.argsort on a torch tensor: numpy falls back to converting it and wrapping the result
# with the tensor's old-style __array_wrap__, deprecated in numpy 2.0 (a DeprecationWarning in every dataloader).


@shim(
    "interaction_sort_argsort",
    "numpy >= 2 deprecates wrapping results with torch.Tensor's old-style __array_wrap__, which RecBole's "
    "Interaction.sort reaches through np.argsort(tensor, kind='stable'); a later numpy turns it into an error. "
    "Its descending branch, torch.tensor(np.array(index)[::-1]), fails outright (negative strides)",
    gate=lambda: np.lib.NumpyVersion(np.__version__) >= "2.0.0",
)
def _interaction_sort_argsort():
    from recbole.data import interaction as inter_mod

    source_patch(inter_mod.Interaction, "sort", [
        ('index = np.argsort(key, kind="stable")',
         'index = torch.from_numpy(np.argsort(key.cpu().numpy(), kind="stable"))'),  # the same stable order
        ("index = torch.tensor(np.array(index)[::-1])", "index = torch.flip(index, [0])"),  # RecBole's reversal
    ])


# --------------------------------------------------------------------------------------------------------------
# Dataset._load_feat reads with pandas' python engine, which inherits csv's 128 KiB field limit.


@shim(
    "csv_field_limit",
    "RecBole reads atomic files with pandas' python engine; fields over 131072 characters (float_seq > ~6k dims) "
    "raise ParserError",
    gate=lambda: csv.field_size_limit() < 2**31 - 1,
)
def _csv_field_limit():
    csv.field_size_limit(2**31 - 1)


# --------------------------------------------------------------------------------------------------------------
# torch prints two informational notices the first time a process builds a sparse tensor; the graph models build
# their CSR adjacencies on every run and every `recommend`, so each run's output started with four lines of noise.

TORCH_SPARSE_NOTICES = ("Sparse CSR tensor support is in beta state",
                        "Sparse invariant checks are implicitly disabled")


@shim(
    "torch_sparse_notices",
    "torch >= 2.0 warns on the first sparse tensor of a process that CSR support is beta and that invariant checks "
    "are off by default; both are notices, not problems (our indices come from scipy's canonical CSR/COO)",
    gate=lambda: _installed("torch") >= (2, 0),
)
def _torch_sparse_notices():
    import warnings

    for message in TORCH_SPARSE_NOTICES:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


# --------------------------------------------------------------------------------------------------------------
# 14 RecBole graph models (LightGCN, NGCF, SGL, ...) build their adjacency with the legacy
# torch.sparse.FloatTensor(indices, values, shape) constructor, deprecated with a warning on every build.

LEGACY_SPARSE_NOTICE = r"torch\.sparse\.SparseTensor\(indices, values, shape, \*, device=\) is deprecated"


@shim(
    "torch_legacy_sparse_constructor",
    "torch >= 2.0 warns that torch.sparse.FloatTensor(indices, values, shape), which RecBole's graph models use for "
    "their adjacency (LightGCN's README example included), is deprecated; the tensor it builds is the same",
    gate=lambda: _installed("torch") >= (2, 0),
)
def _torch_legacy_sparse_constructor():
    import warnings

    warnings.filterwarnings("ignore", message=LEGACY_SPARSE_NOTICE, category=UserWarning)


# --------------------------------------------------------------------------------------------------------------
# torch 2.4 deprecated torch.cuda.amp.GradScaler(...); RecBole's training loop builds one every epoch.


@shim(
    "torch_amp_gradscaler",
    "torch >= 2.4 deprecates torch.cuda.amp.GradScaler(...) with a FutureWarning, which every RecBole training run "
    "printed (Trainer._train_epoch and NCLTrainer._train_epoch build one per epoch)",
    gate=lambda: _installed("torch") >= (2, 4),
)
def _torch_amp_gradscaler():
    from recbole.trainer import trainer as trainer_mod

    # torch.amp.GradScaler("cuda", ...) is the class the deprecated one subclasses, with the same arguments
    for owner in (trainer_mod.Trainer, trainer_mod.NCLTrainer):
        source_patch(owner, "_train_epoch", [("scaler = amp.GradScaler(enabled=self.enable_scaler)",
                                              'scaler = torch.amp.GradScaler("cuda", enabled=self.enable_scaler)')])


# --------------------------------------------------------------------------------------------------------------
# RecBole's sine.py runs torch.autograd.set_detect_anomaly(True) at import time, and importing any sequential model
# (SASRec, ...) or resolving a model name RecBole's get_model does not find first imports the whole package: from
# then on every backward of the process runs under anomaly detection, 2x slower or worse (measured: the test
# suite's medication comparison took 283 s instead of 131 s after the leaderboard tests had imported it).


def _sine_module_file():
    spec = importlib.util.find_spec("recbole")  # the top package only: finding sine itself would import it
    if spec is None or not spec.submodule_search_locations:
        return None
    from pathlib import Path

    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "sequential_recommender" / "sine.py"
    return path if path.is_file() else None


def _sine_turns_anomaly_on() -> bool:
    path = _sine_module_file()
    return path is not None and "torch.autograd.set_detect_anomaly(True)" in path.read_text(encoding="utf-8")


@shim(
    "sine_anomaly_mode",
    "RecBole's SINE module switches autograd's anomaly detection on for the whole process when it is imported "
    "(any sequential model, or a model-name lookup that walks RecBole's packages): every later backward ran 2x "
    "slower or worse",
    gate=_sine_turns_anomaly_on,
)
def _sine_anomaly_mode():
    import torch

    # import it once now, keeping the process's own setting, so later imports are no-ops
    enabled, check_nan = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    importlib.import_module("recbole.model.sequential_recommender.sine")
    torch.autograd.set_detect_anomaly(enabled, check_nan)


# --------------------------------------------------------------------------------------------------------------
# faiss-cpu's loader logs at INFO each CPU-specific library it tries; RecBole's logger puts the root at INFO, so a
# run that first imports faiss (kNN graphs, the retrieval index) printed "Could not load library with AVX512
# support due to: ModuleNotFoundError(...)" on machines without AVX512: a notice that reads like an error.

FAISS_LOADER_LOGGER = "faiss.loader"


def _faiss_has_loader_log() -> bool:
    from importlib.metadata import PackageNotFoundError

    for dist in ("faiss-cpu", "faiss-gpu"):
        try:
            return _installed(dist) >= (1, 7, 3)
        except PackageNotFoundError:
            continue
    return False


@shim(
    "faiss_loader_notices",
    "faiss-cpu >= 1.7.3 logs at INFO which CPU-specific library it loads and why the others failed; under RecBole's "
    "INFO root logger these lines reach the console and run.log",
    gate=_faiss_has_loader_log,
)
def _faiss_loader_notices():
    import logging

    logging.getLogger(FAISS_LOADER_LOGGER).setLevel(logging.WARNING)  # its warnings and errors still pass


# --------------------------------------------------------------------------------------------------------------
# Security: Config._convert_config_dict eval()s every string from config_dict and the command line.


@shim(
    "config_no_eval",
    "RecBole 1.2.1 Config._convert_config_dict calls eval() on every string value from config_dict and the "
    "command line (code execution from user input)",
    gate=lambda: _installed("recbole") == _version_tuple(RECBOLE_VERSION),
)
def _config_no_eval():
    from recbole.config.configurator import Config

    def _convert_config_dict(self, config_dict):
        for key, param in list(config_dict.items()):
            if isinstance(param, str):
                config_dict[key] = safe_literal(param)
        return config_dict

    _convert_config_dict.__ext_original__ = Config._convert_config_dict
    Config._convert_config_dict = _convert_config_dict


# --------------------------------------------------------------------------------------------------------------
# torch>=2.6 loads with weights_only=True; RecBole pickles its Config object into checkpoints, so its own
# evaluate(load_best_model=True) fails. Instead of weakening torch.load, checkpoints are written as plain data.


@shim(
    "plain_data_checkpoints",
    "torch>=2.6 refuses RecBole's checkpoints (they pickle the Config object); recbole-ext writes weights + "
    "plain-data config instead so every load stays weights_only=True",
    gate=lambda: _installed("torch") >= (2, 6),
)
def _plain_data_checkpoints():
    from recbole.trainer.trainer import Trainer
    from recbole_ext import checkpoint

    original = Trainer._save_checkpoint

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        checkpoint.save_trainer_state(self, path, epoch)
        if verbose:
            self.logger.info(f"Saving current: {path}")

    _save_checkpoint.__ext_original__ = original
    Trainer._save_checkpoint = _save_checkpoint


# --------------------------------------------------------------------------------------------------------------
# RecBole's get_tensorboard writes ./log_tensorboard/<log file stem> relative to the working directory. A run's
# files belong in its run directory, and changing the process's working directory to get them there would affect
# every thread and the caller; instead the writer goes beside the run's log file, which recbole_ext.quick_start marks
# with RUN_LOG_MARKER. Loggers without that marker (RecBole's own init_logger) keep RecBole's behaviour.

RUN_LOG_MARKER = "recbole_ext_handler"
NO_FILES_MARKER = "recbole_ext_no_files"  # on a handler of a process that writes no file (a data-parallel rank > 0)


class _NoTensorboard:
    """A SummaryWriter that writes nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@shim(
    "tensorboard_beside_run_log",
    "RecBole 1.2.1 get_tensorboard writes ./log_tensorboard relative to the working directory; a recbole-ext run "
    "writes it inside its run directory, beside run.log",
    gate=lambda: _installed("recbole") == _version_tuple(RECBOLE_VERSION),
)
def _tensorboard_beside_run_log():
    import os

    import recbole.trainer.trainer as trainer_module
    import recbole.utils as utils_package
    import recbole.utils.utils as utils_module

    original = getattr(utils_module.get_tensorboard, "__ext_original__", utils_module.get_tensorboard)

    def get_tensorboard(logger):
        if any(getattr(handler, NO_FILES_MARKER, False) for handler in logger.handlers):
            return _NoTensorboard()
        for handler in logger.handlers:
            if getattr(handler, RUN_LOG_MARKER, False) and hasattr(handler, "baseFilename"):
                from torch.utils.tensorboard import SummaryWriter

                folder, name = os.path.split(handler.baseFilename)
                return SummaryWriter(os.path.join(folder, "log_tensorboard", name.split(".")[0]))
        return original(logger)

    get_tensorboard.__ext_original__ = original
    for module in (utils_module, utils_package, trainer_module):  # each bound the name at import
        module.get_tensorboard = get_tensorboard


# --------------------------------------------------------------------------------------------------------------


def apply_all() -> dict[str, bool]:
    """Apply every shim whose gate is open. Idempotent. Returns {name: applied}."""
    for s in SHIMS.values():
        if not s.applied and s.gate():
            s.apply()
            s.applied = True
    return {name: s.applied for name, s in SHIMS.items()}


def report() -> list[tuple[str, bool, str]]:
    return [(s.name, s.applied, s.why) for s in SHIMS.values()]
