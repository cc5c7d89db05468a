"""SafeDrug: Dual Molecular Graph Encoders for Recommending Effective and Safe Drug Combinations.

Reference: Chaoqi Yang, Cao Xiao, Fenglong Ma, Lucas Glass, Jimeng Sun. IJCAI 2021.

Patient query from two GRUs over per-visit diagnosis / procedure embedding sums (dropout on each code embedding).
Two drug encoders:

* global: a message-passing network over the atom graphs of every molecule (radius-1 Weisfeiler-Lehman
  fingerprints as node labels, explicit hydrogens, ``h <- relu(W h); h <- h + A h`` per layer, sum pooling),
  averaged over the molecules of each ATC3 class; scores ``sigmoid(q . e_m)`` refined by a residual linear layer
  and LayerNorm;
* local: a bipartite (BRICS substructure -> medication) masked linear layer without bias on ``sigmoid(W q)``.

Logits = product of the two. Loss: BCE + margin + DDI term with the released training script's linear schedule
``beta = min(0, 1 + (target_ddi - rate) / kp)`` above the target (``ddi_beta: linear_min``, default); the paper's
``max(0, ...)`` is ``ddi_beta: linear``.

Drug resources (MoleRec ``idx2SMILES`` and the 491 BRICS substructures, MIT, see
``recbole_ext/resources/drug_maps/molerec/``) are read once at construction; the dataset's ``med_tokens`` must be
ATC3 codes. Deviation: the molecular embeddings are recomputed in every forward pass (trained end to end), whereas
the released code computes them once in ``__init__``; medications without SMILES get a zero molecular embedding.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.errors import UserError
from recbole_ext.models.medrec.base import DiagProcHistory, MedRecModel
from recbole_ext.models.layers.graph import graph_product
from recbole_ext.options import AT_LEAST_ONE
from recbole_ext.options import config_value
from recbole_ext.utils.cache import cache_dir
from recbole_ext.utils.io import atomic_file
from recbole_ext.utils.paths import RESOURCES_DIR

MOLEREC_DIR = RESOURCES_DIR / "drug_maps" / "molerec"


def load_drug_resources(folder: Path = MOLEREC_DIR) -> tuple[dict[str, list[str]], list[str]]:
    """``(ATC3 -> SMILES list, BRICS substructure SMILES list)``, validated."""
    smiles_path, sub_path = folder / "atc3_to_smiles.json", folder / "substructure_smiles.json"
    try:
        atc_smiles = json.loads(smiles_path.read_text())
        subs = json.loads(sub_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the bundled drug resources (MoleRec SMILES) in {folder}: {exc}",
                        fix="reinstall recbole-ext or restore recbole_ext/resources/drug_maps/molerec/") from exc
    if not isinstance(atc_smiles, dict) or not all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                                   for v in atc_smiles.values()):
        raise UserError(f"{smiles_path} must map ATC3 codes to lists of SMILES strings", fix="restore the file")
    if not isinstance(subs, list) or not all(isinstance(s, str) for s in subs):
        raise UserError(f"{sub_path} must be a list of SMILES strings", fix="restore the file")
    return atc_smiles, subs


def medication_tokens(dataset, n_med: int, model: str = "SafeDrug") -> list[str]:
    tokens = getattr(dataset, "med_tokens", None)
    if tokens is None:
        raise UserError(f"{model} needs the dataset's medication codes (med_tokens)", fix="use a medrec dataset")
    tokens = [str(t) for t in tokens]
    if len(tokens) == n_med + 1:  # RecBole style: row 0 is [PAD]
        tokens = tokens[1:]
    if len(tokens) != n_med:
        raise UserError(f"med_tokens has {len(tokens)} entries for {n_med} medications", fix="re-prepare the dataset")
    return tokens


def require_rdkit(model: str) -> None:
    """RDKit is an optional extra: say how to get it, no traceback."""
    import importlib.util

    if importlib.util.find_spec("rdkit") is None:
        raise UserError(f"{model} needs RDKit for its molecular encoder, and it is not installed",
                        fix='pip install -e ".[mol]"  (or pip install rdkit)')


def medication_smiles(dataset, n_med: int, model: str) -> tuple[list[list[str]], list[str]]:
    """``(SMILES list of each medication in id order, BRICS substructure SMILES)`` from the bundled MoleRec map;
    a medication without SMILES gets ``[]`` (warning), a dataset without any is a ``UserError``."""
    atc_smiles, substructures = load_drug_resources()
    tokens = medication_tokens(dataset, n_med, model)
    smiles_lists = [atc_smiles.get(t, []) for t in tokens]
    missing = [t for t, s in zip(tokens, smiles_lists) if not s]
    if len(missing) == len(tokens):
        raise UserError("no medication of this dataset has SMILES in the bundled MoleRec map",
                        fix=f"{model} needs ATC level-3 medication codes (e.g. N02B)")
    if missing:
        warnings.warn(f"{model}: {len(missing)} medications have no SMILES (zero molecular embedding): "
                      f"{', '.join(missing[:5])}")
    return smiles_lists, substructures


def molecule_graphs(smiles_lists: list[list[str]]):
    """Atom-level graphs of every molecule: fingerprint ids, sparse block-diagonal adjacency, atom->molecule,
    molecule->medication averaging matrix."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    fingerprint_ids: dict = {}
    atom_fp, atom_mol, edges_i, edges_j, mol_med = [], [], [], [], []
    n_atoms = 0
    for med, smiles_list in enumerate(smiles_lists):
        for smiles in smiles_list:
            mol = Chem.MolFromSmiles(smiles)
            if mol is None:
                continue
            mol = Chem.AddHs(mol)
            labels = [a.GetSymbol() + (":aromatic" if a.GetIsAromatic() else "") for a in mol.GetAtoms()]
            neighbours = [[] for _ in labels]
            for bond in mol.GetBonds():
                i, j, kind = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), str(bond.GetBondType())
                neighbours[i].append((labels[j], kind))
                neighbours[j].append((labels[i], kind))
                edges_i += [n_atoms + i, n_atoms + j]
                edges_j += [n_atoms + j, n_atoms + i]
            mol_index = len(mol_med)
            for label, nbrs in zip(labels, neighbours):
                key = (label, tuple(sorted(nbrs))) if len(labels) > 1 else label
                atom_fp.append(fingerprint_ids.setdefault(key, len(fingerprint_ids)))
                atom_mol.append(mol_index)
            mol_med.append(med)
            n_atoms += len(labels)
    adj = torch.sparse_coo_tensor(torch.tensor([edges_i, edges_j], dtype=torch.long),
                                  torch.ones(len(edges_i)), (n_atoms, n_atoms),
                                  check_invariants=True).coalesce()
    mol_med = np.asarray(mol_med, np.int64)
    counts = np.bincount(mol_med, minlength=len(smiles_lists)).astype(np.float32)
    average = torch.zeros(len(smiles_lists), len(mol_med))
    average[torch.from_numpy(mol_med), torch.arange(len(mol_med))] = torch.from_numpy(1.0 / counts[mol_med])
    return (torch.tensor(atom_fp), adj, torch.tensor(atom_mol), average, len(fingerprint_ids))


