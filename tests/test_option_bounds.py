"""Numeric model options are checked against declared bounds before any data is read (recbole_ext.config)."""
import importlib
import inspect
import math
import re
from pathlib import Path

import pytest
import yaml

from recbole_ext import registry
from recbole_ext.config import build_config
from recbole_ext.errors import UserError
from recbole_ext.options import Bounds, check_options, effective_bounds, option_bounds
from recbole_ext.utils.paths import PROPERTIES_DIR

# the packaged zoo ("module:Class" specs), not models other tests register at run time
EXT_MODELS = {name: registry.resolve_ext_model(name) for name, spec in sorted(registry.ext_models().items())
              if isinstance(spec, str)}


def test_bounds_edges_and_wording():
    closed, half_open, positive = Bounds(0, 1), Bounds(0, 1, high_open=True), Bounds(0, low_open=True)
    assert closed.admits(0) and closed.admits(1) and not closed.admits(1.0001) and not closed.admits(-1e-9)
    assert half_open.admits(0) and half_open.admits(0.999) and not half_open.admits(1)
    assert not positive.admits(0) and positive.admits(1e-12) and positive.admits(1e9)
    assert not closed.admits(math.nan) and not Bounds().admits(math.nan)
    assert (str(closed), str(half_open), str(positive), str(Bounds(1)), str(Bounds(high=3, high_open=True))) == (
        "in [0, 1]", "in [0, 1)", "> 0", ">= 1", "< 3")


def _model_defaults(name: str) -> dict:
    path = PROPERTIES_DIR / "model" / f"{name}.yaml"
    return yaml.safe_load(path.read_text()) or {} if path.is_file() else {}


@pytest.mark.parametrize("name", sorted(EXT_MODELS))
def test_every_default_is_within_its_bounds(name):
    check_options(EXT_MODELS[name], _model_defaults(name))


@pytest.mark.parametrize("name", sorted(EXT_MODELS))
def test_every_bounded_option_is_one_the_model_reads(name):
    """A bound on a misspelt key would never fire: each key must be read by the class or one of its bases, or be
    one of its YAML defaults (the context adapter forwards those to the RecBole model it wraps)."""
    cls = EXT_MODELS[name]
    sources = "".join(inspect.getsource(importlib.import_module(k.__module__)) for k in cls.__mro__
                      if k.__module__.startswith("recbole_ext"))
    for key in option_bounds(cls):
        assert f'"{key}"' in sources or key in _model_defaults(name), f"{name} bounds {key!r} but never reads it"


def _outside(bounds: Bounds):
    if bounds.low is not None:
        return bounds.low if bounds.low_open else bounds.low - 1
    return bounds.high if bounds.high_open else bounds.high + 1


@pytest.mark.parametrize("name", sorted(EXT_MODELS))
def test_every_bounded_option_refuses_a_value_outside(name):
    cls = EXT_MODELS[name]
    bounds = effective_bounds(cls)
    assert "embedding_size" in bounds  # every model bounds its width
    for key, allowed in bounds.items():
        bad = _outside(allowed)
        with pytest.raises(UserError, match=rf"{name}: option {key}={bad!r} must be"):
            check_options(cls, {key: bad})
        for word in allowed.words:  # strings the option takes in place of a number
            check_options(cls, {key: word})
        # other strings are refused here: a key absent from RecBole's Config escapes its type check
        with pytest.raises(UserError, match=rf"{name}: option {key}='nan' must be a number"):
            check_options(cls, {key: "nan"})
        # a string that RecBole's Config will parse as a number is checked as that number (YAML reads 1e-3 as text)
        with pytest.raises(UserError, match=rf"{name}: option {key}={bad!r} must be"):
            check_options(cls, {key: str(bad)})


def test_medication_models_bound_their_shared_loss_options():
    for name in ("CafeMed", "RETAIN", "GAMENet", "SafeDrug", "MedFM"):
        assert {"embedding_size", "target_ddi", "ddi_loss_scale"} <= set(effective_bounds(EXT_MODELS[name]))
    assert {"dropout_prob", "charm_heads", "cwg_gate_size"} <= set(effective_bounds(EXT_MODELS["CafeMed"]))


def test_cafemed_heads_must_divide_the_width_only_where_charm_runs():
    with pytest.raises(UserError, match="embedding_size=64 is not divisible by charm_heads=3"):
        check_options(EXT_MODELS["CafeMed"], {"embedding_size": 64, "charm_heads": 3})
    with pytest.raises(UserError, match="CafeMedNoCWG"):
        check_options(EXT_MODELS["CafeMedNoCWG"], {"embedding_size": 64, "charm_heads": 3})
    for name in ("CausalMed", "CafeMedNoCHARM"):  # CHARM is forced off: the head count is unused
        check_options(EXT_MODELS[name], {"embedding_size": 64, "charm_heads": 3})
    check_options(EXT_MODELS["CafeMed"], {"embedding_size": 64, "charm_heads": 3, "use_charm": False})
    check_options(EXT_MODELS["CafeMed"], {"embedding_size": 48, "charm_heads": 3})


