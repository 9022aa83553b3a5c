"""Settings table, frame-rate maps, resolution inference, model lookup errors, stage clock: no model runs."""

from __future__ import annotations

import argparse
import json
import math
import time
from fractions import Fraction

import pytest

from latentsync.errors import CheckpointError, ConfigError
from latentsync.pipeline.models import DEFAULT_RESOLUTION, find_model_files, infer_resolution
from latentsync.pipeline.settings import DEFAULT_SETTINGS, SETTING_SPECS, LipSyncSettings
from latentsync.pipeline.stream import model_frame_shown, model_frames_of
from latentsync.pipeline.timing import StageClock


def test_defaults_are_the_reference_values():
    settings = DEFAULT_SETTINGS
    assert (settings.num_inference_steps, settings.guidance_scale, settings.seed) == (20, 1.5, 1247)
    assert settings.num_frames == 16
    assert (settings.long_audio, settings.short_audio, settings.no_face) == ("pingpong", "trim", "passthrough")
    assert settings.face_index == "largest" and settings.resolution is None and settings.output_fps is None
    assert set(SETTING_SPECS) == {name for name in settings.__dataclass_fields__}
    assert all(spec.help for spec in SETTING_SPECS.values())


@pytest.mark.parametrize(
    "changes",
    [
        {"num_inference_steps": 0},
        {"num_inference_steps": 101},
        {"guidance_scale": 0.9},
        {"guidance_scale": 5.5},
        {"num_frames": 25},
        {"num_frames": 4},
        {"seed": -1},
        {"resolution": 384},
        {"face_index": -1},
        {"face_index": "smallest"},
        {"no_face": "skip"},
        {"long_audio": "bounce"},
        {"short_audio": "stretch"},
        {"dtype": "half"},
        {"output_fps": 0},
        {"output_fps": "fast"},
        {"num_frames": 16.5},
    ],
)
def test_out_of_bounds_settings_are_refused(changes):
    with pytest.raises(ConfigError, match=next(iter(changes))):
        LipSyncSettings(**changes)


def test_output_fps_is_kept_exact():
    assert LipSyncSettings(output_fps="30000/1001").output_fps == Fraction(30000, 1001)
    assert LipSyncSettings(output_fps=25).output_fps == Fraction(25)
    assert DEFAULT_SETTINGS.replace(output_fps=29.97).output_fps == Fraction(2997, 100)


@pytest.mark.parametrize("fps", [Fraction(24), Fraction(25), Fraction(30), Fraction(30000, 1001), Fraction(60)])
def test_model_and_output_frames_map_consistently(fps):
    num_output = 97
    num_model = math.ceil(num_output * Fraction(25) / fps)
    sources = [j for i in range(num_output) for j in model_frames_of(i, fps)]
    # every model frame takes its face from exactly one output frame, in order
    assert sources == list(range(num_model))
    for i in range(num_output):
        shown = model_frame_shown(i, fps)
        assert 0 <= shown < num_model
        # output frame i shows the model frame on screen at its time ...
        assert shown / Fraction(25) <= i / fps < (shown + 1) / Fraction(25)
        # ... which was generated from the output frame on screen at the model frame's time, at or before frame i
        source = math.floor(shown * fps / 25)
        assert source <= i and source / fps <= shown / Fraction(25) < (source + 1) / fps


@pytest.mark.parametrize(
    "path, resolution",
    [
        ("hub/models--ByteDance--LatentSync-1.6/snapshots/0123abcd512/latentsync_unet.pt", 512),
        ("models/LatentSync-1.5/latentsync_unet.pt", 256),
        ("models/latentsync/latentsync_unet_v1.6.pt", 512),
        ("models/latentsync_1_5/unet.safetensors", 256),
        ("models/unet_512/latentsync_unet.pt", 512),
        ("tools/comfyui-1.5.2/models/latentsync_unet.pt", DEFAULT_RESOLUTION),
        ("checkpoints/latentsync_unet.pt", DEFAULT_RESOLUTION),
    ],
)
def test_resolution_is_inferred_from_the_path(tmp_path, path, resolution):
    found, reason = infer_resolution(tmp_path / path)
    assert found == resolution
    assert reason and "--resolution" not in reason  # the nodes log it too: the setting, not a CLI flag


def test_resolution_sidecar_wins(tmp_path):
    unet = tmp_path / "LatentSync-1.5" / "latentsync_unet.pt"
    unet.parent.mkdir()
    unet.with_suffix(".json").write_text(json.dumps({"version": "1.6"}))
    assert infer_resolution(unet) == (512, f"{unet.with_suffix('.json')} says LatentSync 1.6")
    unet.with_suffix(".json").write_text(json.dumps({"resolution": 384}))
    with pytest.raises(CheckpointError, match="must hold"):
        infer_resolution(unet)
    for not_an_object in ("[512]", '"1.6"', "512", "null"):
        unet.with_suffix(".json").write_text(not_an_object)
        with pytest.raises(CheckpointError, match="must hold a JSON object"):
            infer_resolution(unet)


