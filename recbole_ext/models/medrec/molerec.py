"""MoleRec: Combinatorial Drug Recommendation with Substructure-Aware Molecular Representation Learning.

Reference: Nianzu Yang, Kaipeng Zeng, Qitian Wu, Junchi Yan. WWW 2023. Written from the official code (MIT,
``yangnianzu0515/MoleRec``: ``src/modules/MoleRec.py``, ``SetTransformer.py``, ``gnn/``, ``training.py``,
``main.py``), not copied. For visit t of a patient, with d = ``embedding_size``:

* patient: ``h_t = [GRU_d(sum_c drop(e_c)); GRU_p(sum_c drop(e_c))]`` over the visits' diagnosis / procedure
  codes (dropout on each code embedding, then the sum); the official ``[hidden; last output]`` is the same vector
  twice, so ``q_t = W_q relu([h_t; h_t]) + b_q`` (4d -> d);
* substructure relevance ``w_t = sigmoid(W_r q_t + b_r)`` (one weight per BRICS substructure s);
* molecules: ``g_m = mean over the SMILES of medication m of GIN(molecule)``; substructures:
  ``S = SAB(GIN(substructure))`` (or a free table, ``substructure_encoder: embedding``);
* substructure-aware attention: ``a_ms = softmax_s((W_Q g_m)(W_K S_s)^T / sqrt(d))`` restricted to the
  substructures of medication m (BRICS mask ``H``; masked entries set to ``-2^32``), then
  ``x_tm = sum_s a_ms w_ts S_s`` (``Attn @ diag(w) @ S``);
* logit ``y_tm = W_2 relu(W_1 x_tm + b_1) + b_2`` (d -> d/2 -> 1).

GIN (OGB's ``GNN_node``, ``virtual_node: False``, ``JK: last``, mean pooling): ``h^0 = sum_f E_f[x_f]`` (9 atom
features), per layer ``h' = BN(MLP((1 + eps) h_v + sum_{u->v} relu(h_u + sum_f B_f[b_f])))`` with
``MLP = Linear(d, 2d), BN, ReLU, Linear(2d, d)``, ReLU on every layer but the last, dropout ``dropout_prob``.
SAB (the official Set Transformer variant): ``O = LN_2(W_O LN_1(Q + softmax(Q K^T / sqrt(d / h)) V))`` with
``h = sab_heads`` heads and no residual after ``W_O``.

Loss: the shared DDI-controlled loss of ``base.py`` (0.95 BCE + 0.05 margin loss on probabilities;
``beta = min(exp(2.5 (1 - rate / 0.06)), 1)`` above the target; DDI term ``0.0005 sum_ij p_i p_j A_ij``), exactly
the official ``training.py`` schedule.

Featurisation: ``ogb`` is not a dependency; ``ogb_graph`` below reproduces OGB's ``smiles2graph`` with RDKit
(OGB 1.3.x ``ogb/utils/features.py`` lists: atomic number 1..118, chirality tag, total degree 0..10, formal charge
-5..5, total H 0..8, radical electrons 0..4, hybridisation SP..SP3D2, aromatic, in ring; bond type, stereo,
conjugated; a value outside a list takes its last, "misc" index).

Deviations from the official code (see docs/medication-models.md): one optimiser step per batch of patients and
the molecule/substructure GIN run once per forward pass (once per visit upstream), so the GIN dropout mask and the
BatchNorm running-statistics update are shared by the visits of a batch; the substructures are those of the
bundled 491 whose BRICS mask column is non-zero for this dataset's medications (upstream builds the list from the
dataset's own medications, the same set on MIMIC-III); a medication without SMILES gets a zero molecular embedding
(upstream needs SMILES for every medication).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.errors import UserError
from recbole_ext.models.medrec.base import DiagProcHistory, MedRecModel
from recbole_ext.models.medrec.safedrug import cached_substructure_mask, medication_smiles, require_rdkit
from recbole_ext.options import AT_LEAST_ONE, DROPOUT, Bounds, check_choice, config_value

# OGB's allowable feature values (ogb/utils/features.py); the last entry of each list is its "misc" slot.
ATOM_FEATURES = (
    ("atomic_num", list(range(1, 119)) + ["misc"]),
    ("chirality", ["CHI_UNSPECIFIED", "CHI_TETRAHEDRAL_CW", "CHI_TETRAHEDRAL_CCW", "CHI_OTHER", "misc"]),
    ("total_degree", list(range(11)) + ["misc"]),
    ("formal_charge", list(range(-5, 6)) + ["misc"]),
    ("total_num_hs", list(range(9)) + ["misc"]),
    ("radical_electrons", list(range(5)) + ["misc"]),
    ("hybridization", ["SP", "SP2", "SP3", "SP3D", "SP3D2", "misc"]),
    ("aromatic", [False, True]),
    ("in_ring", [False, True]),
)
BOND_FEATURES = (
    ("bond_type", ["SINGLE", "DOUBLE", "TRIPLE", "AROMATIC", "misc"]),
    ("stereo", ["STEREONONE", "STEREOZ", "STEREOE", "STEREOCIS", "STEREOTRANS", "STEREOANY"]),
    ("conjugated", [False, True]),
)
MASKED_SCORE = -float(1 << 32)  # the official masked_fill value: a medication without substructures attends evenly


def _slot(values: list, value) -> int:
    return values.index(value) if value in values else len(values) - 1


def atom_features(atom) -> list[int]:
    raw = (atom.GetAtomicNum(), str(atom.GetChiralTag()), atom.GetTotalDegree(), atom.GetFormalCharge(),
           atom.GetTotalNumHs(), atom.GetNumRadicalElectrons(), str(atom.GetHybridization()), atom.GetIsAromatic(),
           atom.IsInRing())
    return [_slot(values, v) for (_, values), v in zip(ATOM_FEATURES, raw)]


def bond_features(bond) -> list[int]:
    raw = (str(bond.GetBondType()), str(bond.GetStereo()), bond.GetIsConjugated())
    return [_slot(values, v) for (_, values), v in zip(BOND_FEATURES, raw)]


def ogb_graph(smiles_list: list[str]) -> dict[str, torch.Tensor]:
    """One batch of OGB-featurised graphs (no explicit hydrogens, both directions of every bond): ``x [atoms, 9]``,
    ``edge_index [2, 2 * bonds]`` (row 0 source, row 1 target), ``edge_attr [2 * bonds, 3]``, ``graph [atoms]``.
    A SMILES RDKit cannot parse is an empty graph (mean-pooled to zero)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    x, src, dst, edge_attr, graph = [], [], [], [], []
    for g, smiles in enumerate(smiles_list):
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            continue
        offset = len(x)
        x += [atom_features(a) for a in mol.GetAtoms()]
        graph += [g] * mol.GetNumAtoms()
        for bond in mol.GetBonds():
            i, j = offset + bond.GetBeginAtomIdx(), offset + bond.GetEndAtomIdx()
            src += [i, j]
            dst += [j, i]
            edge_attr += [bond_features(bond)] * 2
    return {"x": torch.tensor(x, dtype=torch.long).reshape(-1, len(ATOM_FEATURES)),
            "edge_index": torch.tensor([src, dst], dtype=torch.long).reshape(2, -1),
            "edge_attr": torch.tensor(edge_attr, dtype=torch.long).reshape(-1, len(BOND_FEATURES)),
            "graph": torch.tensor(graph, dtype=torch.long), "n_graphs": len(smiles_list)}


