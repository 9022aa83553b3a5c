"""Training runs of every mode on the tiny models and synthetic clips, in this process (CPU, float32).

Each run does two optimizer steps; the tests check finite losses, that exactly the configured parameters changed
(the frozen ones bit-identical), the exported files (strict loading), resume, and the datasets.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import torch

from latentsync.checkpoint import read_checkpoint
from latentsync.models.lora import apply_lora, read_lora
from latentsync.models.unet_loading import load_unet
from train.config import load_config
from train.data.tiny import make_tiny_assets


pytestmark = pytest.mark.slow  # end-to-end training runs: minutes on a 2-core runner


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder holding ``tiny/`` (what the tiny configs point at); tests run from it."""
    folder = tmp_path_factory.mktemp("train")
    make_tiny_assets(folder / "tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield folder


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps its state in singletons; each run starts from scratch."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _train(mode: str, config_name: str, *overrides: str) -> Path:
    # One feature cache for every run; gradient checkpointing only where a test says so (it costs time).
    defaults = ["run.report_to=", "data.cache_dir=cache", "run.gradient_checkpointing=false"]
    config = load_config(mode, config_name, [*defaults, *overrides])
    if mode == "syncnet":
        from train.syncnet_trainer import train_syncnet

        return train_syncnet(config)
    from train.unet_trainer import train_unet

    return train_unet(config)


def _changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {key for key in before if not torch.equal(before[key], after[key])}


@pytest.fixture(scope="module")
def stage2_run(workdir) -> Path:
    from accelerate.state import AcceleratorState, GradientState

    export = _train("stage2", "tiny_stage2", "run.output_dir=runs/stage2", "run.gradient_checkpointing=true",
                    "run.report_to=tensorboard")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return export


def test_stage2_trains_exactly_the_configured_modules(workdir, stage2_run):
    initial = read_checkpoint(workdir / "tiny/models/latentsync_unet.pt").state_dict
    trained = read_checkpoint(stage2_run / "unet.pt")
    assert trained.extra["global_step"] == 2
    changed = _changed(initial, trained.state_dict)
    parameters = dict(load_unet(stage2_run / "unet.pt").named_parameters())
    expected = {k for k in parameters if "motion_modules." in k or "attentions." in k}
    assert changed == expected
    assert all(torch.isfinite(t).all() for t in trained.state_dict.values())


def test_stage2_export_and_run_folder(workdir, stage2_run):
    unet = load_unet(stage2_run / "unet.safetensors")  # strict, config from the metadata
    assert unet.global_step == 2
    run = workdir / "runs/stage2"
    assert len(list((run / "val/step_2").glob("*.mp4"))) == 1  # the held-out list's clip, rendered whole
    assert list((run / "logs").rglob("events.out.tfevents.*"))
    saved = load_config("stage2", run / "config.yaml")
    assert saved["run"]["output_dir"] == "runs/stage2" and saved["ckpt"]["save_ckpt_steps"] == 2
    checkpoint = run / "checkpoints/checkpoint-2"
    assert {"unet.pt", "optimizer.bin", "training_state.json", "random_states_0.pkl"} <= {
        p.name for p in checkpoint.iterdir()
    }


def test_new_run_refuses_a_folder_with_checkpoints(workdir, stage2_run):
    from latentsync.errors import ConfigError

    with pytest.raises(ConfigError, match="already has checkpoints"):
        _train("stage2", "tiny_stage2", "run.output_dir=runs/stage2")


def test_resume_continues_steps_and_optimizer_state(workdir, stage2_run):
    run = workdir / "runs/stage2"
    saved_optimizer = torch.load(run / "checkpoints/checkpoint-2/optimizer.bin", weights_only=True)
    steps_before = {k: v["step"].item() for k, v in saved_optimizer["state"].items()}
    assert set(steps_before.values()) == {2.0}
    _train("stage2", "tiny_stage2", "run.output_dir=runs/stage2", "ckpt.resume=latest", "run.max_train_steps=3")
    resumed = torch.load(run / "checkpoints/checkpoint-3/optimizer.bin", weights_only=True)
    # AdamW continued from the saved moments: its step counter went on from 2, not from 0
    assert {v["step"].item() for v in resumed["state"].values()} == {3.0}
    assert read_checkpoint(run / "export/unet.pt").extra["global_step"] == 3
    # keep the newest 2 checkpoints
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]


