"""``prepare synthetic-mm``: a multimodal dataset with planted structure, in MMRec's shape.

Generative story (all from one ``numpy.random.default_rng(seed)``):

* ``n_clusters`` unit-norm topic centroids in a ``latent_dim`` space; every item belongs to one topic and its factor
  is the centroid plus item-specific noise. Every user likes ``topics_per_user`` topics; the user factor is their
  mean plus noise.
* Item popularity is Zipf-like over a random item order, so there is a long tail of items with few interactions.
* Each user draws ``n_u >= 5`` distinct items (n_u geometric-like, total close to ``--interactions``) without
  replacement with probability ∝ exp(sharpness · <user, item> + popularity_weight · log popularity) (Gumbel top-k).
* Image feature: 4096-d, NON-NEGATIVE (ReLU of a noisy random projection of the item factor: what a CNN fc layer
  after ReLU looks like). Text feature: 384-d noisy random projection of the item factor, rows L2-normalised (what a
  Sentence-Transformers embedding looks like). ``--missing-image-frac`` replaces that share of image rows by the
  mean row, as MMRec does for items without an image.
* Split per user at random, exactly as MMRec's preprocessing (mambarec spec §3.2): fewer than 10 interactions ->
  n-2 train, 1 valid, 1 test; otherwise val_test = floor(0.2 n), valid = floor(val_test / 2), test = the rest.

Long-tail items have few training interactions, so collaborative filtering knows little about them while their
features still reveal their topic: a model that uses the features should beat pure CF, and shuffling the feature
rows (breaking the item-feature link) should remove that advantage.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from recbole_ext.data.mmrec_format import write_mm_folder
from recbole_ext.data.prepare.mm_build import mmrec_split_labels
from recbole_ext.errors import UserError
from recbole_ext.utils.argparsing import CommandParser
from recbole_ext.utils.io import atomic_dir
from recbole_ext.utils.paths import check_dataset_name, dataset_root

IMAGE_DIM = 4096
TEXT_DIM = 384
MIN_PER_USER = 5  # MMRec datasets are 5-core


@dataclass(frozen=True)
class SyntheticMMSpec:
    users: int = 1500
    items: int = 1000
    interactions: int = 9000
    seed: int = 2024
    latent_dim: int = 32
    n_clusters: int = 20
    topics_per_user: int = 2
    item_noise: float = 0.5        # spread of items around their topic centroid (relative to centroid norm 1)
    user_noise: float = 0.3
    sharpness: float = 6.0         # how strongly preference drives choice
    popularity_exponent: float = 0.5  # Zipf exponent of item popularity (mild: keeps preference, not popularity, in charge)
    popularity_weight: float = 1.0
    image_noise: float = 0.5       # per-entry noise of the projections, relative to signal std
    text_noise: float = 0.5
    missing_image_frac: float = 0.0


_BLOCK_CELLS = 1 << 22  # users x items cells per block of the interaction draw (32 MB of float64)


def generate(spec: SyntheticMMSpec) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Return (MMRec-style interaction frame, {"image": [I, 4096], "text": [I, 384]} float32)."""
    if spec.users < 2 or spec.items < 2 * MIN_PER_USER:
        raise UserError(f"need at least 2 users and {2 * MIN_PER_USER} items (got {spec.users}, {spec.items})",
                        fix="raise --users / --items")
    if spec.interactions < MIN_PER_USER * spec.users:
        raise UserError(f"--interactions {spec.interactions} is below {MIN_PER_USER} per user "
                        f"({MIN_PER_USER * spec.users} for {spec.users} users)", fix="raise --interactions")
    if not 0.0 <= spec.missing_image_frac < 1.0:
        raise UserError("--missing-image-frac must be in [0, 1)", fix="e.g. 0.05")
    if spec.seed < 0:
        raise UserError(f"--seed {spec.seed} is negative", fix="use a seed >= 0 (numpy's generators need one)")
    if spec.seed >= 2**32:  # RandomState (the row shuffle) takes 32-bit seeds
        raise UserError(f"--seed {spec.seed} is above 2**32 - 1", fix="use a seed in [0, 4294967295]")
    rng = np.random.default_rng(spec.seed)
    k, n_users, n_items = spec.latent_dim, spec.users, spec.items

    centroids = rng.standard_normal((spec.n_clusters, k))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    item_topic = rng.integers(0, spec.n_clusters, n_items)
    item_f = centroids[item_topic] + spec.item_noise * rng.standard_normal((n_items, k)) / np.sqrt(k)
    liked = np.argsort(rng.random((n_users, spec.n_clusters)), axis=1)[:, :spec.topics_per_user]
    user_f = centroids[liked].mean(axis=1) + spec.user_noise * rng.standard_normal((n_users, k)) / np.sqrt(k)

    popularity = (1.0 + rng.permutation(n_items)) ** -spec.popularity_exponent
    log_popularity = spec.popularity_weight * np.log(popularity)

    extra = spec.interactions - MIN_PER_USER * n_users
    per_user = MIN_PER_USER + rng.multinomial(extra, rng.dirichlet(np.full(n_users, 2.0)))
    per_user = np.minimum(per_user, n_items // 2)
    # Gumbel top-k per user = sampling without replacement by softmax(logits). Blocks of users keep memory at
    # O(block x items) (a dense users x items matrix is 7 GB at Clothing size); the draws come from the generator
    # in the same order as one full-size draw, so the data do not depend on the block size.
    users = np.repeat(np.arange(n_users), per_user)
    items, block = [], max(1, _BLOCK_CELLS // n_items)
    for start in range(0, n_users, block):
        rows = slice(start, min(start + block, n_users))
        logits = spec.sharpness * (user_f[rows] @ item_f.T) + log_popularity
        ranked = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1)
        items.append(ranked[np.arange(n_items)[None, :] < per_user[rows, None]])
    items = np.concatenate(items)

    labels = mmrec_split_labels(users, rng)
    timestamps = 1_300_000_000 + np.sort(rng.integers(0, 10**8, len(users)))
    inter = pd.DataFrame({"userID": users, "itemID": items, "rating": np.ones(len(users)),
                          "timestamp": timestamps.astype(np.float64), "x_label": labels})
    inter = inter.sample(frac=1.0, random_state=np.random.RandomState(spec.seed)).reset_index(drop=True)

    w_image = rng.standard_normal((k, IMAGE_DIM)) / np.sqrt(k)
    signal = item_f @ w_image
    image = np.maximum(signal + spec.image_noise * signal.std() * rng.standard_normal(signal.shape), 0.0)
    n_missing = int(round(spec.missing_image_frac * n_items))
    if n_missing:
        image[rng.choice(n_items, n_missing, replace=False)] = image.mean(axis=0)
    w_text = rng.standard_normal((k, TEXT_DIM)) / np.sqrt(k)
    signal = item_f @ w_text
    text = signal + spec.text_noise * signal.std() * rng.standard_normal(signal.shape)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return inter, {"image": image.astype(np.float32), "text": text.astype(np.float32)}


def _readme(name: str, command: str, spec: SyntheticMMSpec, manifest: dict) -> str:
    s = manifest["splits"]
    params = "\n".join(f"| {k} | {v} |" for k, v in asdict(spec).items())
    files = "\n".join(f"| {f['file']} | {f['shape'][0]} x {f['shape'][1]} | {f['dtype']} | `{f['sha256'][:16]}...` |"
                      for f in manifest["features"].values())
    return f"""# {name}: synthetic multimodal recommendation data

**Provenance.** Fully synthetic: generated by `recbole_ext/data/prepare/synthetic_mm.py` (no real users, items,
images or texts). **Licence:** CC0-1.0.

**Re-create (identical files for the same seed, numpy version and platform):**

```
{command} --overwrite
```

**Contents.** {s['n_users']} users, {spec.items} items, {s['n_interactions']} interactions; per-user random split
as MMRec's preprocessing: train {s['n_train']}, valid {s['n_valid']}, test {s['n_test']} (`x_label` 0/1/2).
`{name}.inter` / `{name}.item` are RecBole atomic files; `mm_features.json` is the manifest (format in
`recbole_ext/data/mmrec_format.py`).

| file | shape | dtype | sha256 |
|---|---|---|---|
{files}

**Planted structure.** Items belong to topics (latent factor = topic centroid + noise); users like a few topics;
interactions are drawn without replacement with probability proportional to exp(sharpness * <user, item>) times a
mild Zipf popularity. The image feature is a non-negative (ReLU) noisy 4096-d random projection of the item factor
(like CNN features), the text feature a row-normalised noisy 384-d projection (like sentence embeddings). Items in
the long tail have few training interactions, so their features carry information that collaborative filtering
lacks: a model that uses the features should beat pure CF here, and shuffling the feature rows should remove that
advantage.

| generator parameter | value |
|---|---|
{params}
"""


def main(argv: list[str]) -> int:
    defaults = SyntheticMMSpec()
    parser = CommandParser(prog="run.py prepare synthetic-mm",
                           description="Generate a synthetic multimodal dataset with planted structure.")
    parser.add_argument("--name", required=True, help="dataset name to create under the dataset root")
    parser.add_argument("--users", type=int, default=defaults.users, help="users to generate")
    parser.add_argument("--items", type=int, default=defaults.items, help="items to generate")
    parser.add_argument("--interactions", type=int, default=defaults.interactions,
                        help="user-item interactions to generate")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed of the generator")
    parser.add_argument("--missing-image-frac", type=float, default=defaults.missing_image_frac,
                        help="share of items whose image row is replaced by the mean row (MMRec's fill)")
    parser.add_argument("--feature-dtype", choices=["float16", "float32"], default="float32",
                        help="storage dtype of the .npy files (loaded as float32 either way)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    args = parser.parse_args(argv)
    check_dataset_name(args.name, "synth-mm")
    spec = SyntheticMMSpec(users=args.users, items=args.items, interactions=args.interactions, seed=args.seed,
                           missing_image_frac=args.missing_image_frac)
    inter, features = generate(spec)
    command = " ".join(["python run.py prepare synthetic-mm"] + [a for a in argv if a != "--overwrite"])
    provenance = {"source": "synthetic (recbole_ext.data.prepare.synthetic_mm)", "command": command,
                  "generator": asdict(spec), "licence": "CC0-1.0 (synthetic, no real data)"}
    target = dataset_root() / args.name
    with atomic_dir(target, overwrite=args.overwrite) as tmp:
        manifest = write_mm_folder(tmp, args.name, inter, spec.items, features, provenance,
                                   feature_dtype=args.feature_dtype)
        (tmp / "README.md").write_text(_readme(args.name, command, spec, manifest))
    s = manifest["splits"]
    print(f"generated {target}: {s['n_users']} users, {spec.items} items, {s['n_interactions']} interactions "
          f"(train {s['n_train']}, valid {s['n_valid']}, test {s['n_test']})")
    if len(inter) < spec.interactions:
        print(f"note: {spec.interactions} interactions were asked; a user interacts with at most half of the "
              f"{spec.items} items, so {len(inter)} were generated")
    return 0
