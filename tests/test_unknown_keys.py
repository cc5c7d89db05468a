"""A configuration key no run reads is an error naming the closest known key, at every entry point, before anything
is written: the command line, a config file, the Python API's config_dict and a leaderboard spec. The escape
hatches (allow_unknown_keys, a model's extra_config_keys) let a custom model's own keys through; a checkpoint's
stored keys are trusted; and every key the package's code reads is a known key."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch

import recbole_ext
from recbole_ext import config_keys, registry
from recbole_ext.cli import main, parse_train_args
from recbole_ext.config import build_config
from recbole_ext.errors import UserError
from recbole_ext.leaderboard import cli as leaderboard_cli
from recbole_ext.leaderboard.spec import load_spec, parse_spec
from recbole_ext.leaderboard.spec_keys import check_spec_keys
from recbole_ext.quick_start import load_run, run
from tiny_models import TinyMF

PACKAGE = Path(recbole_ext.__file__).parent


class TinyWithOwnKey(TinyMF):
    """TinyMF reads ``tiny_dim``, which no YAML default declares: this custom model names it."""

    extra_config_keys = ("tiny_dim",)


registry.register_model(TinyMF)
registry.register_model(TinyWithOwnKey)


def test_a_command_line_typo_is_one_line_naming_the_option_and_writes_nothing(tmp_path, capsys):
    # --epochs=1 keeps a run short should the check ever let the typo through
    rc = main(["--model=MambaRec", "--dataset=synth-mm", "--epoch=2", "--epochs=1", f"--runs_root={tmp_path / 'runs'}"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == "error: --epoch: unknown option, did you mean --epochs?"
    assert not (tmp_path / "runs").exists()  # checked before the run directory is made


def test_the_grid_search_command_words_a_typo_as_its_option(tmp_path):
    from recbole_ext import grid_search

    with pytest.raises(UserError) as caught:
        grid_search.main(["--model=FREEDOM", "--dataset=synth-mm", "--epoch=2", "--epochs=1",
                          f"--runs_root={tmp_path / 'runs'}"])
    assert caught.value.one_line() == "error: --epoch: unknown option, did you mean --epochs?"
    assert not (tmp_path / "runs").exists()


def test_a_typo_in_a_config_file_names_the_file(tmp_path):
    my_yaml = tmp_path / "my.yaml"
    my_yaml.write_text("epoch: 2\n")
    with pytest.raises(UserError) as caught:
        run("BPR", "ml-100k", {"epochs": 1, "runs_root": str(tmp_path / "runs")}, config_files=[str(my_yaml)])
    assert caught.value.one_line() == f"error: 'epoch' in {my_yaml}: unknown option, did you mean 'epochs'?"
    assert not (tmp_path / "runs").exists()


def test_a_typo_in_config_dict_names_the_config_dict_key(tmp_path):
    with pytest.raises(UserError) as caught:
        recbole_ext.run("BPR", "ml-100k", config_dict={"epoch": 2, "epochs": 1, "runs_root": str(tmp_path / "runs")})
    assert caught.value.one_line() == "error: config_dict key 'epoch': unknown option, did you mean 'epochs'?"
    assert not (tmp_path / "runs").exists()


BOARD = {"task": "mixed", "datasets": ["synth-mm", "synth-ehr-small"], "seeds": [0]}


def test_a_typo_in_a_leaderboard_spec_names_the_entry():
    spec = parse_spec({**BOARD, "models": [{"name": "MambaRec", "datasets": ["synth-mm"], "config": {"epoch": 2}}]},
                      "spec.yaml")
    with pytest.raises(UserError) as caught:
        check_spec_keys(spec)
    assert caught.value.one_line() == "error: spec.yaml: models[0].config: 'epoch': unknown option, did you mean 'epochs'?"
    grid = parse_spec({**BOARD, "config": {"stoping_step": 3},
                       "models": [{"name": "RETAIN", "datasets": ["synth-ehr-small"], "grid": {"dropout": [0.1]}}]},
                      "spec.yaml")
    with pytest.raises(UserError, match=re.escape("spec.yaml: config: 'stoping_step': unknown option, did you mean "
                                                  "'stopping_step'?; spec.yaml: models[0].grid: 'dropout': unknown "
                                                  "option for RETAIN (an option of BM3, FREEDOM, MENTOR and 1 more)")):
        check_spec_keys(grid)


def test_a_leaderboard_with_a_typo_stops_before_writing(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps({**BOARD, "datasets": ["synth-ehr-small"], "models": ["RETAIN"],
                                "dataset_config": {"synth-ehr-small": {"medrec_treshold": 0.4}}}))
    with pytest.raises(UserError, match=re.escape(f"{path}: dataset_config.synth-ehr-small: 'medrec_treshold': "
                                                  "unknown option, did you mean 'medrec_threshold'?")):
        leaderboard_cli.main([str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    assert not (tmp_path / "out").exists()


def test_a_shared_spec_key_must_be_read_by_every_model_it_reaches():
    """A board's config: reaches every run; BPR would refuse LightGCN's n_layers in its worker, so the spec is
    refused first, naming the model that does not read it."""
    spec = parse_spec({**BOARD, "datasets": ["synth-mm"], "config": {"n_layers": 2}, "models": ["LightGCN", "BPR"]},
                      "spec.yaml")
    with pytest.raises(UserError, match=re.escape("spec.yaml: config: 'n_layers': unknown option for BPR")):
        check_spec_keys(spec)
    moved = parse_spec({**BOARD, "datasets": ["synth-mm"],
                        "models": [{"name": "LightGCN", "config": {"n_layers": 2}}, "BPR"]}, "spec.yaml")
    check_spec_keys(moved)


@pytest.mark.parametrize("path", sorted((PACKAGE.parent / "leaderboards").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_bundled_boards_use_known_keys_only(path):
    check_spec_keys(load_spec(path))  # search spaces from properties/search/ included


def test_a_key_like_no_known_key_gets_no_guess(tmp_path, capsys):
    assert main(["--model=BPR", "--dataset=ml-100k", "--zzz_qqq=1", "--epochs=1", f"--runs_root={tmp_path}"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: --zzz_qqq: unknown option -- fix: ") and "did you mean" not in line
    assert "allow_unknown_keys=True" in line and "extra_config_keys" in line


def test_allow_unknown_keys_lets_a_custom_key_through_in_both_forms(tmp_path):
    with pytest.raises(UserError, match="config_dict key 'tiny_dim': unknown option"):
        build_config("TinyMF", "ml-100k", {"tiny_dim": 4})
    config, _ = build_config("TinyMF", "ml-100k", {"tiny_dim": 4, "allow_unknown_keys": True})
    assert config["tiny_dim"] == 4
    model, dataset, values, files = parse_train_args(["--model=TinyMF", "--dataset=ml-100k", "--tiny_dim=4",
                                                      "--allow_unknown_keys=True"])
    config, _ = build_config(model, dataset, values, files)  # the path quick_start.run takes for the CLI's values
    assert config["tiny_dim"] == 4 and config["allow_unknown_keys"] is True
    from_file = tmp_path / "custom.yaml"
    from_file.write_text("allow_unknown_keys: true\ntiny_dim: 4\n")
    assert build_config("TinyMF", "ml-100k", None, [str(from_file)])[0]["tiny_dim"] == 4


def test_a_model_names_its_own_keys():
    config, _ = build_config("TinyWithOwnKey", "ml-100k", {"tiny_dim": 4})
    assert config["tiny_dim"] == 4
    with pytest.raises(UserError, match="config_dict key 'tiny_dm': unknown option, did you mean 'tiny_dim'"):
        build_config("TinyWithOwnKey", "ml-100k", {"tiny_dm": 4})


def test_a_wrapped_recbole_models_keys_are_known():
    """MedContext reads its wrapped RecBole model's hyper-parameters (DeepFM's mlp_hidden_size), which its own YAML
    need not list."""
    config, _ = build_config("MedContext", "synth-ehr-small", {"context_model": "DeepFM", "mlp_hidden_size": [8]})
    assert config["mlp_hidden_size"] == [8]
    with pytest.raises(UserError, match="config_dict key 'mlp_hidden_size': unknown option for MedContext"):
        build_config("MedContext", "synth-ehr-small", {"mlp_hidden_size": [8]})  # FM has no MLP


def test_a_checkpoint_with_a_key_no_longer_known_still_loads(tmp_path, tiny):
    result = run("BPR", "tiny", {**tiny, "run_dir": str(tmp_path / "bpr")})
    state = torch.load(result.checkpoint, weights_only=True)
    state["external_config"]["retired_option"] = 3  # a key an older version knew
    old = tmp_path / "old.pth"
    torch.save(state, old)
    config, model, *_ = load_run(old)
    assert config["retired_option"] == 3 and type(model).__name__ == "BPR"
    with pytest.raises(UserError, match="config_dict key 'retired_optoin': unknown option"):
        load_run(old, {"retired_optoin": 4})  # what the caller adds is checked


# ---- every key the package's code reads is a known key -------------------------------------------------------

READERS = {"config_value", "config_flag", "number_value"}


def _is_config(node) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
    return bool(name) and "config" in name.lower()


def literal_keys_read(tree) -> set[str]:
    """``config["k"]``, ``config.get("k")``, ``"k" in config`` and ``config_value(config, "k")`` (and the other
    readers of recbole_ext.options) with a literal key; ``config`` is any name or attribute containing 'config'."""
    keys = set()
    for node in ast.walk(tree):
        literal = None
        if isinstance(node, ast.Call):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if fn in READERS and len(node.args) >= 2:
                literal = node.args[1]
            elif fn == "get" and isinstance(node.func, ast.Attribute) and _is_config(node.func.value) and node.args:
                literal = node.args[0]
        elif isinstance(node, ast.Subscript) and _is_config(node.value):
            literal = node.slice
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)) and \
                _is_config(node.comparators[0]):
            literal = node.left
        if isinstance(literal, ast.Constant) and isinstance(literal.value, str):
            keys.add(literal.value)
    return keys


def _package_files():
    # recbole_ext/testing holds test doubles (the leaderboard's fake run reads fake_* keys and never builds a
    # Config); everything else runs inside real runs
    return [p for p in PACKAGE.rglob("*.py") if "testing" not in p.relative_to(PACKAGE).parts]


def _runs_of_each_model() -> dict[str, tuple[type, str]]:
    tracks = {"recbole_ext.models.multimodal": "synth-mm", "recbole_ext.models.medrec": "synth-ehr-small"}
    out = {}
    for package, dataset in tracks.items():
        for name in __import__(package, fromlist=["MODELS"]).MODELS:
            out[name] = (registry.model_class(name), dataset)
    out["BPR"] = (registry.model_class("BPR"), "ml-100k")
    out["NCL"] = (registry.model_class("NCL"), "synth-mm")  # training/mmrec_zoo.py checks NCL's num_clusters
    return out


# A subclass that fixes what its base reads: MedFM, MedDeepFM and MedWideDeep name their RecBole model as a class
# attribute, so MedContext's read of context_model never happens for them.
NOT_READ_BY = {("MedFM", "context_model"), ("MedDeepFM", "context_model"), ("MedWideDeep", "context_model")}


def test_the_collector_finds_each_way_of_reading_a_key():
    tree = ast.parse("config['a']\nself.config.get('b')\n'c' in config\nconfig_value(config, 'd', 1)\n"
                     "config_flag(cfg_config, 'e', True)\nnumber_value(config, 'f', 1, int, None)\nother['g']\n")
    assert literal_keys_read(tree) == {"a", "b", "c", "d", "e", "f"}


def test_every_key_the_code_reads_is_known():
    """A key read with a default in the code but in no YAML, no bound and no list of config_keys would be refused
    from the user: each module's keys must be known to the runs that execute it (a model module's to each model
    defined on top of it, any other module's to some run)."""
    runs = _runs_of_each_model()
    known = {name: config_keys.known_keys(name, cls, dataset) for name, (cls, dataset) in runs.items()}
    everywhere = set().union(*known.values())
    missing = []
    for path in _package_files():
        keys = literal_keys_read(ast.parse(path.read_text(encoding="utf-8")))
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        users = [name for name, (cls, _) in runs.items()
                 if any(klass.__module__ == module for klass in cls.__mro__)]
        for key in sorted(keys):
            if users:
                missing += [f"{module}: {key} (unknown to {name})" for name in users
                            if key not in known[name] and (name, key) not in NOT_READ_BY]
            elif key not in everywhere:
                missing.append(f"{module}: {key}")
    assert not missing, missing


def test_a_task_protocol_keys_are_known_for_a_dataset_of_any_name():
    """A user's own MMRec folder (`--task=mmrec --mmrec_src=DIR` on a dataset without a YAML) is run under the
    task's protocol keys, which its default dataset YAML sets; they are known there, and only for that task."""
    from recbole.model.general_recommender import BPR

    from recbole_ext.config_keys import known_keys

    mmrec = known_keys("BPR", BPR, "my-own-data", {"task": "mmrec"})
    assert {"mmrec_src", "neg_sampling_pool", "learning_rate_scheduler", "early_stop_ties"} <= mmrec
    assert "mmrec_src" not in known_keys("BPR", BPR, "my-own-data", {"task": "general"})
