"""Which configuration keys a run knows, and the one-line error for one it does not (``--epoch`` for ``--epochs``).

RecBole accepts any key and ignores the ones nothing reads, so a misspelled option used to run with its default
(``--epoch=2`` trained for ``epochs: 1000``). Every key a user gives (command line, ``--config_files``,
``config_dict``, a leaderboard spec) is now checked against the keys the run knows:

* the defaults the run's ``Config`` loads: RecBole's ``overall.yaml``, its ``dataset/sample.yaml``, its YAML of the
  model, of the dataset and of the model's kind (sequential, context-aware, knowledge), then recbole-ext's
  ``properties/overall.yaml``, ``dataset/<D>.yaml`` and ``model/<M>.yaml`` (read by RecBole's own loader, so the
  two never disagree);
* the keys RecBole's code sets or reads without a YAML default (``RECBOLE_RUNTIME_KEYS``);
* the task's ``numeric_options`` and ``extra_config_keys``, the model's ``option_bounds`` and what the model names
  itself: the class attribute ``extra_config_keys`` (merged over its bases; keys its code reads with a default in
  the code only) and the classmethod ``extra_config_keys_for(values)`` for keys that depend on the configuration
  (MedContext reads its wrapped RecBole model's hyper-parameters). tests/test_unknown_keys.py fails on a literal
  key the package reads that none of these declares.

Keys of *other* models are not known: BPR ignores ``n_layers``, so ``--n_layers`` on BPR is refused like a typo,
and the message says which models read it. ``allow_unknown_keys: True`` turns the check off for a run.
"""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from recbole_ext.errors import UserError
from recbole_ext.options import config_flag, option_bounds
from recbole_ext.utils.paths import PROPERTIES_DIR

ALLOW_UNKNOWN_KEYS = "allow_unknown_keys"

# RecBole's Config sets these itself, its run_recbole passes the distributed ones, and its data code reads the rest
# (the ``transform`` field names, the decision-tree and encoding options) with no YAML default anywhere.
RECBOLE_RUNTIME_KEYS = frozenset({
    "model", "dataset", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "local_rank", "single_spec",
    "valid_neg_sample_args", "test_neg_sample_args", "nproc", "world_size", "ip", "port", "offset", "verbose",
    "CROP_ITEM_SEQ", "CROP_ITEM_SEQ_LEN", "INVERSE_ITEM_SEQ", "MASK_INDEX", "MASK_ITEM_SEQ", "NEG_ITEMS",
    "POS_ITEMS", "REORDER_ITEM_SEQ", "eta", "tail_ratio", "ft_ratio", "encoding", "token_num_threshold",
    "xgb_early_stopping_rounds",
})

# Names other toolkits use for RecBole's options; difflib cannot guess them from the spelling.
OTHER_NAMES = {"lr": "learning_rate", "batch_size": "train_batch_size", "n_epochs": "epochs", "num_epochs": "epochs",
               "max_epochs": "epochs", "wd": "weight_decay", "l2": "weight_decay", "patience": "stopping_step",
               "early_stopping": "stopping_step", "emb_size": "embedding_size", "embed_dim": "embedding_size",
               "embedding_dim": "embedding_size", "num_layers": "n_layers", "gpu": "gpu_id", "cuda": "use_gpu",
               "k": "topk", "top_k": "topk", "metric": "metrics", "optimizer": "learner"}
CLOSE_ENOUGH = 0.6  # difflib's ratio: 'epoch' -> 'epochs' is 0.91, 'lr' -> 'learning_rate' is too far to guess


class _DefaultsProbe:
    """Just what RecBole's ``Config._load_internal_config_dict`` (and the registry's overlay on it) touch: running
    the real loader yields exactly the defaults a run of the model on the dataset starts from, without a Config
    (which would also pick a device and check metrics)."""

    def __init__(self):
        from recbole.config.configurator import Config

        self.parameters = {"Dataset": []}
        self.internal_config_dict: dict = {}
        self.yaml_loader = Config._build_yaml_loader(self)
        self._update_internal_config_dict = Config._update_internal_config_dict.__get__(self)

    def load(self, model: str, model_class, dataset: str) -> dict:
        from recbole.config.configurator import Config

        Config._load_internal_config_dict(self, model, model_class, dataset)
        return self.internal_config_dict


