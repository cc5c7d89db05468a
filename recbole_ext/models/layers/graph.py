"""User-item graph helpers shared by the graph-based multimodal models."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def to_torch_sparse(matrix: sp.spmatrix) -> torch.Tensor:
    """float32 torch CSR: on CPU ``csr @ dense`` and its backward run 2-4x faster than ``torch.sparse.mm`` on COO."""
    coo = matrix.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(indices, values, coo.shape).coalesce().to_sparse_csr()


def interaction_csr(inter_coo: sp.spmatrix, n_users: int, n_items: int, binary: bool = False) -> sp.csr_matrix:
    """Training interactions as CSR; duplicates are summed (as scipy lil in the official code) unless ``binary``."""
    coo = inter_coo.tocoo()
    r = sp.csr_matrix((np.ones_like(coo.data, dtype=np.float64), (coo.row, coo.col)), shape=(n_users, n_items))
    r.sum_duplicates()
    if binary:
        r.data[:] = 1.0
    return r


def normalised_bipartite(r: sp.csr_matrix, degree_eps: float = 0.0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``(A_hat, R_hat)`` with ``A_hat = D^-1/2 [[0, R], [R^T, 0]] D^-1/2`` and ``R_hat`` its user->item block.

    ``degree_eps = 0`` gives isolated nodes weight 0 (MGCN/LightGCN); FREEDOM adds ``1e-7`` to every degree.
    """
    du = np.asarray(r.sum(axis=1)).ravel() + degree_eps
    di = np.asarray(r.sum(axis=0)).ravel() + degree_eps
    with np.errstate(divide="ignore"):
        iu = np.where(du > 0, du ** -0.5, 0.0)
        ii = np.where(di > 0, di ** -0.5, 0.0)
    r_hat = sp.diags(iu) @ r @ sp.diags(ii)
    return bipartite(r_hat).astype(np.float32), r_hat.tocsr().astype(np.float32)


def bipartite(block: sp.spmatrix) -> sp.csr_matrix:
    """``[[0, B], [B^T, 0]]`` over users then items, float64 CSR (an empty ``B`` still gives the full shape)."""
    n_users, n_items = block.shape
    a = sp.bmat([[None, block], [block.T, None]], format="csr", dtype=np.float64)
    a.resize((n_users + n_items, n_users + n_items))
    return a


def row_normalised_with_self_loops(r: sp.csr_matrix) -> sp.csr_matrix:
    """``D^-1 (A + I)`` with ``A = [[0, R], [R^T, 0]]`` and ``D`` the row sums of ``A + I`` (LATTICE in MMRec).

    Row-stochastic, not symmetric: a node averages itself and its neighbours. Every node has degree >= 1, so an
    isolated node (RecBole's PAD user and item) keeps its own embedding and touches no other node.
    """
    a = bipartite(r)
    a = (a + sp.identity(a.shape[0], dtype=np.float64, format="csr")).tocsr()
    inv_degree = 1.0 / np.asarray(a.sum(axis=1)).ravel()
    return (sp.diags(inv_degree) @ a).tocsr().astype(np.float32)


def graph_product(adj: torch.Tensor, dense: torch.Tensor, product=torch.matmul) -> torch.Tensor:
    """``product(adj, dense)`` of a sparse graph and a dense matrix. Outside autocast it is that product, bit for
    bit; inside a bfloat16 autocast region (``precision: bf16``) it runs in the graph's float32 with autocast off:
    sparse kernels have no bfloat16 on the CPU, and the propagation keeps its normalised weights exact."""
    device_type = dense.device.type
    if not torch.is_autocast_enabled(device_type):
        return product(adj, dense)
    with torch.autocast(device_type, enabled=False):
        return product(adj, dense.to(adj.dtype))


def lightgcn_mean(adj: torch.Tensor, ego: torch.Tensor, n_layers: int) -> torch.Tensor:
    """``mean_{l=0..L} adj^l ego`` (LightGCN layer combination, layer 0 included)."""
    total = ego
    h = ego
    for _ in range(n_layers):
        h = graph_product(adj, h)
        total = total + h
    return total / (n_layers + 1)
