"""Seeded clustered feature tables for kNN and retrieval benchmarks and tests.

Uniform random vectors in hundreds of dimensions have no neighbour structure (every cosine is close to 0), so an
approximate index looks either perfect or useless on them depending on chance. Content embeddings of a catalogue
(text encoders, image encoders) are clustered: products of one kind sit close together, kinds of very different
sizes, and within a kind the variation has few directions (learned embeddings have an intrinsic dimension of tens,
not hundreds). :func:`clustered_features` draws such a table: ``n_clusters`` random unit centres, cluster sizes
from a log-normal (a few big kinds, a long tail of small ones), and each row its centre plus an offset of norm about
``spread`` that lies in a random ``intrinsic_dim``-dimensional subspace, plus isotropic noise a tenth that size.
Isotropic noise alone would make the order of the neighbours inside a cluster as arbitrary as uniform vectors.

Rows are generated in blocks, so a table larger than memory can be written straight into a ``.npy`` memory map
(:func:`write_clustered_npy`). The same arguments give the same table, whatever the block size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recbole_ext.errors import UserError

_BLOCK_ROWS = 65536
_SIZE_SIGMA = 1.0  # log-normal sigma of the cluster weights: the biggest kinds are ~30x the median one
_ISOTROPIC = 0.1  # isotropic noise relative to the structured offset


def _cluster_model(n_rows: int, dim: int, n_clusters: int, seed: int, intrinsic_dim: int):
    if n_rows < 0 or dim < 1 or n_clusters < 1 or intrinsic_dim < 1:
        raise UserError(f"clustered features need rows >= 0 and dim, clusters, intrinsic_dim >= 1 "
                        f"(got {n_rows}, {dim}, {n_clusters}, {intrinsic_dim})")
    rng = np.random.default_rng([seed, 0])
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, _SIZE_SIGMA, n_clusters)
    assignment = rng.choice(n_clusters, size=n_rows, p=weights / weights.sum())
    basis = rng.standard_normal((intrinsic_dim, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    return centres, assignment, basis


def _fill(out: np.ndarray, model, spread: float, seed: int) -> None:
    centres, assignment, basis = model
    r, dim = basis.shape
    latent_scale, iso_scale = np.float32(spread / np.sqrt(r)), np.float32(_ISOTROPIC * spread / np.sqrt(dim))
    for block, start in enumerate(range(0, len(out), _BLOCK_ROWS)):
        stop = min(start + _BLOCK_ROWS, len(out))
        rng = np.random.default_rng([seed, 1, block])
        latent = rng.standard_normal((stop - start, r), dtype=np.float32)
        latent *= latent_scale
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        noise *= iso_scale
        noise += latent @ basis
        noise += centres[assignment[start:stop]]
        out[start:stop] = noise


def clustered_features(n_rows: int, dim: int, n_clusters: int, seed: int = 0, spread: float = 1.0,
                       intrinsic_dim: int = 16, return_clusters: bool = False):
    """``[n_rows, dim]`` float32 rows drawn around ``n_clusters`` unit centres (see the module docstring).

    With ``return_clusters`` also the cluster of each row (int64).
    """
    model = _cluster_model(n_rows, dim, n_clusters, seed, intrinsic_dim)
    out = np.empty((n_rows, dim), dtype=np.float32)
    _fill(out, model, spread, seed)
    return (out, model[1]) if return_clusters else out


def write_clustered_npy(path: str | Path, n_rows: int, dim: int, n_clusters: int, seed: int = 0,
                        spread: float = 1.0, intrinsic_dim: int = 16) -> np.memmap:
    """:func:`clustered_features` written block by block into the ``.npy`` file ``path``; returns it memory-mapped
    read-only (memory stays one block plus the page cache the OS chooses to keep)."""
    model = _cluster_model(n_rows, dim, n_clusters, seed, intrinsic_dim)
    out = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float32, shape=(n_rows, dim))
    _fill(out, model, spread, seed)
    out.flush()
    del out
    return np.load(str(path), mmap_mode="r")