@functools.lru_cache(maxsize=256)
def _cached_defaults(model: str, model_class, dataset: str, dataset_yaml: str | None) -> dict:
    """Cached per model and dataset (20 to 30 ms each; a leaderboard checks every run of a board before the first).
    ``dataset_yaml`` keys the cache on the YAML the dataset resolves to, which a ``prepare`` in the same process
    may change. Callers must not change the dict."""
    return _DefaultsProbe().load(model, model_class, dataset)


def internal_defaults(model: str, model_class, dataset: str) -> dict:
    """The defaults a run of ``model`` on ``dataset`` starts from (before any config file or command line)."""
    from recbole_ext import registry

    dataset_yaml = registry.dataset_property_file(dataset)
    return dict(_cached_defaults(model, model_class, dataset, None if dataset_yaml is None else str(dataset_yaml)))


def model_own_keys(model_class, values: Mapping[str, Any]) -> set[str]:
    """The keys a model names itself: ``option_bounds``, ``extra_config_keys`` (over its bases) and
    ``extra_config_keys_for(values)`` (``values``: the run's defaults and given keys)."""
    keys = set(option_bounds(model_class))
    for klass in getattr(model_class, "__mro__", ()):
        keys.update(vars(klass).get("extra_config_keys", ()))
    hook = getattr(model_class, "extra_config_keys_for", None)
    if callable(hook):
        keys.update(hook(values))
    return keys


@functools.lru_cache(maxsize=None)
def _task_protocol_keys(task_name: str) -> frozenset[str]:
    """The keys of the task's default dataset YAML (the protocol every dataset of the task is run under: split,
    masking, early stopping, ...), known whatever the dataset is called: a user's own MMRec folder given with
    ``--task=mmrec --mmrec_src=...``, or a config file that copies those settings."""
    from recbole_ext import registry

    name = registry.TASK_DEFAULTS.get(task_name)
    return frozenset(registry.read_yaml_mapping(PROPERTIES_DIR / "dataset" / name)) if name else frozenset()


def known_keys(model: str, model_class, dataset: str, given: Mapping[str, Any] | None = None) -> frozenset[str]:
    """Every key a run of ``model`` on ``dataset`` reads; ``given``: the keys the run sets (their ``task`` and the
    model's configuration-dependent keys count)."""
    from recbole_ext import registry

    defaults = internal_defaults(model, model_class, dataset)
    values = {**defaults, **(given or {})}
    task_name = values.get("task") or "general"
    task_keys = set()
    if task_name in registry.TASKS:  # an unknown task is build_config's error to report
        task_class = registry.load_object(registry.TASKS[task_name])
        task_keys = set(task_class.numeric_options) | set(task_class.extra_config_keys) | _task_protocol_keys(task_name)
    return frozenset(set(defaults) | RECBOLE_RUNTIME_KEYS | {ALLOW_UNKNOWN_KEYS} | task_keys
                     | model_own_keys(model_class, values))


@functools.lru_cache(maxsize=1)
def _models_by_key() -> dict[str, tuple[str, ...]]:
    """Key -> the models whose YAML defaults set it, recbole-ext's first, then RecBole's, each by name; for the
    message about a key of another model only, so read once (about 0.3 s), when first needed."""
    from pathlib import Path

    import recbole

    from recbole_ext.registry import read_yaml_mapping

    folders = [PROPERTIES_DIR / "model", Path(recbole.__file__).parent / "properties" / "model"]
    readers: dict[str, list[str]] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")):
            for key in read_yaml_mapping(path):
                names = readers.setdefault(str(key), [])
                if path.stem not in names:
                    names.append(path.stem)
    return {key: tuple(names) for key, names in readers.items()}


