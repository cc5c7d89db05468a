"""Reading and checking configuration values: the one place that knows how an option is read, parsed and bounded.

Every layer reads options through here (models in their constructors, tasks before any data is read, the config
builder for every model): ``config_value`` reads a value from a RecBole ``Config`` or a plain dict,
``config_flag`` / ``check_choice`` / ``number_value`` read and check one kind of value, and ``Bounds`` with
``option_bounds`` / ``check_options`` check every declared numeric option of a model or a task before any data is
read. ``safe_literal`` parses the strings of a command line or a config dict without ever evaluating code.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any

from recbole_ext.errors import UserError


def safe_literal(value: str):
    """Parse a config string the way a user means it, without ever evaluating code.

    Python/YAML literals (numbers, lists, dicts, tuples, True/False/None) become values; anything else stays a
    string (e.g. a dataset name or a path).
    """
    text = value.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null", "~"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` for a RecBole ``Config`` (None when absent) or a plain dict; ``default`` when absent or None.

    A list where the default is a single value is refused: a model takes one value per option, and a list there
    is a search space meant for a tuner (``python -m recbole_ext.grid_search`` or a leaderboard's ``tuning:``)."""
    try:
        value = config[key]
    except (KeyError, TypeError):
        value = None
    if value is None:
        return default
    if isinstance(value, (list, tuple)) and default is not None and not isinstance(default, (list, tuple)):
        raise UserError(f"config key {key!r} is a list {list(value)!r}; the model needs one value",
                        fix="search lists with python -m recbole_ext.grid_search, pass scalars to the model")
    return value


def config_flag(config: Any, key: str, default: bool) -> bool:
    """A boolean option; accepts real booleans and the strings a command line gives (true/false, 1/0, yes/no)."""
    value = config_value(config, key, default)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise UserError(f"{key}={value!r} is not a boolean", fix=f"set {key} to True or False")
    return bool(value)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a one-line error naming them."""
    if value not in choices:
        raise UserError(f"{name}={value!r} is not one of {', '.join(choices)}", fix=f"set {name} to one of {choices}")
    return value


@dataclass(frozen=True)
class Bounds:
    """Allowed values of a numeric option: ``low <= value <= high``; an ``*_open`` side is strict, None unbounded.
    ``words``: strings the option also takes in place of a number (compared lower-case)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    words: tuple[str, ...] = ()

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"{'<' if self.high_open else '<='} {self.high}"


AT_LEAST_ONE = Bounds(1)
NON_NEGATIVE = Bounds(0)
POSITIVE = Bounds(0, low_open=True)
UNIT_INTERVAL = Bounds(0, 1)
DROPOUT = Bounds(0, 1, high_open=True)  # a dropout probability of 1 would zero every input
SEED = Bounds(0, 2**32 - 1)  # numpy's legacy seeding (RecBole's init_seed, the published bootstrap) takes these

# Options with one meaning across RecBole's models, its trainer and ours, checked for every model (RecBole's
# built-ins included) where the configuration has them. Out of range, torch refused some with a bare ValueError
# after the data had loaded (learning_rate, weight_decay, dropout) and others ran on silently (BPR with
# embedding_size 0 or eval_batch_size 0, LightGCN with n_layers -1).
COMMON_BOUNDS = {"learning_rate": POSITIVE, "weight_decay": NON_NEGATIVE, "train_batch_size": AT_LEAST_ONE,
                 "eval_batch_size": AT_LEAST_ONE, "epochs": NON_NEGATIVE, "embedding_size": AT_LEAST_ONE,
                 "n_layers": NON_NEGATIVE, "dropout_prob": DROPOUT, "hidden_dropout_prob": DROPOUT,
                 "attn_dropout_prob": DROPOUT, "faiss_nprobe": AT_LEAST_ONE, "faiss_ef_search": AT_LEAST_ONE,
                 "seed": SEED, "eval_users_per_batch": AT_LEAST_ONE,  # ~ (None) derives it from eval_batch_size
                 "resume_every": NON_NEGATIVE}  # validated epochs between two resume states (0: none)


def option_bounds(model_class) -> dict[str, Bounds]:
    """The ``option_bounds`` of a model class and of its bases (a subclass's entry wins)."""
    merged: dict[str, Bounds] = {}
    for klass in reversed(getattr(model_class, "__mro__", ())):
        merged.update(vars(klass).get("option_bounds", {}))
    return merged


def effective_bounds(model_class) -> dict[str, Bounds]:
    """Every bound ``check_options`` applies to the model: ``COMMON_BOUNDS``, then its own ``option_bounds``."""
    return {**COMMON_BOUNDS, **option_bounds(model_class)}


def check_options(model_class, config: Any) -> None:
    """Every bounded numeric option of the model (``option_bounds``) and the common ones within bounds, then the
    model's own cross-option check (classmethod ``check_config(config)``), as one-line errors. ``build_config``
    runs this before any data is read; the models' constructors run it too (direct use with a dict config)."""
    name = getattr(model_class, "__name__", str(model_class))
    for key, bounds in effective_bounds(model_class).items():
        value = config_value(config, key)
        if isinstance(value, str) and value.lower() not in bounds.words:
            # parsed as RecBole's Config will parse it (a YAML spec's 1e-3 is the string '1e-3' until then); what
            # stays a string ('nan', 'many') would escape check_types for a key without a RecBole default
            value = safe_literal(value)
            if isinstance(value, str):
                raise UserError(f"{name}: option {key}={value!r} must be a number {bounds}",
                                fix=f"set {key} to a number {bounds}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # absent, a declared word, or of another wrong type (check_types reports that)
        if not bounds.admits(value):
            raise UserError(f"{name}: option {key}={value!r} must be {bounds}", fix=f"set {key} {bounds}")
    hook = getattr(model_class, "check_config", None)
    if callable(hook):
        hook(config)


def number_value(config: Any, key: str, default, kind=int, bounds: Bounds | None = None):
    """A numeric config value of type ``kind``, within ``bounds``: a bad value is a one-line error naming the key."""
    value = config_value(config, key, default)
    try:
        if isinstance(value, bool) or (kind is int and float(value) != int(float(value))):
            raise ValueError
        value = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"config key '{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}",
                        fix=f"set {key} (default {default})") from None
    if bounds is not None and not bounds.admits(value):
        raise UserError(f"config key '{key}' = {value} must be {bounds}", fix=f"set {key} {bounds} (default {default})")
    return value
