"""One test per shim: each fails if its shim is missing while the bug it works around is present."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recbole_ext import compat
from tests.conftest import write_atomic


def fresh_interpreter(code: str, timeout: int = 120):
    """Run ``code`` in a new Python process (warnings, logs and global modes happen once per process); returns the
    finished process, asserting it exited cleanly. The repo is importable without an install, too."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(compat.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def last_line(out) -> str:
    return out.stdout.strip().splitlines()[-1]


def test_every_shim_is_applied_where_its_gate_is_open():
    for name, applied, why in compat.report():
        assert applied == compat.SHIMS[name].gate() or applied, name
        assert why


def test_numpy_aliases_make_recbole_config_work():
    from recbole.config import Config

    assert np.float_ is np.float64 and np.bool8 is np.bool_
    config = Config(model="BPR", dataset="ml-100k", config_dict={"state": "WARNING"})
    assert config["model"] == "BPR" and np.float is np.float64  # Config re-creates np.float from np.float_


def test_recbole_quick_start_imports():
    import recbole.quick_start as qs  # ray 2.6.3 fails on setuptools>=81 without the stub

    assert callable(qs.run_recbole)


def test_scipy_dok_update_used_by_graph_models():
    import scipy.sparse as sp

    m = sp.dok_matrix((3, 3), dtype=np.float32)
    m._update({(0, 1): 1.0, (2, 2): 3.0})
    assert m[0, 1] == 1.0 and m[2, 2] == 3.0 and m.nnz == 2


def _tiny_dataset(tmp_path, extra_config=None):
    """Atomic files with NaN token cells, NaN floats and empty token_seq cells."""
    from recbole.config import Config
    from recbole.data import create_dataset

    folder = tmp_path / "tiny"
    write_atomic(folder, "tiny", "inter", ["user_id:token", "item_id:token", "rating:float"],
                 [["u1", "i1", "1"], ["u1", "i2", ""], ["u2", "i2", "3"], ["u2", "i3", "5"], ["u3", "i1", "2"]])
    write_atomic(folder, "tiny", "item", ["item_id:token", "brand:token", "tags:token_seq", "price:float"],
                 [["i1", "b1", "x y", "1.0"], ["i2", "", "", ""], ["i3", "b2", "y", "4.0"]])
    config = Config(model="BPR", dataset="tiny", config_dict={
        "data_path": str(tmp_path), "state": "WARNING", "load_col": None, "normalize_all": False,
        "user_inter_num_interval": None, "item_inter_num_interval": None, **(extra_config or {})})
    return create_dataset(config)


def test_pandas_fillna_and_empty_seq_cells(tmp_path):
    ds = _tiny_dataset(tmp_path)  # feature tables are still pandas DataFrames before build()
    inter, item = ds.inter_feat, ds.item_feat.set_index("item_id")
    # NaN floats are mean-imputed, a NaN token becomes [PAD] = 0, an empty seq cell becomes an empty array
    assert not inter["rating"].isna().any()
    assert sorted(inter["rating"].tolist()) == pytest.approx(sorted([1, 2.75, 3, 5, 2]))
    row = int(ds.field2token_id["item_id"]["i2"])
    assert float(item.loc[row, "price"]) == pytest.approx(2.5)
    assert int(item.loc[row, "brand"]) == 0
    assert len(item.loc[row, "tags"]) == 0


def test_pandas_agg_len_token_seq_remap(tmp_path):
    ds = _tiny_dataset(tmp_path)
    item = ds.item_feat.set_index("item_id")
    row = int(ds.field2token_id["item_id"]["i1"])
    tokens = [ds.field2id_token["tags"][int(t)] for t in item.loc[row, "tags"]]
    assert sorted(tokens) == ["x", "y"]


def test_csv_field_limit_allows_long_float_seq(tmp_path):
    from recbole.config import Config
    from recbole.data import create_dataset

    folder = tmp_path / "wide"
    vec = " ".join(["0.123456789012345"] * 9000)  # ~160k characters, over csv's default 131072
    write_atomic(folder, "wide", "inter", ["user_id:token", "item_id:token"], [["u1", "i1"], ["u2", "i1"]])
    write_atomic(folder, "wide", "item", ["item_id:token", "emb:float_seq"], [["i1", vec]])
    config = Config(model="BPR", dataset="wide", config_dict={
        "data_path": str(tmp_path), "state": "WARNING", "load_col": None, "normalize_all": False})
    ds = create_dataset(config)
    assert len(ds.item_feat["emb"].iloc[-1]) == 9000


