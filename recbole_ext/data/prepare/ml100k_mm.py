"""``ml-100k-mm``: a real multimodal dataset built from the MovieLens-100K copy that ships inside RecBole's wheel.

Nothing is downloaded and nothing of MovieLens is redistributed by this repository (GroupLens' licence asks for
permission to redistribute): the dataset is derived on this machine from ``recbole/dataset_example/ml-100k``, by an
explicit ``python run.py prepare ml-100k-mm`` or automatically on the first run that names it (then kept in the
derived cache, keyed by the source files' hashes, the build options and the text encoder).

The build follows MMRec's preprocessing (``mm_build``): every rating is an interaction (MMRec keeps all ratings),
exact (user, item, timestamp) repeats dropped, 5-core on users and items, first-appearance reindex, MMRec's per-user
random split with a fixed seed. The two modalities:

* text (``text_feat.npy``, 384-d): the sentence "<title> (<release year>). Genres: <g1>, <g2>." of each movie,
  encoded by all-MiniLM-L6-v2 (``recbole_ext.data.features``, the optional ``features`` extra);
* the second modality sits in the image slot (``image_feat.npy``) but is NOT an image: the movie's 19 genre
  indicators (0/1), an honest non-visual stand-in, since MovieLens has no images. Models that project "image"
  features therefore learn from the genre vector.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_ext.data.mmrec_format import MANIFEST_NAME
from recbole_ext.data.prepare import mm_build as mb
from recbole_ext.errors import UserError
from recbole_ext.utils.argparsing import CommandParser
from recbole_ext.utils.hashing import file_sha256, json_sha256
from recbole_ext.utils.io import exclusive_lock, refuse_existing
from recbole_ext.utils.paths import check_dataset_name, dataset_root

logger = logging.getLogger(__name__)

NAME = "ml-100k-mm"
BUILD_VERSION = 1  # bump when the recipe changes: it is part of the cache key
SPLIT_SEED = 2023
MIN_USER = MIN_ITEM = 5
# The 19 genre indicators of MovieLens-100K (u.genre), in its order; RecBole's .item lists them as tokens.
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


def recbole_ml100k_folder() -> Path:
    """RecBole's bundled ml-100k folder (inside the installed package)."""
    spec = importlib.util.find_spec("recbole")
    folder = Path(spec.origin).parent / "dataset_example" / "ml-100k" if spec and spec.origin else None
    if folder is None or not (folder / "ml-100k.inter").is_file() or not (folder / "ml-100k.item").is_file():
        raise UserError(f"RecBole's bundled ml-100k is not found (looked in {folder})",
                        fix="reinstall recbole==1.2.1, whose wheel ships dataset_example/ml-100k")
    return folder