def test_missing_models_are_named_with_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError) as error:
        find_model_files(tmp_path)
    message = str(error.value)
    for expected in (
        str(tmp_path / "latentsync_unet.pt"),
        str(tmp_path / "whisper" / "tiny.pt"),
        str(tmp_path / "sd-vae-ft-mse"),
        "huggingface.co/ByteDance/LatentSync-1.6",
        "stabilityai/sd-vae-ft-mse",
        "python -m latentsync download",
    ):
        assert expected in message
    with pytest.raises(CheckpointError, match="does not exist"):
        find_model_files(tmp_path, unet=tmp_path / "nope.pt")


def test_stage_clock_does_not_count_nested_time_twice():
    clock = StageClock()

    def slow_items():
        for item in range(3):
            time.sleep(0.01)
            yield item

    with clock.section("outer"):
        assert list(clock.iterate(slow_items(), "inner")) == [0, 1, 2]
        time.sleep(0.02)
    assert 0.03 <= clock.seconds["inner"] < 0.06
    assert 0.02 <= clock.seconds["outer"] < 0.04


def _parse(*args: str):
    """Parse ``lipsync`` arguments with the command's own parser, in this process."""
    from latentsync._cli import lipsync

    parser = argparse.ArgumentParser(prog="latentsync")
    lipsync.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["lipsync", *args])


def test_cli_refuses_out_of_bounds_numbers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse("--video", "v.mp4", "--output", "o.mp4", "--steps", "0")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--steps" in error and "between 1 and 100" in error


@pytest.mark.parametrize(
    "option, value",
    [("--guidance", "nan"), ("--guidance", "inf"), ("--guidance", "-inf"), ("--output-fps", "nan"),
     ("--output-fps", "inf"), ("--seed", "nan"), ("--face-index", "nan")],
)  # fmt: skip
def test_cli_refuses_nan_and_infinity(capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        _parse("--video", "v.mp4", "--output", "o.mp4", option, value)
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.parametrize("name", ["guidance_scale", "num_inference_steps", "seed", "num_frames", "output_fps"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_settings_refuse_nan_and_infinity(name, value):
    with pytest.raises(ConfigError, match=name):
        LipSyncSettings(**{name: value})


def test_speed_and_training_settings_refuse_nan():
    from latentsync.pipeline.speed import SpeedSettings, parse_switches
    from train.config import load_config

    with pytest.raises(ConfigError, match="window_batch"):
        SpeedSettings(window_batch=math.nan)
    with pytest.raises(ConfigError, match="vae_batch"):
        parse_switches("vae_batch=nan")
    for override in ("optimizer.lr=.nan", "run.sync_loss_weight=.nan", "validation.guidance_scale=.inf"):
        with pytest.raises(ConfigError, match=override.split("=")[0]):
            load_config("stage2", "tiny_stage2", [override])


def test_one_fps_parser_everywhere():
    from latentsync.audio.chunks import centre_rows
    from latentsync.media.timeline import parse_fps, plan_timeline

    # floats to the nearest simple fraction, text exactly, the same wherever a frame rate enters
    assert parse_fps(30000 / 1001) == Fraction(30000, 1001) == parse_fps("30000/1001")
    assert parse_fps(29.97) == Fraction(2997, 100) == parse_fps("29.97")
    assert LipSyncSettings(output_fps=30000 / 1001).output_fps == Fraction(30000, 1001)
    assert plan_timeline(100, 4, 30000 / 1001).fps == Fraction(30000, 1001)
    assert list(centre_rows([0, 1000], 30000 / 1001)) == list(centre_rows([0, 1000], Fraction(30000, 1001)))
    for bad in ("nan", math.nan, math.inf, 0, -25, "fast", "1/0"):
        with pytest.raises(ConfigError, match="fps"):
            parse_fps(bad)


def test_cli_options_become_settings():
    from latentsync._cli.options import settings_from_options

    args = _parse("--video", "v.mp4", "--output", "o.mp4", "--face-index", "1", "--output-fps", "30000/1001")
    settings = settings_from_options(args, LipSyncSettings)
    assert settings == DEFAULT_SETTINGS.replace(face_index=1, output_fps=Fraction(30000, 1001))
    args = _parse("--video", "v", "--output", "o", "--resolution", "512", "--no-landmark-filter", "--steps", "3")
    assert settings_from_options(args, LipSyncSettings) == DEFAULT_SETTINGS.replace(
        resolution=512, landmark_filter=False, num_inference_steps=3
    )


def test_every_setting_is_a_cli_option_with_its_default_in_the_help(capsys):
    with pytest.raises(SystemExit):
        _parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    for name, spec in SETTING_SPECS.items():
        assert spec.option(name) in text
    for expected in ("default 20", "between 1 and 100", "default 1.5", "default pingpong", "2^64-1", "default on"):
        assert expected in text
    # every option's help states its default
    options = [chunk.split()[0] for chunk in text.split(" --")[1:]]
    helps = text.split("options: ")[1]
    for option in ("--device", "--speed", "--detector-models", "--threads", "--deepcache", "--output-fps"):
        assert option[2:] in options
        assert "default" in helps.split(option + " ", 1)[1].split(" --", 1)[0], option