def test_stage1_trains_every_parameter(workdir):
    export = _train("stage1", "tiny_stage1", "run.output_dir=runs/stage1", "validation.every_n_steps=-1")
    initial = read_checkpoint(workdir / "tiny/models/latentsync_unet.pt").state_dict
    trained = read_checkpoint(export / "unet.pt").state_dict
    parameters = dict(load_unet(export / "unet.pt").named_parameters())
    assert _changed(initial, trained) == set(parameters)


def test_lora_trains_only_the_adapters(workdir):
    from train.unet_trainer import initial_unet, select_trainable

    config = load_config("lora", "tiny_lora")
    unet = initial_unet(config)
    trained = select_trainable(unet, config)
    assert trained and all(".lora_A." in name or ".lora_B." in name for name in trained)
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == set(trained)


def test_lora_export_loads_and_changes_the_output(workdir):
    export = _train("lora", "tiny_lora", "run.output_dir=runs/lora", "validation.every_n_steps=-1")
    lora = read_lora(export / "lora")  # peft layout: adapter_model.safetensors + adapter_config.json
    assert (lora.rank, lora.alpha, lora.metadata["preset"]) == (4, 8.0, "both")
    assert lora.metadata["base_checkpoint"] == "latentsync_unet.pt" and len(lora.metadata["base_checkpoint_sha256"]) == 64
    assert any("attn2" in name for name in lora.layers) and any("motion_modules" in name for name in lora.layers)
    # the checkpoint's base weights are not saved (only the adapters); training moved lora_B away from zero
    assert all(up.abs().sum() > 0 for _, up in lora.layers.values())

    unet = load_unet(workdir / "tiny/models/latentsync_unet.pt")
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 13, 5, 16, 16, generator=generator)
    audio = torch.randn(1, 5, 50, 24, generator=generator)
    with torch.no_grad():
        base = unet(sample, 500, audio)
        applied = apply_lora(unet, lora, strength=1.0)
        adapted = unet(sample, 500, audio)
        applied.undo()
        restored = unet(sample, 500, audio)
    assert (adapted - base).abs().max() > 1e-4
    assert torch.equal(restored, base)


@pytest.mark.parametrize(
    "loss, overrides, logged",
    [("bce", [], "val/accuracy"),
     ("offsets", ["losses.syncnet_windows_per_clip=4", "data.augment=true"], "val/offset_accuracy")],
)  # fmt: skip
def test_syncnet_training(workdir, caplog, loss, overrides, logged):
    from latentsync.models.syncnet_loading import load_syncnet

    with caplog.at_level(logging.INFO, logger="train"):
        export = _train("syncnet", "tiny_syncnet", f"run.output_dir=runs/syncnet_{loss}", "validation.every_n_steps=2",
                        f"losses.syncnet_loss={loss}", *overrides)  # fmt: skip
    assert re.search(rf"step 2: val/loss \d+\.\d+, {logged} (0|1)\.\d+", caplog.text)
    settings = load_config("syncnet", "tiny_syncnet")["model"]["syncnet_config"]
    model = load_syncnet(export / "syncnet.pt", config=settings)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    checkpoint = read_checkpoint(export / "syncnet.pt")
    assert checkpoint.extra["global_step"] == 2 and "train_loss_list" in checkpoint.extra
    assert load_syncnet(export / "syncnet.safetensors").state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("num_frames", [5, 16])
def test_frame_count_is_configurable(workdir, num_frames):
    from train.unet_trainer import UNetLoss, build_dataloader, initial_unet, load_frozen_models

    config = load_config(
        "stage2", "tiny_stage2", [f"data.num_frames={num_frames}", "run.use_syncnet=false", "run.output_dir=runs/f"]
    )
    unet = initial_unet(config)
    frozen = load_frozen_models(config, unet, "cpu", torch.float32)
    dataset, loader = build_dataloader(config, unet, with_mel=False, cache_dir=workdir / "cache")
    batch = next(iter(loader))
    assert batch["gt_pixel_values"].shape == (1, num_frames, 3, 128, 128)
    assert batch["audio_embeds"].shape == (1, num_frames, 50, 24)
    terms = UNetLoss(config, frozen, torch.float32)(unet, batch)
    assert torch.isfinite(terms["loss"]) and terms["pred_pixels"].shape == (num_frames, 3, 128, 128)


