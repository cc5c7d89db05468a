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


# ---- index choice: exact flat, approximate ivf ------------------------------------------------------------------
from recbole_ext.models.layers import knn as knn_module  # noqa: E402
from recbole_ext.models.layers.knn import KnnIndex, knn_neighbours  # noqa: E402
from recbole_ext.testing.clustered import clustered_features  # noqa: E402


def exact_topk(x: np.ndarray, k: int) -> np.ndarray:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.argsort(-(xn @ xn.T), axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def clustered():
    return clustered_features(1500, 24, 30, seed=5)


def test_flat_equals_brute_force_topk_across_row_blocks(clustered, monkeypatch):
    monkeypatch.setattr(knn_module, "_ROW_BLOCK", 97)  # the rows are normalised and added in many blocks
    idx, sim = knn_neighbours(clustered.astype(np.float64), 8)
    assert np.array_equal(idx, exact_topk(clustered, 8))
    xn = clustered / np.linalg.norm(clustered, axis=1, keepdims=True)
    assert np.allclose(sim, np.take_along_axis(xn @ xn.T, idx, 1), atol=1e-5)


def test_ivf_recall_seed_and_exact_limit(clustered, monkeypatch):
    exact = exact_topk(clustered, 10)
    settings = KnnIndex("ivf", nlist=40, nprobe=4, seed=1)
    idx, sim = knn_neighbours(clustered, 10, settings)
    recall = np.mean([len(set(a) & set(b)) for a, b in zip(idx, exact)]) / 10
    assert 0.85 <= recall < 1.0
    assert (np.diff(sim, axis=1) <= 0).all() and (idx >= 0).all()
    again = knn_neighbours(clustered, 10, KnnIndex("ivf", nlist=40, nprobe=4, seed=1))
    assert np.array_equal(idx, again[0]) and np.array_equal(sim, again[1])
    other = knn_neighbours(clustered, 10, KnnIndex("ivf", nlist=40, nprobe=4, seed=2))[0]
    assert not np.array_equal(idx, other)  # another k-means sample, other lists
    monkeypatch.setattr(knn_module, "_BLOCK_CELLS", 500)  # many small score blocks, same answer
    everything = knn_neighbours(clustered, 10, KnnIndex("ivf", nlist=40, nprobe=40, seed=1))[0]
    assert np.array_equal(everything, exact)  # probing every list is exact


def test_ivf_never_builds_an_items_by_items_block(monkeypatch):
    x = clustered_features(3000, 16, 10, seed=2)
    monkeypatch.setattr(knn_module, "_BLOCK_CELLS", 1 << 16)
    merge, largest = knn_module._merge_topk, []

    def recording_merge(best_sim, best_idx, rows, sim, cand, k):
        largest.append(sim.numel())
        return merge(best_sim, best_idx, rows, sim, cand, k)

    monkeypatch.setattr(knn_module, "_merge_topk", recording_merge)
    idx, _ = knn_neighbours(x, 5, KnnIndex("ivf", nlist=1, nprobe=1))  # one list holding every item
    assert np.array_equal(idx, exact_topk(x, 5))
    assert 0 < max(largest) <= 1 << 16  # score blocks of at most _BLOCK_CELLS, never [3000, 3000]


def test_ivf_graph_is_cached_apart_from_flat(feats, tmp_path):
    flat = knn_graph(feats, 5, "sym").to_dense()
    ivf = knn_graph(feats, 5, "sym", index=KnnIndex("ivf", nlist=6, nprobe=1)).to_dense()
    names = sorted(p.name for p in (tmp_path / "cache" / "knn").iterdir())
    assert len(names) == 4 and sum("-ivf6-p1-s0" in n for n in names) == 2
    assert not torch.equal(flat, ivf)  # one probed list of ~5 rows misses true neighbours
    assert torch.equal(knn_graph(feats, 5, "sym").to_dense(), flat)


@pytest.mark.parametrize("settings, message", [
    (dict(kind="hnsw"), "knn_index='hnsw' is not one of flat, ivf"),
    (dict(kind="ivf", nlist=0), "knn_nlist=0 must be"),
    (dict(kind="ivf", nprobe=0), "knn_nprobe=0 must be"),
    (dict(kind="ivf", nlist=31), "knn_nlist=31 is more than the 30 items"),
    (dict(kind="ivf", nlist=4, nprobe=5), "knn_nprobe=5 is more than knn_nlist=4"),
])
def test_bad_index_settings_are_one_line_errors(feats, settings, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        knn_graph(feats, 5, index=KnnIndex(**settings))


@pytest.mark.parametrize("model_name", ["MGCN", "MambaRec", "FREEDOM", "LATTICE", "DRAGON"])
def test_models_pass_their_knn_keys_to_the_search(model_name, tmp_path, monkeypatch):
    from recbole_ext import registry
    from recbole_ext.testing.multimodal_toy import planted_clusters, toy_config

    monkeypatch.setenv("RECBOLE_EXT_CACHE", str(tmp_path / "cache"))
    data = planted_clusters(20, 25, 200, n_clusters=3, image_dim=12, text_dim=8, seed=0)
    search, seen = knn_module.knn_neighbours, []
    monkeypatch.setattr(knn_module, "knn_neighbours", lambda f, k, s=knn_module.FLAT: seen.append(s) or search(f, k, s))
    cls = registry.model_class(model_name)
    cls(toy_config(embedding_size=8, knn_k=3, knn_index="ivf", knn_nlist=4, knn_nprobe=2, knn_seed=3), data)
    assert seen and set(seen) == {KnnIndex("ivf", 4, 2, 3)}
    with pytest.raises(UserError, match="knn_index='hnsw' is not one of"):
        cls(toy_config(embedding_size=8, knn_index="hnsw"), data)
