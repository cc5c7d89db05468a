"""Synthetic product texts and pictures for the feature-extractor tests and benchmark (recbole_ext/data/features).

:func:`product_photo` draws a product-like picture (a light gradient background, a few coloured shapes, a dark
triangle in one corner): not one flat colour, so a CNN has something to see, and asymmetric, so its mirror image is
another picture. :func:`product_descriptions` writes Amazon-like product texts (title, details, a sentence of
description) of a given typical length, seeded.
"""
from __future__ import annotations

import numpy as np

_BRANDS = ["Acme", "Northwind", "Bluebird", "Kindred", "Solace", "Trailhead", "Meadow & Co", "Ironleaf"]
_ADJECTIVES = ["soft", "lightweight", "durable", "waterproof", "organic", "breathable", "compact", "adjustable",
               "hypoallergenic", "washable", "ergonomic", "non-slip", "reusable", "stainless", "insulated"]
_MATERIALS = ["cotton", "bamboo fibre", "silicone", "merino wool", "recycled polyester", "oak", "carbon fibre",
              "aluminium", "ceramic", "nylon", "leather", "glass"]
_PRODUCTS = ["baby blanket", "swaddle wrap", "teething ring", "running shoe", "yoga mat", "water bottle",
             "bicycle brake pads", "camping lantern", "face serum", "hair brush", "lip balm", "backpack",
             "crib sheet", "sports bra", "tennis racket", "travel mug"]
_AUDIENCES = ["infants", "toddlers", "runners", "hikers", "cyclists", "sensitive skin", "everyday use", "travel"]
_CLAUSES = ["machine washable at 30 degrees", "free of BPA and phthalates", "fits most standard sizes",
            "comes in a gift box", "backed by a two-year warranty", "tested by independent laboratories",
            "easy to clean with warm soapy water", "folds flat for storage", "available in six colours",
            "designed and tested in our own workshop", "gentle on delicate skin", "keeps drinks cold for 24 hours",
            "grips firmly even when wet", "made without harsh chemicals"]


def product_descriptions(n: int, words: int = 60, seed: int = 0) -> list[str]:
    """``n`` product texts of about ``words`` words (between 0.6x and 1.4x), built from a fixed vocabulary."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        target = int(words * rng.uniform(0.6, 1.4))
        parts = [f"{rng.choice(_BRANDS)} {rng.choice(_ADJECTIVES)} {rng.choice(_MATERIALS)} {rng.choice(_PRODUCTS)} "
                 f"for {rng.choice(_AUDIENCES)}."]
        while sum(len(p.split()) for p in parts) < target:
            parts.append(f"{str(rng.choice(_ADJECTIVES)).capitalize()} and {rng.choice(_ADJECTIVES)}, "
                         f"{rng.choice(_CLAUSES)}; {rng.choice(_CLAUSES)}.")
        texts.append(" ".join(" ".join(parts).split()[:target]))
    return texts


def product_photo(seed: int, size: tuple[int, int] = (320, 240)):
    """A PIL RGB picture of ``size`` (width, height), the same for the same seed."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0, 1, width)[None, :, None] * rng.uniform(40, 120, size=3)
    pixels = np.clip(rng.uniform(150, 230, size=3) - ramp + np.zeros((height, 1, 1)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x, y = rng.integers(0, width * 3 // 4), rng.integers(0, height * 3 // 4)
        w, h = rng.integers(width // 8, width // 3), rng.integers(height // 8, height // 3)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=colour)
    draw.polygon([(10, 10), (width // 2, 30), (40, height // 2)], fill=(20, 20, 20))
    return image