def test_collector_handles_int_and_counter_entries():
    from recbole.config import Config
    from recbole.evaluator import Collector

    config = Config(model="BPR", dataset="ml-100k", config_dict={
        "state": "WARNING", "metrics": ["Recall", "ItemCoverage", "GiniIndex"], "topk": [5],
        "valid_metric": "recall@5"})
    collector = Collector(config)
    collector.data_struct.set("data.num_items", 10)
    collector.data_struct.set("data.count_items", {1: 2})
    collector.data_struct.set("rec.items", torch.ones(2, 5, dtype=torch.long))
    struct = collector.get_data_struct()  # RecBole 1.2.1 calls .cpu() on the int and crashes
    assert struct.get("data.num_items") == 10


def test_pop_counts_every_row_of_a_batch(tiny):
    from recbole.data.interaction import Interaction
    from recbole.model.general_recommender import Pop

    from recbole_ext.config import build_config

    config, task = build_config("Pop", "tiny", tiny)
    pop = Pop(config, task.create_dataset(config))
    pop.calculate_loss(Interaction({"item_id": torch.tensor([3, 3, 3, 5])}))  # RecBole 1.2.1 counts item 3 once
    assert pop.item_cnt[3, 0] == 3 and pop.item_cnt[5, 0] == 1 and int(pop.item_cnt.sum()) == 4


def test_config_strings_are_never_evaluated(tmp_path):
    from recbole.config import Config

    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    config = Config(model="BPR", dataset="ml-100k",
                    config_dict={"state": "WARNING", "my_key": payload, "learning_rate": "0.01", "topk": "[5, 10]"})
    assert not marker.exists()
    assert config["my_key"] == payload
    assert config["learning_rate"] == 0.01 and config["topk"] == [5, 10]


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), ("[1, 2]", [1, 2]), ("true", True),
                                        ("False", False), ("none", None), ("{'a': 1}", {"a": 1}),
                                        ("ml-100k", "ml-100k"), ("os.system('x')", "os.system('x')")])
def test_safe_literal(text, value):
    assert compat.safe_literal(text) == value


def test_source_patch_raises_when_pattern_is_gone():
    class Owner:
        def method(self):
            return 1

    import types

    module = types.ModuleType("fake")
    with pytest.raises(compat.CompatError, match="pattern"):
        compat.source_patch(Owner, "method", [("return 2", "return 3")], module=module)


def test_checkpoints_load_with_weights_only(tmp_path, tiny):
    from recbole_ext.quick_start import run

    result = run("BPR", "tiny", {**tiny, "run_dir": str(tmp_path / "r")})
    state = torch.load(result.checkpoint, weights_only=True)  # RecBole's pickled Config would fail here
    assert state["model"] == "BPR" and isinstance(state["external_config"], dict)


@pytest.fixture
def without_shim():
    """Temporarily restore RecBole's original methods, to show the bug each source patch removes is real."""
    restored = []

    def _restore(owner, *names):
        for name in names:
            patched = getattr(owner, name)
            restored.append((owner, name, patched))
            setattr(owner, name, patched.__ext_original__)

    yield _restore
    for owner, name, patched in restored:
        setattr(owner, name, patched)


@pytest.mark.skipif(not compat.SHIMS["pandas_fillna_inplace"].applied, reason="pandas<3: no copy-on-write no-op")
def test_without_fillna_shim_nan_survives_silently(tmp_path, without_shim):
    from recbole.data.dataset import Dataset

    without_shim(Dataset, "_fill_nan")
    ds = _tiny_dataset(tmp_path)
    assert ds.inter_feat["rating"].isna().any()  # the silent corruption the shim prevents


@pytest.mark.skipif(not compat.SHIMS["pandas_agg_len"].applied, reason="pandas<3: agg(len) is element-wise")
def test_without_agg_len_shim_token_seq_breaks(tmp_path, without_shim):
    from recbole.data.dataset import Dataset

    without_shim(Dataset, "_remap")
    with pytest.raises(ValueError):
        _tiny_dataset(tmp_path)


_SPARSE_PROBE = """
import warnings, torch
{setup}
with warnings.catch_warnings(record=True) as caught:  # keeps the installed filters, records what passes them
    torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.ones(2), (2, 2)).coalesce().to_sparse_csr()
print(sum(any(n in str(w.message) for n in {notices!r}) for w in caught))
"""