def test_freedom_needs_feature_width_equal_to_id_width():
    with pytest.raises(UserError, match="feat_embed_dim must equal embedding_size"):
        check_options(EXT_MODELS["FREEDOM"], {"embedding_size": 64, "feat_embed_dim": 32})
    check_options(EXT_MODELS["FREEDOM"], {"embedding_size": 32, "feat_embed_dim": 32})


def test_direct_construction_checks_too():
    """Models built outside build_config (notebooks, tests) refuse bad options in their constructor."""
    from recbole_ext.testing.medrec_synthetic import make_synthetic

    data = make_synthetic(n_patients=12, n_diag=20, n_proc=10, n_med=6, seed=0)
    with pytest.raises(UserError, match="RETAIN: option dropout_prob=1.5"):
        EXT_MODELS["RETAIN"]({"dropout_prob": 1.5}, data)


@pytest.mark.parametrize("model,options,needle", [
    ("CafeMed", {"charm_reduction": 0}, "charm_reduction=0 must be >= 1"),
    ("RETAIN", {"target_ddi": "nan"}, "target_ddi='nan' must be a number > 0"),  # not in RETAIN.yaml: no type check
    ("CafeMed", {"medrec_threshold": 1.5}, "'medrec_threshold' = 1.5 must be in [0, 1]"),  # the task's keys
    ("CafeMed", {"medrec_bootstrap_frac": 0}, "'medrec_bootstrap_frac' = 0.0 must be in (0, 1]"),
    ("RETAIN", {"patients_per_batch": 0}, "'patients_per_batch' = 0 must be >= 1"),
    ("RETAIN", {"eval_patients_per_batch": 2.5}, "'eval_patients_per_batch' must be an integer"),
])
def test_build_config_refuses_before_reading_data(model, options, needle, monkeypatch):
    from recbole_ext.data import medrec_dataset as medrec

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the options were checked")

    monkeypatch.setattr(medrec.MedRecDataset, "__init__", no_data)
    with pytest.raises(UserError, match=re.escape(needle)):
        build_config(model, "mimic3-demo", options)


def test_recbole_builtin_defaults_pass_the_common_bounds():
    """The common bounds apply to RecBole's own models too: none of the shipped defaults (every RecBole model YAML,
    RecBole's overall.yaml, and this project's overall and dataset YAMLs) may trip them."""
    import recbole

    properties = Path(recbole.__file__).parent / "properties"
    files = sorted((properties / "model").glob("*.yaml")) + [properties / "overall.yaml"]
    assert len(files) > 80
    files += sorted(PROPERTIES_DIR.glob("*.yaml")) + sorted((PROPERTIES_DIR / "dataset").glob("*.yaml"))  # ours
    for path in files:
        check_options(type(path.stem, (), {}), yaml.safe_load(path.read_text()) or {})


@pytest.mark.parametrize("key,bad", [("embedding_size", 0), ("n_layers", -1), ("dropout_prob", 1.5),
                                     ("eval_batch_size", 0)])
def test_recbole_builtins_get_the_common_bounds(key, bad):
    with pytest.raises(UserError, match=rf"option {key}={bad!r} must be"):
        check_options(registry.model_class("LightGCN"), {key: bad})


def test_a_declared_word_passes_the_type_check_and_reaches_the_model(monkeypatch):
    """CafeMed's ``cwg_effect_threshold: off`` (YAML default 0.2, a number) is accepted by build_config and turns
    the CWG pair mask off; any other string is refused."""
    from recbole_ext.models.medrec.cafemed import CafeMed
    from recbole_ext.testing.medrec_synthetic import make_synthetic
    from recbole_ext.data import medrec_dataset as medrec

    monkeypatch.setattr(medrec.MedRecDataset, "__init__", lambda *a, **k: None)
    config, _ = build_config("CafeMed", "mimic3-demo", {"cwg_effect_threshold": "off"})
    data = make_synthetic(n_patients=12, n_diag=20, n_proc=10, n_med=6, seed=0)
    assert CafeMed(config, data).graph.threshold is None
    config, _ = build_config("CafeMed", "mimic3-demo", {})
    assert CafeMed(config, data).graph.threshold == 0.2
    with pytest.raises(UserError, match="cwg_effect_threshold.*must be a number like its default 0.2, got a string"):
        build_config("CafeMed", "mimic3-demo", {"cwg_effect_threshold": "maybe"})