class FeatureEmbedding(nn.Module):
    """OGB's Atom/BondEncoder: one xavier-initialised table per categorical feature, embeddings summed."""

    def __init__(self, features, dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(len(values), dim) for _, values in features)
        for table in self.tables:
            nn.init.xavier_uniform_(table.weight)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return sum(table(codes[:, f]) for f, table in enumerate(self.tables))


class GINLayer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.bond_emb = FeatureEmbedding(BOND_FEATURES, dim)
        self.eps = nn.Parameter(torch.zeros(1))
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.BatchNorm1d(2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, h, edge_index, edge_attr):
        message = torch.relu(h[edge_index[0]] + self.bond_emb(edge_attr))
        # in the message dtype: under bf16 autocast h comes out of the MLP in bfloat16, the bond embedding in float32
        incoming = message.new_zeros(h.shape).index_add_(0, edge_index[1], message)
        return self.mlp((1 + self.eps) * h + incoming)


class MoleculeGIN(nn.Module):
    """OGB-style GIN over a fixed batch of molecular graphs (held as buffers), mean-pooled per graph."""

    def __init__(self, graphs: dict, dim: int, n_layers: int, dropout: float):
        super().__init__()
        for name in ("x", "edge_index", "edge_attr", "graph"):
            self.register_buffer(name, graphs[name], persistent=False)
        size = torch.zeros(graphs["n_graphs"]).index_add_(0, graphs["graph"], torch.ones(len(graphs["graph"])))
        self.register_buffer("size", size.clamp(min=1), persistent=False)  # atom counts: exact in any precision
        self.atom_emb = FeatureEmbedding(ATOM_FEATURES, dim)
        self.layers = nn.ModuleList(GINLayer(dim) for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(dim) for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> torch.Tensor:
        h = self.atom_emb(self.x)
        for k, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            h = norm(layer(h, self.edge_index, self.edge_attr))
            h = self.dropout(h if k == len(self.layers) - 1 else torch.relu(h))
        pooled = h.new_zeros(len(self.size), h.shape[1]).index_add_(0, self.graph, h)
        return pooled / self.size.unsqueeze(1)                                 # [graphs, d]


class SetAttention(nn.Module):
    """The official SAB = MAB(X, X): multi-head attention with the query added back, LayerNorm, output map,
    LayerNorm (no residual after the output map)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                       # [n, d] -> [n, d]
        n, d = x.shape
        q, k, v = (f(x).reshape(n, self.heads, d // self.heads).transpose(0, 1) for f in (self.q, self.k, self.v))
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d // self.heads), dim=-1)
        o = (q + attn @ v).transpose(0, 1).reshape(n, d)
        return self.norm2(self.out(self.norm1(o)))


class MoleRec(MedRecModel):
    paper = "Yang et al., MoleRec (WWW 2023)"
    year = 2023
    uses = "diagnoses, procedures, past medications, molecular substructures (RDKit), DDI graph"
    parity = "loss + every gradient = float64 transcription of the official code (`test_medrec_molerec.py`)"
    option_bounds = {"gnn_layers": Bounds(2), "sab_heads": AT_LEAST_ONE, "dropout_prob": DROPOUT}

    def __init__(self, config, dataset):
        require_rdkit("MoleRec")
        super().__init__(config, dataset)
        d = self.embedding_size
        heads = int(config_value(config, "sab_heads", 2))
        if d % heads:
            raise UserError(f"MoleRec: embedding_size {d} is not divisible by sab_heads {heads}",
                            fix="pick sab_heads dividing embedding_size (default 2)")
        dropout = float(config_value(config, "dropout_prob", 0.7))
        n_layers = int(config_value(config, "gnn_layers", 4))
        encoder = check_choice("substructure_encoder", config_value(config, "substructure_encoder", "gnn"),
                               ("gnn", "embedding"))
        smiles_lists, substructures = medication_smiles(dataset, self.n_med, "MoleRec")
        mask = cached_substructure_mask(smiles_lists, substructures)
        used = mask.sum(0) > 0
        substructures = [s for s, keep in zip(substructures, used.tolist()) if keep]
        self.register_buffer("sub_mask", mask[:, used], persistent=False)      # [n_med, n_sub]
        n_sub = len(substructures)

        self.history = DiagProcHistory(self.n_diag, self.n_proc, d, d, dropout, code_dropout=True)
        self.query = nn.Sequential(nn.ReLU(), nn.Linear(4 * d, d))
        self.substructure_relation = nn.Linear(d, n_sub)
        molecules = [s for smiles in smiles_lists for s in smiles]
        owner = torch.tensor([m for m, smiles in enumerate(smiles_lists) for _ in smiles], dtype=torch.long)
        self.molecule_gin = MoleculeGIN(ogb_graph(molecules), d, n_layers, dropout)
        # mean over each medication's parseable molecules (upstream's average_projection), as 0/1 rows and counts
        parsed = torch.zeros(len(molecules), dtype=torch.bool)
        parsed[self.molecule_gin.graph] = True
        member = torch.zeros(self.n_med, len(molecules))
        member[owner[parsed], torch.arange(len(molecules))[parsed]] = 1.0
        self.register_buffer("molecule_member", member, persistent=False)
        self.register_buffer("molecule_count", member.sum(1, keepdim=True).clamp(min=1), persistent=False)
        if encoder == "gnn":
            self.substructure_gin = MoleculeGIN(ogb_graph(substructures), d, n_layers, dropout)
        else:
            self.substructure_table = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_sub, d)))
        self.sab = SetAttention(d, heads)
        self.attn_query, self.attn_key = nn.Linear(d, d), nn.Linear(d, d)
        self.score = nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Linear(d // 2, 1))

    def substructure_embeddings(self) -> torch.Tensor:
        table = self.substructure_gin() if hasattr(self, "substructure_gin") else self.substructure_table
        return self.sab(table)                                                  # [n_sub, d]

    def forward(self, batch: VisitBatch) -> torch.Tensor:
        h = self.history(batch)                                                 # [P, T, 2d]
        relevance = torch.sigmoid(self.substructure_relation(self.query(torch.cat([h, h], -1))))  # [P, T, n_sub]
        drugs = self.molecule_member @ self.molecule_gin() / self.molecule_count  # [n_med, d]
        subs = self.substructure_embeddings()
        scores = self.attn_query(drugs) @ self.attn_key(subs).T / math.sqrt(drugs.shape[1])
        attn = torch.softmax(scores.masked_fill(self.sub_mask == 0, MASKED_SCORE), dim=-1)  # [n_med, n_sub]
        mixed = attn @ (relevance.unsqueeze(-1) * subs)                        # [P, T, n_med, d]
        return self.score(mixed).squeeze(-1)