def cached_substructure_mask(smiles_lists: list[list[str]], substructures: list[str]) -> torch.Tensor:
    """``substructure_mask`` cached on disk (BRICS decomposition takes seconds), keyed by its inputs' content."""
    key = hashlib.sha256(json.dumps([smiles_lists, substructures]).encode()).hexdigest()[:32]
    path = cache_dir("safedrug") / f"brics-mask-{key}.npy"
    expected = (len(smiles_lists), len(substructures))
    if path.exists():
        mask = np.load(path, allow_pickle=False)
        if mask.shape == expected and np.isin(mask, (0.0, 1.0)).all():
            return torch.from_numpy(mask.astype(np.float32))
    mask = substructure_mask(smiles_lists, substructures)
    with atomic_file(path, "wb") as fh:
        np.save(fh, mask.numpy())
    return mask


def substructure_mask(smiles_lists: list[list[str]], substructures: list[str]) -> torch.Tensor:
    """``[n_med, n_sub]`` 1 where a BRICS fragment of one of the medication's molecules is a listed substructure."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import BRICS

    RDLogger.DisableLog("rdApp.*")
    index = {s: i for i, s in enumerate(substructures)}
    mask = torch.zeros(len(smiles_lists), len(substructures))
    for med, smiles_list in enumerate(smiles_lists):
        for smiles in smiles_list:
            mol = Chem.MolFromSmiles(smiles)
            if mol is None:
                continue
            for fragment in BRICS.BRICSDecompose(mol):
                if fragment in index:
                    mask[med, index[fragment]] = 1.0
    return mask


class MolecularEncoder(nn.Module):
    def __init__(self, atom_fp, adj, atom_mol, average, n_fingerprints, dim, n_layers=2):
        super().__init__()
        self.register_buffer("atom_fp", atom_fp, persistent=False)
        self.register_buffer("adj", adj, persistent=False)
        self.register_buffer("atom_mol", atom_mol, persistent=False)
        self.register_buffer("average", average, persistent=False)
        self.fingerprint_emb = nn.Embedding(max(n_fingerprints, 1), dim)
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))

    def forward(self) -> torch.Tensor:
        h = self.fingerprint_emb(self.atom_fp)
        for layer in self.layers:
            h = torch.relu(layer(h))
            h = h + graph_product(self.adj, h, torch.sparse.mm)
        mol = h.new_zeros(self.average.shape[1], h.shape[1]).index_add_(0, self.atom_mol, h)
        return self.average @ mol                                              # [n_med, d]


class SafeDrug(MedRecModel):
    paper = "Yang et al., SafeDrug (IJCAI 2021)"
    year = 2021
    uses = "diagnoses, procedures, past medications, molecules (RDKit), DDI graph"
    parity = ("logits, loss + every gradient, atom fingerprints = float64 transcription of the official code "
              "(`test_medrec_official_parity.py`)")
    option_bounds = {"mpnn_layers": AT_LEAST_ONE}

    def __init__(self, config, dataset):
        require_rdkit("SafeDrug")
        super().__init__(config, dataset)
        d = self.embedding_size
        smiles_lists, substructures = medication_smiles(dataset, self.n_med, "SafeDrug")
        self.history = DiagProcHistory(self.n_diag, self.n_proc, d, d, float(config_value(config, "dropout_prob", 0.5)),
                                       code_dropout=True)  # as published: dropout on each code embedding
        self.query = nn.Sequential(nn.ReLU(), nn.Linear(2 * d, d))
        self.molecules = MolecularEncoder(*molecule_graphs(smiles_lists), d,
                                          int(config_value(config, "mpnn_layers", 2)))
        self.mpnn_output = nn.Linear(self.n_med, self.n_med)
        self.mpnn_norm = nn.LayerNorm(self.n_med)
        mask = cached_substructure_mask(smiles_lists, substructures)
        self.register_buffer("sub_mask", mask, persistent=False)
        self.bipartite_transform = nn.Linear(d, len(substructures))
        # the published MaskLinear: weight [n_sub, n_med] drawn from +-1/sqrt(n_med), no bias
        self.bipartite_weight = nn.Parameter(torch.empty(len(substructures), self.n_med))
        bound = 1.0 / np.sqrt(self.n_med)
        nn.init.uniform_(self.bipartite_weight, -bound, bound)

    def forward(self, batch: VisitBatch) -> torch.Tensor:
        q = self.query(self.history(batch))                                     # [P, T, d]
        match = torch.sigmoid(q @ self.molecules().T)                            # [P, T, M]
        mpnn_att = self.mpnn_norm(match + self.mpnn_output(match))
        local = torch.sigmoid(self.bipartite_transform(q))                       # [P, T, n_sub]
        bipartite = local @ (self.bipartite_weight * self.sub_mask.T)
        return bipartite * mpnn_att
