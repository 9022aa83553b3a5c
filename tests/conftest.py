"""Fixtures shared by the test modules, each built once per pytest session: where the conformance data lives
(skipping cleanly when it is absent), the tiny models several modules run, and one torch thread for the modules
that run them. Helpers that are not fixtures live in the `helpers` package (``from helpers.files import ...``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.files import FIXTURES_DIR

_MISSING_REASON = (
    f"conformance fixtures not found at {FIXTURES_DIR} (they live in ../shared/fixtures beside the checkout; "
    "set LATENTSYNC_FIXTURES to point elsewhere)"
)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

    Tiny models gain nothing from more threads, and on a shared 2-core runner two threads were up to 20x slower than
    one while other jobs held the cores (OpenMP threads spin while they wait for each other); one thread keeps the
    suite's time predictable.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------
# Conformance data


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The conformance fixture folder; skips the test when it is absent."""
    if not (FIXTURES_DIR / "README.md").is_file():
        pytest.skip(_MISSING_REASON)
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def assets_dir(fixtures_dir: Path) -> Path:
    """The real talking-head clips (`demo1_video.mp4`, `demo1_audio.wav`, ...)."""
    return fixtures_dir / "assets"


@pytest.fixture(scope="session")
def fixture_unet(fixtures_dir: Path):
    """The tiny UNet checkpoint of the fixtures (`unet_tiny/latentsync_unet_tiny.pt`), loaded (eval, float32).
    Shared: tests must not change its weights or settings (copy it first)."""
    from latentsync.models.unet_loading import load_unet

    return load_unet(fixtures_dir / "unet_tiny" / "latentsync_unet_tiny.pt")


# ----------------------------------------------------------------------------------------------------------
# Tiny random models


@pytest.fixture(scope="session")
def tiny_syncnet():
    """A StableSyncNet of the ``syncnet_tiny`` config with random weights (seed 0), in eval mode. Shared: tests must
    not change it (copy it first)."""
    import torch

    from latentsync.models.syncnet import StableSyncNet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return StableSyncNet.from_config("syncnet_tiny").eval()


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A models folder with tiny random-weight models in the official layout (`latentsync.tiny`)."""
    from latentsync.tiny import make_tiny_models

    folder = tmp_path_factory.mktemp("tiny_models")
    make_tiny_models(folder, seed=3)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tiny_models_dir: Path):
    """The tiny models of `tiny_models_dir`, loaded on the CPU in float32 at resolution 256."""
    from latentsync.pipeline.models import load_models

    return load_models(tiny_models_dir, resolution=256)


@pytest.fixture(scope="session")
def face_detector():
    """The default face detector (MediaPipe; a runtime requirement, so its absence fails the tests that use it)."""
    from latentsync.face.detectors import create_face_detector

    return create_face_detector()


# ----------------------------------------------------------------------------------------------------------
# ComfyUI nodes


@pytest.fixture(scope="module")
def comfy_nodes(tiny_models_dir: Path, tmp_path_factory):
    """The node modules (``comfy_nodes.loaders``, ``.prepare``, ``.sampler``, ...) imported under stand-in ComfyUI
    modules (`helpers.comfy`) for one test module, with the tiny models where ComfyUI keeps them:
    ``models/latentsync/{latentsync_unet.pt, whisper/tiny.pt, stable_syncnet.pt}`` and ``models/vae/sd-vae-ft-mse``.
    ``comfy_nodes.stubs`` is the `helpers.comfy.ComfyStubs` (model manager, folders; ComfyUI's input folder is
    ``stubs.temp_dir.parent / "input"``). Library classes the tests
    compare with must come from ``pack_module("latentsync...")``, imported at module level (before this fixture)."""
    from types import SimpleNamespace

    from helpers.comfy import comfy_stubs
    from helpers.pack import pack_module

    root = tmp_path_factory.mktemp("comfyui")
    models = root / "models"
    (models / "latentsync" / "whisper").mkdir(parents=True)
    (models / "vae").mkdir()
    (models / "loras").mkdir()
    for folder in ("temp", "input", "output"):
        (root / folder).mkdir()
    for name in ("latentsync_unet.pt", "whisper/tiny.pt", "stable_syncnet.pt"):
        (models / "latentsync" / name).symlink_to(tiny_models_dir / name)
    (models / "vae" / "sd-vae-ft-mse").symlink_to(tiny_models_dir / "sd-vae-ft-mse", target_is_directory=True)
    with comfy_stubs(models, root / "temp") as stubs:
        names = ("common", "loaders", "prepare", "sampler", "score", "video", "vae_codecs", "extension")
        yield SimpleNamespace(stubs=stubs, **{name: pack_module(f"nodes.{name}") for name in names})
