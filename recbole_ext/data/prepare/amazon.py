"""``prepare amazon``: MMRec's published preprocessing of the raw Amazon review files into an MMRec folder.

MMRec (github.com/enoche/MMRec, ``preprocessing/``) builds its Baby / Sports / Clothing folders from McAuley et al.'s
Amazon files in four notebooks; this command runs the same chain on the raw files, streaming them:

1. read the interactions (reviews JSON lines or a ratings CSV; ``amazon_formats``), dropping rows without user,
   item or timestamp (``0rating2inter``);
2. drop rows repeating (user, item, timestamp), k-core filter users and items (5 and 5), renumber both in order
   of first appearance (``mm_build``);
3. split each user's rows at random into train / valid / test (``1splitting``; seeded here, unseeded in MMRec);
4. keep the meta records of the surviving items and build each item's sentence: title, brand, the first category
   path, description (``2reindex-feat``, ``3feat-encoder``), encoded with all-MiniLM-L6-v2 (384-d);
5. image features: the item's record of the 2014 ``image_features_<Cat>.b`` file (4096-d), or a CNN over
   ``<asin>.jpg`` files; items without one get the mean row and are listed in ``missed_img_itemIDs.csv``;
6. write the folder atomically with the id maps and a manifest (``mm_build.write_prepared``).

docs/data.md ("From raw Amazon files") lists every step, and every place where this follows MMRec or departs from it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recbole_ext.data import features as feature_encoders
from recbole_ext.data.prepare import amazon_formats as formats
from recbole_ext.data.prepare import mm_build
from recbole_ext.errors import UserError
from recbole_ext.utils.argparsing import CommandParser
from recbole_ext.utils.io import new_folders_removed_on, refuse_existing
from recbole_ext.utils.paths import check_dataset_name, dataset_root

MISSED_IMAGES_FILE = "missed_img_itemIDs.csv"  # MMRec's name: the item ids whose image row is the mean row
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
MISSING_TEXT_RULES = ("encode", "mean")
IMAGE_DUPLICATE_RULES = ("mmrec", "first")
DEFAULT_SEED = 2023
SOURCE = "raw Amazon review data (McAuley et al.) through MMRec's preprocessing (recbole-ext prepare amazon)"
_INPUT_FIX = "pass the Amazon files, e.g. --reviews reviews_Baby_5.json.gz --meta meta_Baby.json.gz " \
             "--image-features image_features_Baby.b"


@dataclass
class AmazonOptions:
    """Everything that decides the output; stored in the manifest as it is."""

    reviews: str
    meta: str
    image_features: str | None = None
    images: str | None = None
    split: str = "mmrec"
    seed: int = DEFAULT_SEED
    min_user: int = 5
    min_item: int = 5
    dedupe: str = "timestamp"
    min_rating: float | None = None
    require_meta: bool = False
    missing_text: str = "encode"
    image_duplicates: str = "mmrec"
    ratings_format: str = "auto"
    device: str = "cpu"


def _check_options(opts: AmazonOptions) -> None:
    if opts.image_features and opts.images:
        raise UserError("--image-features and --images both given", fix="pass one image source")
    if not opts.image_features and not opts.images:
        raise UserError("no image source: the MMRec protocol needs image and text features",
                        fix="pass --image-features image_features_<Category>.b (Amazon 2014) or --images DIR "
                            "(<asin>.jpg files)")
    for value, allowed, flag in ((opts.split, mm_build.SPLIT_METHODS, "--split"),
                                 (opts.dedupe, mm_build.DEDUPE_POLICIES, "--dedupe"),
                                 (opts.missing_text, MISSING_TEXT_RULES, "--missing-text"),
                                 (opts.image_duplicates, IMAGE_DUPLICATE_RULES, "--image-duplicates"),
                                 (opts.ratings_format, formats.RATINGS_FORMATS, "--ratings-format")):
        if value not in allowed:
            raise UserError(f"{flag} {value!r} is not one of {', '.join(allowed)}", fix=f"use {flag} {allowed[0]}")
    if opts.seed < 0:  # numpy's generators take non-negative seeds
        raise UserError(f"--seed {opts.seed} is negative", fix="use a seed >= 0")
    formats.require_file(opts.reviews, "reviews file", _INPUT_FIX)
    formats.require_file(opts.meta, "meta file", _INPUT_FIX)
    if opts.image_features:
        formats.require_file(opts.image_features, "image feature file", _INPUT_FIX)
    elif not Path(opts.images).expanduser().is_dir():
        raise UserError(f"image folder {opts.images} does not exist", fix="pass a folder of <asin>.jpg files")


def _items_with_meta(meta: Path, item_tokens) -> np.ndarray:
    wanted = {token: code for code, token in enumerate(item_tokens)}
    has_meta = np.zeros(len(item_tokens), dtype=bool)
    for code, _ in formats.iter_meta(meta, wanted):
        has_meta[code] = True
    return has_meta


def _no_meta_match(meta: Path, n_items: int) -> UserError:
    return UserError(f"{meta} describes none of the {n_items} items of the reviews",
                     fix="pass the meta file of the same category as the reviews (meta_<Category>.json.gz)")


def item_sentences(meta: Path, item_tokens, log: mm_build.PrepLog) -> tuple[list[str], np.ndarray]:
    """One sentence per item (MMRec's rule; '' for an item without a meta record) and which items had one. A
    repeated asin keeps its first record."""
    wanted = {token: code for code, token in enumerate(item_tokens)}
    sentences: list[str | None] = [None] * len(item_tokens)
    repeated = 0
    for code, record in formats.iter_meta(meta, wanted):
        if sentences[code] is None:
            sentences[code] = formats.item_sentence(record)
        else:
            repeated += 1
    has_meta = np.array([s is not None for s in sentences], dtype=bool)
    if not has_meta.any():
        raise _no_meta_match(meta, len(item_tokens))
    log.count("items_without_meta", int((~has_meta).sum()))
    log.count("meta_records_repeated", repeated)
    return [s if s is not None else "" for s in sentences], has_meta


def image_matrix(opts: AmazonOptions, item_tokens, log: mm_build.PrepLog, say) -> tuple[np.ndarray, np.ndarray, dict]:
    """(float32 [n_items, d] with missing rows filled, bool found per item, the image encoder's record)."""
    n_items = len(item_tokens)
    if opts.image_features:
        path = Path(opts.image_features).expanduser()
        wanted = {token: code for code, token in enumerate(item_tokens)}
        keep = "last" if opts.image_duplicates == "mmrec" else "first"
        records = formats.read_image_features(path, wanted, n_items, keep=keep)
        if not records.matched_records:
            raise UserError(f"{path} holds no image record of the {n_items} items ({records.records} records)",
                            fix="pass the image feature file of the same category as the reviews")
        found = records.found
        if opts.image_duplicates == "mmrec":  # MMRec's mean is over every matched record, repeats included
            matrix = records.features
            matrix[~found] = records.mean_all_records.astype(np.float32)
        else:
            matrix, _ = mm_build.fill_missing_rows(records.features, found)
        for name, value in (("image_records", records.records), ("image_records_matched", records.matched_records),
                            ("image_items_repeated", records.repeated_items)):
            log.count(name, value)
        info = {"name": "Amazon 2014 image features (CNN fc7, 4096-d)", "file": path.name, "dim": formats.IMAGE_DIM,
                "duplicates": opts.image_duplicates}
        source = path.name
    else:
        folder = Path(opts.images).expanduser()
        paths = formats.find_image_files(folder, item_tokens, IMAGE_EXTENSIONS)
        encoded = feature_encoders.encode_images(paths, device=opts.device)
        found = np.asarray(encoded.ok, dtype=bool)
        if encoded.failures:
            row, bad_path, reason = encoded.failures[0]
            say(f"warning: {len(encoded.failures)} image(s) could not be read (first: {bad_path}: {reason}); "
                "their items get the mean row")
        log.count("unreadable_images", len(encoded.failures))
        if not found.any():
            raise UserError(f"{folder} holds no readable image of the {n_items} items",
                            fix="name the files <asin>.jpg (or .png, ...) after the items' ASINs")
        matrix, _ = mm_build.fill_missing_rows(encoded.features, found)
        info = feature_encoders.image_encoder_info()
        source = str(folder)
    log.count("items_without_image", int((~found).sum()))
    say(f"images: {int(found.sum()):,} of {n_items:,} items from {source} "
        f"({int((~found).sum()):,} get the mean row, listed in {MISSED_IMAGES_FILE})")
    return matrix, found, info


def text_matrix(opts: AmazonOptions, sentences: list[str], log: mm_build.PrepLog, say) -> tuple[np.ndarray, dict]:
    no_text = np.array([not s.strip() for s in sentences], dtype=bool)
    log.count("items_without_text", int(no_text.sum()))
    vectors = np.asarray(feature_encoders.encode_texts(sentences, device=opts.device), dtype=np.float32)
    if vectors.shape[0] != len(sentences):
        raise ValueError(f"the text encoder returned {vectors.shape[0]} rows for {len(sentences)} sentences")
    if opts.missing_text == "mean" and no_text.any():
        vectors, _ = mm_build.fill_missing_rows(vectors, ~no_text)
    info = feature_encoders.text_encoder_info()
    say(f"text: {len(sentences):,} item sentences encoded ({vectors.shape[1]}-d, {info.get('name', 'encoder')}); "
        f"{int(no_text.sum()):,} without text" + (" get the mean row" if opts.missing_text == "mean" else ""))
    return vectors, info


def prepare_amazon(opts: AmazonOptions, target: str | Path, name: str, overwrite: bool = False,
                   say=lambda line: None) -> dict:
    """Run the whole chain and write ``target``; returns the manifest. ``say`` receives one line per step."""
    target = Path(target)
    _check_options(opts)
    refuse_existing(target, overwrite)
    reviews, meta = Path(opts.reviews).expanduser(), Path(opts.meta).expanduser()
    log = mm_build.PrepLog()

    table, stats = formats.read_reviews(reviews, opts.ratings_format)
    log.record("read", table, dropped=stats.missing_id_or_time + stats.missing_rating, lines=stats.lines,
               reader=stats.kind, missing_user_item_or_time=stats.missing_id_or_time,
               missing_rating=stats.missing_rating, **stats.detail)
    say(f"read {reviews.name}: {stats.lines:,} lines -> {len(table):,} interactions "
        f"({stats.missing_id_or_time:,} without user/item/time, {stats.missing_rating:,} without rating dropped)")
    if not len(table):
        raise UserError(f"{reviews} holds no review with a user, an item, a rating and a time", fix=_INPUT_FIX)
    table = mm_build.filter_min_rating(table, opts.min_rating, log)
    table = mm_build.drop_duplicates(table, log, policy=opts.dedupe)
    if opts.dedupe != "none":
        say(f"duplicates ({opts.dedupe}): dropped {log.steps[-1]['dropped_interactions']:,}")
    if opts.require_meta:
        has_meta = _items_with_meta(meta, table.item_tokens)
        if not has_meta.any():
            raise _no_meta_match(meta, len(table.item_tokens))
        keep = has_meta[table.item]
        table = table.take(keep)
        log.record("require_meta", table, dropped=int((~keep).sum()))
        say(f"--require-meta: dropped {int((~keep).sum()):,} interactions with items that have no meta record")
    table = mm_build.kcore_filter(table, log, min_user=opts.min_user, min_item=opts.min_item)
    step = log.steps[-1]
    say(f"{opts.min_user}/{opts.min_item}-core: dropped {step['dropped_interactions']:,} in {step['rounds']} "
        f"round(s) -> {step['users']:,} users, {step['items']:,} items, {step['interactions']:,} interactions")
    table = mm_build.reindex(table)
    x_label = mm_build.assign_split(table, opts.split, seed=opts.seed, log=log)
    c = log.counts
    say(f"split {opts.split}" + (f" (seed {opts.seed})" if opts.split == "mmrec" else "")
        + f": train {c['split_train']:,}, valid {c['split_valid']:,}, test {c['split_test']:,}")

    sentences, has_meta = item_sentences(meta, table.item_tokens, log)
    say(f"meta: {int(has_meta.sum()):,} of {len(has_meta):,} items "
        f"({int((~has_meta).sum()):,} without a meta record: empty text)")
    image, found, image_info = image_matrix(opts, table.item_tokens, log, say)
    text, text_info = text_matrix(opts, sentences, log, say)

    inputs = {"reviews": reviews, "meta": meta}
    inputs["image_features" if opts.image_features else "images"] = Path(opts.image_features or opts.images)
    missed = "".join(f"{code}\n" for code in np.flatnonzero(~found))
    with new_folders_removed_on(target.parent):
        return mm_build.write_prepared(target, name, table, x_label, {"image": image, "text": text}, log=log,
                                       options=asdict(opts), inputs=inputs, source=SOURCE,
                                       encoders={"image": image_info, "text": text_info}, overwrite=overwrite,
                                       feature_dtype="float32", extra_files={MISSED_IMAGES_FILE: missed})


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="run.py prepare amazon",
        description="Build a multimodal dataset from the raw Amazon review files (2014 or 2018 release) with MMRec's "
                    "published preprocessing: duplicates dropped, 5-core, first-appearance ids, MMRec's per-user "
                    "random split, item text (title, brand, categories, description) encoded with all-MiniLM-L6-v2, "
                    "image features from the 2014 .b file or from image files. Files are streamed: the reviews "
                    "file is never loaded whole. See docs/data.md, 'From raw Amazon files'.")
    parser.add_argument("--reviews", required=True, metavar="FILE",
                        help="reviews JSON lines (reviews_Baby_5.json.gz, 2018: Baby_5.json.gz) or a ratings CSV "
                             "(ratings_Baby.csv), gzip or plain")
    parser.add_argument("--meta", required=True, metavar="FILE", help="item meta data (meta_Baby.json.gz)")
    images = parser.add_mutually_exclusive_group()
    images.add_argument("--image-features", metavar="FILE.b",
                        help="Amazon 2014 image features (image_features_Baby.b: 10-byte ASIN + 4096 float32 per item)")
    images.add_argument("--images", metavar="DIR",
                        help="folder of item images named <asin>.jpg / .png / ..., encoded with the project's CNN")
    parser.add_argument("--name", required=True, help="dataset name, the folder written under the dataset root")
    parser.add_argument("--out", metavar="DIR",
                        help="dataset root to write NAME/ into (default: where runs look, $RECBOLE_EXT_DATA, else the "
                             "project's dataset_atomic/); elsewhere runs need --data_path=DIR")
    parser.add_argument("--split", choices=mm_build.SPLIT_METHODS, default="mmrec",
                        help="mmrec: MMRec's per-user random split; leave-last-out; global-time (timestamp quantiles)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the mmrec split's shuffle")
    parser.add_argument("--min-user", type=int, default=5, help="k-core: interactions a user needs")
    parser.add_argument("--min-item", type=int, default=5, help="k-core: interactions an item needs")
    parser.add_argument("--dedupe", choices=mm_build.DEDUPE_POLICIES, default="timestamp",
                        help="timestamp: drop rows repeating (user, item, timestamp), MMRec's rule; pair: one row per "
                             "(user, item), the earliest; none")
    parser.add_argument("--min-rating", type=float, metavar="R",
                        help="keep only ratings >= R (default: every rating, as MMRec)")
    parser.add_argument("--require-meta", action="store_true",
                        help="drop items without a meta record before the k-core (default: keep them, empty text)")
    parser.add_argument("--missing-text", choices=MISSING_TEXT_RULES, default="encode",
                        help="items whose sentence is empty: encode it as it is, or give them the mean text row")
    parser.add_argument("--image-duplicates", choices=IMAGE_DUPLICATE_RULES, default="mmrec",
                        help="an item with several .b records: mmrec (the last record; the mean row counts every "
                             "record) or first (the first record; the mean over one row per item)")
    parser.add_argument("--ratings-format", choices=formats.RATINGS_FORMATS, default="auto",
                        help="column order of a ratings CSV: user-item (2014), item-user (2018), or auto-detect")
    parser.add_argument("--device", default="cpu", help="device of the text / image encoders (cpu, cuda, cuda:1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing NAME/ folder")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_dataset_name(args.name, "baby")
    root = Path(args.out).expanduser() if args.out else dataset_root()
    target = root.absolute() / args.name
    opts = AmazonOptions(reviews=args.reviews, meta=args.meta, image_features=args.image_features, images=args.images,
                         split=args.split, seed=args.seed, min_user=args.min_user, min_item=args.min_item,
                         dedupe=args.dedupe, min_rating=args.min_rating, require_meta=args.require_meta,
                         missing_text=args.missing_text, image_duplicates=args.image_duplicates,
                         ratings_format=args.ratings_format, device=args.device)
    manifest = prepare_amazon(opts, target, args.name, overwrite=args.overwrite, say=print)
    s = manifest["splits"]
    dims = ", ".join(f"{m} {manifest['features'][m]['shape'][1]}-d" for m in ("image", "text"))
    print(f"prepared {target}: {s['n_users']:,} users, {manifest['n_items']:,} items, {s['n_interactions']:,} "
          f"interactions (train {s['n_train']:,}, valid {s['n_valid']:,}, test {s['n_test']:,}); features {dims}")
    found_by_default = target.parent.resolve() == dataset_root().resolve()
    print(f"train on it: python run.py --model=LightGCN --dataset={args.name}"
          + ("" if found_by_default else f" --data_path={target.parent}"))
    return 0
