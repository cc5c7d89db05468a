"""FAISS kNN item graphs: same neighbours and weights as the dense official build, PAD excluded, cached by content."""
import numpy as np
import pytest
import torch

from recbole_ext.errors import UserError
from recbole_ext.models.layers.knn import knn_graph


def dense_reference(feats: np.ndarray, k: int, binary: bool) -> np.ndarray:
    """Official build (spec §1.7) on rows 1.. : dense cosine, top-k per row, s/sqrt(d_i d_j), no symmetrisation."""
    x = feats[1:] / np.linalg.norm(feats[1:], axis=1, keepdims=True)
    sim = x @ x.T
    m = len(x)
    top = np.argsort(-sim, axis=1)[:, :k]
    kept = np.zeros_like(sim)
    rows = np.repeat(np.arange(m), k)
    kept[rows, top.ravel()] = 1.0 if binary else sim[rows, top.ravel()]
    d = kept.sum(1) + (1e-7 if binary else 0.0)
    out = np.zeros((m + 1, m + 1))
    out[1:, 1:] = kept / np.sqrt(d)[:, None] / np.sqrt(d)[None, :] * (kept != 0)
    return out


@pytest.fixture()
def feats(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBOLE_EXT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    f = rng.standard_normal((31, 12)).astype(np.float32)
    f[0] = 0.0
    return f


@pytest.mark.parametrize("normalisation", ["sym", "binary_sym"])
def test_matches_dense_reference(feats, normalisation):
    g = knn_graph(torch.from_numpy(feats), 5, normalisation).to_dense().numpy()
    ref = dense_reference(feats, 5, normalisation == "binary_sym")
    assert np.allclose(g, ref, atol=1e-6)
    assert (np.count_nonzero(g[1:], axis=1) == 5).all()
    assert not g[0].any() and not g[:, 0].any()  # PAD has no edges
    assert not np.allclose(g, g.T)  # the official graph is not symmetrised (Q18)


def test_cache_is_keyed_by_feature_content(feats, tmp_path):
    g1 = knn_graph(feats, 5, "sym")
    files = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "knn").iterdir())
    assert files == ["graph", "neighbours"]
    g2 = knn_graph(feats, 5, "sym")  # second call reads the cache
    assert torch.equal(g1.to_dense(), g2.to_dense())
    changed = feats.copy()
    changed[3] += 1.0
    knn_graph(changed, 5, "sym")
    knn_graph(feats, 4, "sym")
    names = {p.name for p in (tmp_path / "cache" / "knn").iterdir()}
    knn_graph(feats, 5, "binary_sym")  # new graph from the cached neighbours of the same features and k
    added = {p.name for p in (tmp_path / "cache" / "knn").iterdir()} - names
    assert len(added) == 1 and next(iter(added)).startswith("graph-")
    assert len(names) == 6  # (graph, neighbours) x (original k=5, changed features, k=4)


def test_corrupt_cache_is_rebuilt(feats, tmp_path):
    g1 = knn_graph(feats, 5, "sym").to_dense()
    for path in (tmp_path / "cache" / "knn").iterdir():
        path.write_bytes(b"not a npz")
    assert torch.equal(knn_graph(feats, 5, "sym").to_dense(), g1)


def test_bad_features_raise_user_error(feats):
    bad = feats.copy()
    bad[2, 1] = np.nan
    with pytest.raises(UserError, match="NaN"):
        knn_graph(bad, 5)
    with pytest.raises(UserError, match="unknown kNN normalisation"):
        knn_graph(feats, 5, "rw", use_cache=False)
