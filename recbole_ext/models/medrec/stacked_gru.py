"""Several independent single-layer ``nn.GRU`` of the same size over the same packed visits, run as one.

CafeMed encodes three visit streams (diagnoses, procedures, medication history) with three GRUs of width d over a
few (1-10) visits per patient. ``nn.GRU`` over the padded ``[patients, visits]`` grid spends half its arithmetic
on padding (a batch's longest history sets the grid) and, on CPU, records ~10 autograd nodes per time step and GRU
whose backward is as many small kernels again. ``stacked_gru``:

* works on packed sequences (``PackedVisits``: the visits of step t of the patients still active at t, as
  ``torch.nn.utils.rnn.PackedSequence`` orders them), so no padded step is computed; a padded step never changes
  an earlier output, so the outputs at real visits are those of the padded ``nn.GRU`` call;
* runs the G recurrences together (one batched matrix product per step for all of them) inside one autograd node
  whose backward is written out (backpropagation through time with the GRU derivatives); the weight gradients are
  one batched product over all steps.

Parameters stay the ``nn.GRU`` modules' own (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``),
so checkpoints are unchanged. Equations (PyTorch's GRU, gate order r, z, n; h_0 = 0)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)      z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))   h' = (1 - z) * n + z * h
"""
from __future__ import annotations

from itertools import accumulate
from typing import Sequence

import torch
import torch.nn as nn

from recbole_ext.utils.device import host_ints
from recbole_ext.utils.segments import segment_starts


class PackedVisits:
    """Packed-sequence order of the real visits of a ``[P, T]`` visit mask (every patient's visits are a prefix).

    ``batch_sizes[t]`` = patients with more than t visits; in packed order step t holds those patients, longest
    history first. ``packed_of_visit[i]`` = packed row of the i-th real visit in mask (patient, visit) order and
    ``visit_of_packed`` its inverse.
    """

    def __init__(self, visit_mask: torch.Tensor):
        lengths = visit_mask.sum(1)
        rank = torch.empty_like(lengths)
        rank[torch.argsort(lengths, descending=True, stable=True)] = torch.arange(len(lengths), device=lengths.device)
        sizes = (lengths.unsqueeze(0) > torch.arange(visit_mask.shape[1], device=lengths.device).unsqueeze(1)).sum(1)
        self.batch_sizes = [int(s) for s in host_ints(sizes) if s > 0]  # the loop over steps runs on the host
        start = segment_starts(sizes)
        patient, step = visit_mask.nonzero(as_tuple=True)
        self.packed_of_visit = start[step] + rank[patient]
        self.visit_of_packed = torch.argsort(self.packed_of_visit)