def _read_atomic(path: Path, columns: dict[str, str]) -> pd.DataFrame:
    """Read the named RecBole atomic columns (header ``name:type``) as strings, checked for presence."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}", fix="reinstall recbole==1.2.1")
    return frame[list(columns)].rename(columns=columns)


def read_ml100k(folder: Path) -> tuple[mb.InteractionTable, pd.DataFrame]:
    inter = _read_atomic(folder / "ml-100k.inter", {"user_id": "user", "item_id": "item", "rating": "rating",
                                                    "timestamp": "timestamp"})
    numbers = inter[["rating", "timestamp"]].apply(pd.to_numeric, errors="coerce")
    if numbers.isna().any().any() or (inter[["user", "item"]] == "").any().any():
        raise UserError(f"{folder / 'ml-100k.inter'} holds empty or non-numeric cells", fix="reinstall recbole==1.2.1")
    table = mb.InteractionTable.from_tokens(inter["user"], inter["item"], rating=numbers["rating"],
                                            timestamp=numbers["timestamp"])
    items = _read_atomic(folder / "ml-100k.item", {"item_id": "item", "movie_title": "title",
                                                   "release_year": "year", "class": "genres"})
    if items["item"].duplicated().any():
        raise UserError(f"{folder / 'ml-100k.item'} lists an item twice", fix="reinstall recbole==1.2.1")
    return table, items.set_index("item")


def movie_sentence(title: str, year: str, genres: list[str]) -> str:
    """The text encoded for a movie: "<title> (<year>). Genres: <g1>, <g2>." (year and genres omitted when absent)."""
    text = title.strip()
    if year.strip():
        text += f" ({year.strip()})"
    text += "."
    if genres:
        text += " Genres: " + ", ".join(genres) + "."
    return text


def genre_matrix(genre_lists: list[list[str]]) -> tuple[np.ndarray, int]:
    """[items, 19] 0/1 genre indicators; returns the matrix and how many genre tokens were not recognised."""
    column = {g: j for j, g in enumerate(GENRES)}
    matrix = np.zeros((len(genre_lists), len(GENRES)), dtype=np.float32)
    unknown = 0
    for row, genres in enumerate(genre_lists):
        for genre in genres:
            if genre in column:
                matrix[row, column[genre]] = 1.0
            else:
                unknown += 1
    return matrix, unknown


def build(target: Path, name: str = NAME, *, seed: int = SPLIT_SEED, overwrite: bool = False, device: str = "cpu",
          progress: bool | None = None) -> dict:
    """Build the dataset into ``target`` (atomically); returns the manifest."""
    from recbole_ext.data.features import encode_texts, text_encoder_info  # the optional extra: imported on use

    folder = recbole_ml100k_folder()
    table, items = read_ml100k(folder)
    log = mb.PrepLog()
    log.record("read", table, source=str(folder))
    table = mb.drop_duplicates(table, log, "timestamp")
    table = mb.kcore_filter(table, log, MIN_USER, MIN_ITEM)
    table = mb.reindex(table)
    x_label = mb.assign_split(table, "mmrec", seed=seed, log=log)

    unknown_items = [tok for tok in table.item_tokens if tok not in items.index]
    if unknown_items:
        raise UserError(f"{len(unknown_items)} rated item(s) have no row in ml-100k.item (e.g. {unknown_items[0]})",
                        fix="reinstall recbole==1.2.1")
    meta = items.loc[list(table.item_tokens)]
    genre_lists = [g.split() for g in meta["genres"]]
    sentences = [movie_sentence(t, y, g) for t, y, g in zip(meta["title"], meta["year"], genre_lists)]
    genres, unknown_genres = genre_matrix(genre_lists)
    log.count("items_without_genre", int((genres.sum(axis=1) == 0).sum()))
    log.count("unrecognised_genre_tokens", unknown_genres)
    text = encode_texts(sentences, device=device, progress=progress)
    options = {"seed": seed, "split": "mmrec", "dedupe": "timestamp", "min_user": MIN_USER, "min_item": MIN_ITEM,
               "build_version": BUILD_VERSION, "image_slot": "genre indicators (not an image)",
               "text": "'<title> (<year>). Genres: <g1>, <g2>.' through all-MiniLM-L6-v2"}
    return mb.write_prepared(Path(target), name, table, x_label, {"image": genres, "text": text}, log=log,
                             options=options, overwrite=overwrite,
                             inputs={"interactions": folder / "ml-100k.inter",
                                                      "items": folder / "ml-100k.item"},
                             source="MovieLens-100K as shipped in RecBole's wheel (recbole/dataset_example/ml-100k)",
                             encoders={"text": text_encoder_info(), "image": {"name": "genre indicators",
                                                                               "dim": len(GENRES)}})


def cache_key() -> str:
    """Content hash of everything the build reads or decides: source files, recipe version, the text encoder."""
    from recbole_ext.data.features import text_encoder_info

    folder = recbole_ml100k_folder()
    identity = {"build_version": BUILD_VERSION, "seed": SPLIT_SEED, "encoder": text_encoder_info(),
                "inter": file_sha256(folder / "ml-100k.inter"), "item": file_sha256(folder / "ml-100k.item")}
    return json_sha256(identity)


def cached_build() -> Path:
    """The dataset as a derived-cache entry, built on first use; what a run of ``--dataset=ml-100k-mm`` reads when
    no prepared folder of that name exists."""
    from recbole_ext.utils.cache import cache_dir

    entry = cache_dir("derived") / f"{NAME}-{cache_key()[:32]}"
    if (entry / MANIFEST_NAME).is_file():
        logger.info(f"{NAME} is read from {entry} (built earlier from RecBole's ml-100k)")
        return entry
    # several processes may need it at once (a leaderboard's workers): one builds, the others wait and read it
    with exclusive_lock(cache_dir("locks") / f"{entry.name}.lock"):
        if (entry / MANIFEST_NAME).is_file():
            logger.info(f"{NAME} is read from {entry} (built by another process meanwhile)")
            return entry
        logger.info(f"building {NAME} from RecBole's ml-100k into {entry} (once; about a minute on a CPU)")
        build(entry, overwrite=True)  # an entry without a manifest is damaged: replace it
    return entry


def main(argv: list[str]) -> int:
    parser = CommandParser(prog="run.py prepare ml-100k-mm",
                           description="Build the multimodal ml-100k-mm dataset (movie-title text and genre vectors) "
                                       "from the MovieLens-100K copy inside RecBole; needs the features extra.")
    parser.add_argument("--name", default=NAME, help="dataset name to create under the dataset root")
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="seed of MMRec's per-user random split")
    parser.add_argument("--device", default="cpu", help="device of the text encoder (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    args = parser.parse_args(argv)
    check_dataset_name(args.name, NAME)
    target = dataset_root() / args.name
    refuse_existing(target, args.overwrite)  # before the encoding, not after it
    manifest = build(target, args.name, seed=args.seed, overwrite=args.overwrite, device=args.device)
    s = manifest["splits"]
    print(f"prepared {target}: {s['n_users']} users, {manifest['n_items']} items, {s['n_interactions']} interactions "
          f"(train {s['n_train']}, valid {s['n_valid']}, test {s['n_test']}); text 384-d (all-MiniLM-L6-v2), "
          f"image slot = {len(GENRES)} genre indicators")
    return 0
