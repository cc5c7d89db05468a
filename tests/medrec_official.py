"""Pieces of the official medication-recommendation code, transcribed in plain float64 torch for the parity tests
(``test_medrec_molerec.py``, ``test_medrec_official_parity.py``).

Functional: every function takes the package model's ``named_parameters()`` dict ``p`` and a parameter-name prefix,
so the transcription runs on the very tensors of the model under test and autograd gives comparable gradients.
The training-loop pieces (targets, ``ddi_rate_score``) follow the SafeDrug / MoleRec / GAMENet scripts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# four medications made of five small molecules (the first averages two), for the molecular models' parity tests
TINY_SMILES = [["CCOC(=O)c1ccccc1", "CCO"], ["CC(=O)Nc1ccc(O)cc1"], ["OC(=O)c1ccccc1"], ["CCN(CC)CC"]]


def brics(smiles: str) -> set[str]:
    from rdkit import Chem
    from rdkit.Chem import BRICS

    return set(BRICS.BRICSDecompose(Chem.MolFromSmiles(smiles)))


def linear(p, name, x):
    return x @ p[name + ".weight"].T + p[name + ".bias"]


def layer_norm(p, name, x):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * p[name + ".weight"] + p[name + ".bias"]


def gru(p, name, xs):
    """torch.nn.GRU's cell, written out: gates r, z, n in this order; returns (all outputs, last hidden)."""
    h = torch.zeros(p[name + ".weight_hh_l0"].shape[1], dtype=torch.float64)
    outputs = []
    for x in xs:
        gi = p[name + ".weight_ih_l0"] @ x + p[name + ".bias_ih_l0"]
        gh = p[name + ".weight_hh_l0"] @ h + p[name + ".bias_hh_l0"]
        (i_r, i_z, i_n), (h_r, h_z, h_n) = gi.chunk(3), gh.chunk(3)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        h = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
        outputs.append(h)
    return torch.stack(outputs), h


def ddi_rate_score(labels, ddi_A):
    """``util.ddi_rate_score`` for one predicted set: interacting pairs i < j over all pairs (0 without a pair)."""
    all_cnt = dd_cnt = 0
    for i, med_i in enumerate(labels):
        for j, med_j in enumerate(labels):
            if j > i:
                all_cnt += 1
                dd_cnt += int(ddi_A[med_i, med_j] == 1 or ddi_A[med_j, med_i] == 1)
    return dd_cnt / all_cnt if all_cnt else 0


def bce_and_margin(result, meds, n_med):
    """The scripts' ``loss_bce`` (BCE with logits) and ``loss_multi`` (margin loss on sigmoid outputs) of one visit
    ``result`` ``[1, n_med]`` whose medications are the 0-based ``meds``; also the predicted set (threshold 0.5)."""
    bce_target = torch.zeros(1, n_med, dtype=torch.float64)
    bce_target[:, meds] = 1
    multi_target = -torch.ones(1, n_med, dtype=torch.long)
    for idx, item in enumerate(meds):
        multi_target[0][idx] = item
    sigmoid_res = torch.sigmoid(result)
    loss_bce = F.binary_cross_entropy_with_logits(result, bce_target)
    loss_multi = F.multilabel_margin_loss(sigmoid_res, multi_target)
    labels = [int(i) for i in torch.nonzero(sigmoid_res.detach()[0] >= 0.5)]
    return loss_bce, loss_multi, labels