@pytest.mark.parametrize("setup,expected", [("", 2), ("import recbole_ext", 0)])
def test_torch_sparse_notices_are_silenced_by_the_shim_only(setup, expected):
    """Fresh interpreters (torch warns once per process): the notices appear without recbole_ext, not with it."""
    out = fresh_interpreter(_SPARSE_PROBE.format(setup=setup, notices=compat.TORCH_SPARSE_NOTICES))
    assert int(last_line(out)) == expected


@pytest.mark.skipif(not compat.SHIMS["pandas_readonly_values"].applied, reason="pandas<3: writable column arrays")
def test_interaction_tensors_own_their_memory(tmp_path, without_shim):
    import warnings

    import pandas as pd
    from recbole.data.dataset import Dataset

    ds = _tiny_dataset(tmp_path)
    frame = pd.DataFrame({"user_id": np.array([1, 2, 3]), "rating": np.array([1.0, 2.0, 3.0], dtype=np.float32)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the non-writable-array warning would fail here
        inter = ds._dataframe_to_interaction(frame)
    inter["user_id"][0] = 99
    inter["rating"][0] = 99.0
    assert frame["user_id"].tolist() == [1, 2, 3] and frame["rating"].tolist() == [1.0, 2.0, 3.0]
    without_shim(Dataset, "_dataframe_to_interaction")
    shared = ds._dataframe_to_interaction(frame)
    assert np.shares_memory(shared["user_id"].numpy(), frame["user_id"].to_numpy())  # what the shim prevents


_FAISS_PROBE = """
import logging
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")  # RecBole's root level
{setup}
import faiss
"""


@pytest.mark.skipif(not compat.SHIMS["faiss_loader_notices"].applied, reason="faiss without the INFO loader log")
@pytest.mark.parametrize("setup,logged", [("", True), ("import recbole_ext", False)])
def test_faiss_loader_notices_are_silenced_by_the_shim_only(setup, logged):
    """Fresh interpreters (faiss loads once per process): its loader's INFO lines appear without recbole_ext only."""
    out = fresh_interpreter(_FAISS_PROBE.format(setup=setup))
    assert (f"{compat.FAISS_LOADER_LOGGER} Loading faiss" in out.stderr) is logged, out.stderr[-2000:]


def _run_empty_epoch(trainer_class):
    """RecBole's epoch loop on no batches: enough to build its GradScaler; returns the FutureWarnings it raised."""
    import types
    import warnings

    import torch

    fake = types.SimpleNamespace(model=torch.nn.Linear(1, 1), config={"single_spec": True}, enable_scaler=False,
                                 enable_amp=False, device=torch.device("cpu"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer_class._train_epoch(fake, [], 0, loss_func=lambda batch: None, show_progress=False)
    return [w for w in caught if issubclass(w.category, FutureWarning) and "GradScaler" in str(w.message)]


@pytest.mark.skipif(not compat.SHIMS["torch_amp_gradscaler"].applied, reason="torch < 2.4: no deprecation")
def test_training_epochs_build_the_gradscaler_without_the_deprecation(without_shim):
    from recbole.trainer.trainer import NCLTrainer, Trainer

    for trainer_class in (Trainer, NCLTrainer):
        assert _run_empty_epoch(trainer_class) == []
    without_shim(Trainer, "_train_epoch")
    assert len(_run_empty_epoch(Trainer)) == 1  # RecBole's own line warns


@pytest.mark.skipif(not compat.SHIMS["interaction_sort_argsort"].applied, reason="numpy < 2: no deprecation")
def test_interaction_sort_is_stable_and_free_of_the_array_wrap_deprecation(without_shim):
    import warnings

    import torch
    from recbole.data.interaction import Interaction

    def sorted_users(ascending):
        inter = Interaction({"user_id": torch.tensor([3, 1, 2, 1, 3]), "item_id": torch.tensor([0, 1, 2, 3, 4])})
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*__array_wrap__", category=DeprecationWarning)
            inter.sort(by="user_id", ascending=ascending)
        return inter["user_id"].tolist(), inter["item_id"].tolist()

    assert sorted_users(True) == ([1, 1, 2, 3, 3], [1, 3, 2, 0, 4])  # stable: ties keep their order
    assert sorted_users(False) == ([3, 3, 2, 1, 1], [4, 0, 2, 3, 1])  # RecBole reverses the stable order
    without_shim(Interaction, "sort")
    with pytest.raises(DeprecationWarning, match="__array_wrap__"):
        sorted_users(True)
    with pytest.raises(ValueError, match="negative"):  # RecBole's descending sort on today's torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            Interaction({"user_id": torch.tensor([3, 1, 2])}).sort(by="user_id", ascending=False)


_LEGACY_SPARSE_PROBE = """
import warnings, torch
{setup}
with warnings.catch_warnings(record=True) as caught:  # keeps the installed filters, records what passes them
    torch.sparse.FloatTensor(torch.tensor([[0], [0]]), torch.tensor([1.0]), torch.Size([1, 1]))
print(sum("is deprecated" in str(w.message) for w in caught))
"""


@pytest.mark.skipif(not compat.SHIMS["torch_legacy_sparse_constructor"].applied, reason="torch < 2.0")
@pytest.mark.parametrize("setup,expected", [("", 1), ("import recbole_ext", 0)])
def test_legacy_sparse_constructor_notice_is_silenced_by_the_shim_only(setup, expected):
    out = fresh_interpreter(_LEGACY_SPARSE_PROBE.format(setup=setup))
    assert int(last_line(out)) == expected


_RAY_PROBE = """
import warnings
{setup}
with warnings.catch_warnings(record=True) as caught:  # keeps the installed filters, records what passes them
    import ray  # recbole.quick_start imports ray.tune at import time; ray's own import warns
print(sum("pkg_resources is deprecated" in str(w.message) for w in caught))
"""


@pytest.mark.skipif(not compat._ray_importable(), reason="the ray extra is not installed")
def test_ray_pkg_resources_notice_is_silenced_by_the_shim_only():
    def notices(setup):
        return int(last_line(fresh_interpreter(_RAY_PROBE.format(setup=setup), timeout=300)))

    if notices("") == 0:
        pytest.skip("this setuptools does not deprecate pkg_resources")
    assert notices("import recbole_ext") == 0


_SINE_PROBE = """
import torch
{setup}
import recbole.model.sequential_recommender  # what importing SASRec, or RecBole's get_model walking, does
print(torch.is_anomaly_enabled())
"""


@pytest.mark.skipif(not compat.SHIMS["sine_anomaly_mode"].applied, reason="this RecBole's SINE leaves the mode alone")
@pytest.mark.parametrize("setup,expected", [
    ("", "True"),                                   # the bug: one import switches the whole process into it
    ("import recbole_ext", "False"),
    ("torch.autograd.set_detect_anomaly(True)\nimport recbole_ext", "True"),  # a user's own choice is kept
])
def test_importing_recbole_sequential_models_leaves_anomaly_mode_alone(setup, expected):
    assert last_line(fresh_interpreter(_SINE_PROBE.format(setup=setup), timeout=300)) == expected


def test_tensorboard_goes_beside_the_run_log_and_never_into_the_working_directory(tmp_path, monkeypatch):
    """A logger whose file handler carries RUN_LOG_MARKER (a recbole-ext run's run.log) gets its tensorboard folder
    beside that file; a plain RecBole logger keeps RecBole's ./log_tensorboard. Without the shim, both land in the
    working directory (which quick_start used to chdir into the run directory for)."""
    import logging

    import recbole.trainer.trainer as trainer_module

    work, run_dir = tmp_path / "work", tmp_path / "run"
    work.mkdir()
    run_dir.mkdir()
    monkeypatch.chdir(work)
    logger = logging.getLogger("tensorboard-shim-test")
    marked = logging.FileHandler(run_dir / "run.log")
    setattr(marked, compat.RUN_LOG_MARKER, True)
    logger.addHandler(marked)
    try:
        writer = trainer_module.get_tensorboard(logger)  # the name RecBole's Trainer.__init__ calls
        writer.close()
        assert writer.log_dir == str(run_dir / "log_tensorboard" / "run")
        assert list(work.iterdir()) == []
        logger.removeHandler(marked)
        plain = logging.FileHandler(run_dir / "plain.log")
        logger.addHandler(plain)
        writer = trainer_module.get_tensorboard(logger)
        writer.close()
        assert writer.log_dir == "log_tensorboard/plain" and (work / "log_tensorboard" / "plain").is_dir()
        logger.removeHandler(plain)
        plain.close()
    finally:
        marked.close()