def test_dataset_skips_and_reports_a_corrupt_clip(workdir, caplog):
    from train.data import AudioFeatureCache, UNetDataset, list_clips
    from train.unet_trainer import _mouth_mask

    corrupt = workdir / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))
    clips = [corrupt, *list_clips("tiny/clips/train.txt")]
    config = load_config("stage2", "tiny_stage2")
    audio = AudioFeatureCache(workdir / "cache", "tiny/models/whisper/tiny.pt")
    dataset = UNetDataset(clips, 5, 128, _mouth_mask(config), audio, True, True, seed=1)
    with caplog.at_level(logging.WARNING):
        sample = dataset[0]
    assert sample["clip_index"] == 1
    assert any("Skipping training clip" in r.message and "corrupt.mp4" in r.message for r in caplog.records)
    # windows: the reference window never overlaps the target window
    assert sample["mel"].shape == (1, 80, 16) and sample["masks"].shape == (5, 1, 128, 128)


def test_missing_loss_weights_are_a_clear_error(workdir):
    from latentsync.errors import ConfigError
    from train.unet_trainer import initial_unet, load_frozen_models

    config = load_config("stage2", "tiny_stage2", ["run.perceptual_loss_weight=0.1", "losses.missing_weights=error"])
    with pytest.raises(ConfigError, match="losses.vgg16_weights and losses.lpips_weights is not set"):
        load_frozen_models(config, initial_unet(config), "cpu", torch.float32)


@pytest.fixture(scope="module")
def validation_clip(assets_dir, workdir) -> Path:
    """1.6 s of demo1 (a 480 x 480 crop around the face) with its audio: enough for the sync score's offsets."""
    from latentsync.media import AudioArray, VideoReader, VideoWriter, load_audio

    with VideoReader(assets_dir / "demo1_video.mp4") as reader:
        frames = [rgb[480:960, 360:840] for _, (_, rgb) in zip(range(40), reader.frames_at_fps(25))]
    audio = load_audio(assets_dir / "demo1_video.mp4", 16000)[: 40 * 640]
    path = workdir / "val_clip.mp4"
    with VideoWriter(path, 25, 480, 480, audio=AudioArray(audio, 16000), preset="ultrafast") as writer:
        for frame in frames:
            writer.write_frame(frame)
    return path


def test_validation_scores_sync_per_checkpoint_and_exports_the_best(workdir, validation_clip):
    import csv
    import json

    # The SyncNet that learned sync (tests/test_syncnet_trained.py); the tiny UNet's renders are noise, so its
    # numbers are low, but they are a real judge's.
    trained_syncnet = Path(__file__).resolve().parent / "assets" / "stable_syncnet_tiny_trained.pt"
    export = _train(
        "stage2", "tiny_stage2", "run.output_dir=runs/val", "run.report_to=tensorboard", "validation.every_n_steps=1",
        f"data.val_video_path={validation_clip}", f"validation.syncnet={trained_syncnet}",
        "validation.syncnet_config=syncnet_tiny_trained", "validation.inference_steps=1",
    )  # fmt: skip
    run = export.parent
    with (run / "val" / "sync_scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [1, 2]  # one clip, scored at each checkpoint
    assert all(row["clip"] == str(validation_clip) for row in rows)
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"checkpoint-1", "checkpoint-2"}  # saved first
    best = json.loads((run / "export" / "best" / "sync.json").read_text())
    confidences = {int(row["step"]): float(row["confidence"]) for row in rows}
    assert best["step"] == max(confidences, key=confidences.get)
    assert best["confidence"] == pytest.approx(max(confidences.values()))
    best_unet = load_unet(run / "export" / "best" / "unet.pt")
    assert best_unet.global_step == best["step"]
    assert len(list((run / "val" / "step_2").glob("*.mp4"))) == 1


def test_a_wrong_validation_path_fails_before_training(workdir):
    from latentsync.errors import ConfigError

    with pytest.raises(ConfigError, match="validation clip .*missing.mp4 does not exist"):
        _train("stage2", "tiny_stage2", "run.output_dir=runs/bad_val", "data.val_video_path=missing.mp4")
    assert not list((workdir / "runs/bad_val").glob("checkpoints/checkpoint-*"))