@dataclass(frozen=True)
class KeyOrigin:
    """Where keys came from, as an error names them. ``kind``: 'command line' (``--epoch``), 'file'
    (``'epoch' in my.yaml``), 'config_dict' (``config_dict key 'epoch'``) or 'spec' (``s.yaml: config: 'epoch'``);
    ``where``: the file, or the spec and its entry."""

    kind: str
    where: str = ""

    def names(self, key: str) -> str:
        return {"command line": f"--{key}", "file": f"'{key}' in {self.where}",
                "config_dict": f"config_dict key '{key}'", "spec": f"{self.where}: '{key}'"}[self.kind]

    def spells(self, key: str) -> str:
        return f"--{key}" if self.kind == "command line" else f"'{key}'"


COMMAND_LINE = KeyOrigin("command line")
CONFIG_DICT = KeyOrigin("config_dict")


@dataclass(frozen=True)
class UnknownKey:
    key: str
    origin: KeyOrigin
    closest: str | None  # the nearest known key by spelling, if any is close
    readers: tuple[str, ...]  # other models that read the key (it is no typo, the model just ignores it)
    model: str

    def describe(self, origin: KeyOrigin | None = None) -> str:
        origin = origin or self.origin
        text = f"{origin.names(self.key)}: unknown option"
        if self.readers:
            shown = ", ".join(self.readers[:3]) + (f" and {len(self.readers) - 3} more" if len(self.readers) > 3 else "")
            return f"{text} for {self.model} (an option of {shown})"
        return f"{text}, did you mean {origin.spells(self.closest)}?" if self.closest else text


class UnknownKeyError(UserError):
    """One line naming every unknown key (each with its closest known key); ``for_command_line`` words the keys
    that came in through ``config_dict`` as the CLI's ``--key`` options they were."""

    def __init__(self, problems: list[UnknownKey], phrase_config_dict: KeyOrigin | None = None):
        self.problems = problems
        self.phrase_config_dict = phrase_config_dict
        parts = [p.describe(phrase_config_dict if p.origin == CONFIG_DICT else None) for p in problems]
        fix = None
        if any(p.readers for p in problems):
            fix = "drop it, or pass it only to the models that read it"
        elif not all(p.closest for p in problems):
            fix = ("check the spelling; a custom model's own key: list it in the model's extra_config_keys, or set "
                   f"{ALLOW_UNKNOWN_KEYS}=True")
        super().__init__("; ".join(parts), fix=fix)

    def for_command_line(self) -> UnknownKeyError:
        return UnknownKeyError(self.problems, COMMAND_LINE)


def allows_unknown_keys(values: Mapping[str, Any]) -> bool:
    """``allow_unknown_keys`` as the run sets it (True, or 'true' from a command line)."""
    return config_flag(dict(values), ALLOW_UNKNOWN_KEYS, False)


def find_unknown(model: str, model_class, dataset: str, sources: Iterable[tuple[KeyOrigin, Iterable[str]]],
                 given: Mapping[str, Any] | None = None) -> list[UnknownKey]:
    """The keys of ``sources`` that a run of ``model`` on ``dataset`` does not know, in the order given."""
    known = known_keys(model, model_class, dataset, given)
    problems = []
    for origin, keys in sources:
        for key in keys:
            if key in known:
                continue
            readers = tuple(m for m in _models_by_key().get(key, ()) if m != model)
            closest = None if readers else _closest(key, known)
            problems.append(UnknownKey(key, origin, closest, readers, model))
    return problems


def _closest(key: str, known: frozenset[str]) -> str | None:
    """The known key ``key`` most likely means: its other toolkits' name, else the nearest spelling, else None."""
    if OTHER_NAMES.get(key.lower()) in known:
        return OTHER_NAMES[key.lower()]
    by_case = {k.lower(): k for k in known}  # '--EPOCHS' or '--user_id_field'
    if key.lower() in by_case:
        return by_case[key.lower()]
    return next(iter(difflib.get_close_matches(key, sorted(known), 1, CLOSE_ENOUGH)), None)


def check_keys(model: str, model_class, dataset: str, sources: Iterable[tuple[KeyOrigin, Iterable[str]]],
               given: Mapping[str, Any]) -> None:
    """Raise ``UnknownKeyError`` for keys of ``sources`` the run does not know, unless ``given`` (every key the
    run sets) sets ``allow_unknown_keys``."""
    if allows_unknown_keys(given):
        return
    problems = find_unknown(model, model_class, dataset, sources, given)
    if problems:
        raise UnknownKeyError(problems)
