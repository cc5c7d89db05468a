"""``prepare mmrec``: convert an MMRec data folder (Baby, Sports, Clothing, ...) into a recbole-ext dataset.

MMRec (Zhou et al., "A Comprehensive Survey on Multimodal Recommender Systems", and github.com/enoche/MMRec)
publishes each dataset as a folder ``<name>/`` with ``<name>.inter`` (TSV: userID itemID rating timestamp x_label),
``image_feat.npy`` (4096-d CNN features, row = itemID) and ``text_feat.npy`` (384-d Sentence-Transformers features).
The output layout is documented in :mod:`recbole_ext.data.mmrec_format`. Every input is validated first; a failure
leaves nothing behind (the folder is written through ``atomic_dir``).
"""
from __future__ import annotations

import logging
from pathlib import Path

from recbole_ext.data.mmrec_format import (DEFAULT_FEATURE_FILES, MODALITIES, check_finite_rows, open_feature_matrix,
                                        read_mmrec_inter, write_mm_folder)
from recbole_ext.errors import UserError
from recbole_ext.utils.argparsing import CommandParser
from recbole_ext.utils.hashing import file_sha256
from recbole_ext.utils.io import atomic_dir, refuse_existing
from recbole_ext.utils.paths import check_dataset_name, dataset_root

logger = logging.getLogger(__name__)

MMREC_DATA_URL = "https://drive.google.com/drive/folders/13cBy1EA_saTUuXxVllKgtfci2A09jyaG"
MMREC_DATA_README = "https://github.com/enoche/MMRec/tree/master/data"


def find_inter_file(src: Path, name: str) -> Path:
    for candidate in (src / f"{name}.inter", src / f"{src.name}.inter"):
        if candidate.is_file():
            return candidate
    found = sorted(src.glob("*.inter"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"no .inter file in {src}", fix=f"--src must be an MMRec data folder holding {name}.inter, "
                                                       "image_feat.npy and text_feat.npy")
    raise UserError(f"{src} holds several .inter files ({', '.join(p.name for p in found)}) and none is {name}.inter",
                    fix="pass --name matching the one to convert")


def convert_mmrec_folder(src: str | Path, target: str | Path, name: str, overwrite: bool = False) -> dict:
    """Validate ``src`` and write the prepared dataset to ``target``; returns the manifest."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise UserError(f"MMRec folder {src} does not exist",
                        fix=f"download it from {MMREC_DATA_URL} (see {MMREC_DATA_README}) and pass its path as --src")
    target = Path(target)
    refuse_existing(target, overwrite)
    inter_path = find_inter_file(src, name)
    inter = read_mmrec_inter(inter_path)
    n_items = int(inter["itemID"].max()) + 1  # MMRec's own item count: ids are row indices of the features

    features = {}
    for modality in MODALITIES:
        path = src / DEFAULT_FEATURE_FILES[modality]
        arr = open_feature_matrix(path, modality=modality)
        if arr.shape[0] != n_items:
            raise UserError(f"{path} has {arr.shape[0]} rows but {inter_path.name} uses item ids 0..{n_items - 1} "
                            f"({n_items} items); the feature row count must equal the item count",
                            fix="use the feature files shipped in the same MMRec folder as the .inter file")
        check_finite_rows(arr, path)
        features[modality] = arr
    provenance = {"source": "MMRec data folder", "src": str(src.resolve()), "inter_file": inter_path.name,
                  "inter_sha256": file_sha256(inter_path),
                  "feature_sha256": {m: file_sha256(src / DEFAULT_FEATURE_FILES[m]) for m in MODALITIES},
                  "published_at": MMREC_DATA_URL}
    with atomic_dir(target, overwrite=overwrite) as tmp:
        manifest = write_mm_folder(tmp, name, inter, n_items, features, provenance)
    report = manifest["splits"]
    if report["duplicate_pairs_within_split"]:
        logger.warning("%s: %d duplicate (user, item) pairs inside a split; recbole-ext counts each positive item once",
                       inter_path, report["duplicate_pairs_within_split"])
    return manifest


def main_mmrec(argv: list[str]) -> int:
    parser = CommandParser(prog="run.py prepare mmrec",
                           description="Convert an MMRec data folder into a recbole-ext multimodal dataset.")
    parser.add_argument("--src", required=True, help="MMRec folder holding <name>.inter, image_feat.npy, text_feat.npy")
    parser.add_argument("--name", required=True, help="dataset name to create under the dataset root (e.g. baby)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset")
    args = parser.parse_args(argv)
    check_dataset_name(args.name, "baby")
    target = dataset_root() / args.name
    manifest = convert_mmrec_folder(args.src, target, args.name, overwrite=args.overwrite)
    s = manifest["splits"]
    dims = ", ".join(f"{m} {manifest['features'][m]['shape'][1]}-d" for m in MODALITIES)
    print(f"prepared {target}: {s['n_users']} users, {manifest['n_items']} items, {s['n_interactions']} interactions "
          f"(train {s['n_train']}, valid {s['n_valid']}, test {s['n_test']}); features {dims}")
    return 0