class _StackedGRU(torch.autograd.Function):
    """``x [G, N, d]`` packed rows (``batch_sizes``) -> outputs ``[G, N, h]`` of G GRUs with stacked weights."""

    @staticmethod
    def forward(ctx, x, batch_sizes, w_ih, w_hh, b_ih, b_hh):
        n_g, n_rows, _ = x.shape
        hid = w_hh.shape[-1]
        gi = torch.baddbmm(b_ih.unsqueeze(1), x, w_ih.transpose(1, 2))      # input part of every step at once
        out = x.new_empty(n_g, n_rows, hid)
        gates = x.new_empty(n_g, n_rows, 3 * hid)      # r, z, n after their nonlinearity
        gh_n = x.new_empty(n_g, n_rows, hid)           # W_hn h + b_hn (needed for dr)
        w_hh_t, b_hh_row = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
        h = x.new_zeros(n_g, batch_sizes[0] if batch_sizes else 0, hid)
        start = 0
        for size in batch_sizes:
            rows = slice(start, start + size)
            h = h[:, :size]                            # patients are ordered longest first: a prefix stays active
            gh = torch.baddbmm(b_hh_row, h, w_hh_t)
            # results are written straight into the saved buffers (out=), no copies
            rz = torch.add(gi[:, rows, :2 * hid], gh[..., :2 * hid], out=gates[:, rows, :2 * hid]).sigmoid_()
            r, z = rz[..., :hid], rz[..., hid:]
            n = torch.addcmul(gi[:, rows, 2 * hid:], r, gh[..., 2 * hid:], out=gates[:, rows, 2 * hid:]).tanh_()
            h = torch.addcmul(n, z, h - n, out=out[:, rows])  # (1 - z) * n + z * h
            gh_n[:, rows] = gh[..., 2 * hid:]
            start += size
        ctx.batch_sizes = batch_sizes
        ctx.save_for_backward(x, w_ih, w_hh, gates, gh_n, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        x, w_ih, w_hh, gates, gh_n, out = ctx.saved_tensors
        batch_sizes = ctx.batch_sizes
        n_g, n_rows, _ = x.shape
        hid = w_hh.shape[-1]
        d_gi = x.new_empty(n_g, n_rows, 3 * hid)       # d loss / d (W_i x + b_i), per gate
        d_gh = x.new_empty(n_g, n_rows, 3 * hid)       # d loss / d (W_h h + b_h), per gate
        dh = out.new_zeros(n_g, batch_sizes[0] if batch_sizes else 0, hid)
        starts = [0, *accumulate(batch_sizes)][:-1]  # host integers: no tensor, no device round trip
        for step in reversed(range(len(batch_sizes))):
            size, start = batch_sizes[step], starts[step]
            rows = slice(start, start + size)
            r, z, n = gates[:, rows].split(hid, -1)
            h_prev = out[:, starts[step - 1]:starts[step - 1] + size] if step else torch.zeros_like(n)
            dh_t = dh[:, :size] + d_out[:, rows]
            d_gi_t, d_gh_t = d_gi[:, rows], d_gh[:, rows]
            d_n = torch.mul(dh_t * (1 - z), 1 - n * n, out=d_gi_t[..., 2 * hid:])                # through tanh
            torch.mul(dh_t * (h_prev - n), z * (1 - z), out=d_gi_t[..., hid:2 * hid])            # through sigmoid
            torch.mul(d_n * gh_n[:, rows], r * (1 - r), out=d_gi_t[..., :hid])
            d_gh_t[..., :2 * hid] = d_gi_t[..., :2 * hid]
            torch.mul(d_n, r, out=d_gh_t[..., 2 * hid:])
            dh[:, :size] = torch.baddbmm(dh_t * z, d_gh_t, w_hh)
        d_x = d_w_ih = d_w_hh = d_b_ih = d_b_hh = None
        if ctx.needs_input_grad[0]:
            d_x = torch.bmm(d_gi, w_ih)
        if ctx.needs_input_grad[2]:
            d_w_ih = torch.bmm(d_gi.transpose(1, 2), x)
        if ctx.needs_input_grad[3] and len(batch_sizes) > 1:
            # the state entering row i of step t >= 1 is output row i of step t - 1 (step 0 starts from zero)
            # built on the device (output_size: no read-back of the repeat counts on a GPU)
            dev = out.device
            sizes = torch.tensor(batch_sizes, dtype=torch.long, device=dev)
            first = torch.tensor(starts, dtype=torch.long, device=dev)
            step = torch.repeat_interleave(torch.arange(len(batch_sizes), device=dev), sizes,
                                           output_size=n_rows)[batch_sizes[0]:]
            prev_row = first[step - 1] + torch.arange(batch_sizes[0], n_rows, device=dev) - first[step]
            d_w_hh = torch.bmm(d_gh[:, batch_sizes[0]:].transpose(1, 2), out.index_select(1, prev_row))
        elif ctx.needs_input_grad[3]:
            d_w_hh = w_hh.new_zeros(w_hh.shape)
        if ctx.needs_input_grad[4]:
            d_b_ih = d_gi.sum(1)
        if ctx.needs_input_grad[5]:
            d_b_hh = d_gh.sum(1)
        return d_x, None, d_w_ih, d_w_hh, d_b_ih, d_b_hh


def stacked_gru(grus: Sequence[nn.GRU], x: torch.Tensor, batch_sizes: Sequence[int]) -> torch.Tensor:
    """Outputs of every ``grus[g]`` on its packed input ``x[g]``: ``x [G, N, d]`` -> ``[G, N, h]``.

    ``batch_sizes`` as in ``PackedVisits`` / ``PackedSequence`` (non-increasing). Each GRU must be a one-layer,
    unidirectional ``nn.GRU`` with biases, started from a zero state (the default ``gru(inputs)`` call). Equal to
    ``grus[g](PackedSequence(x[g], batch_sizes))`` up to float rounding, gradients included (tests
    ``test_stacked_gru_equals_nn_gru``).
    """
    for gru in grus:
        if gru.num_layers != 1 or gru.bidirectional or not gru.bias or gru.proj_size:
            raise ValueError("stacked_gru takes one-layer unidirectional nn.GRU modules with biases")
    stack = [torch.stack([getattr(gru, name) for gru in grus])
             for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    return _StackedGRU.apply(x, list(batch_sizes), *stack)
