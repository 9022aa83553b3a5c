"""Atomic writes through exclusively created temporary files (`latentsync.files`), and every writer using them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsync import files
from latentsync.checkpoint import save_checkpoint
from latentsync.files import atomic_write, create_temporary, save_json, save_png
from train.config import load_config



def write_plot(path: Path) -> Path:
    return save_png(np.zeros((4, 4, 3), np.uint8), path.with_suffix(".png"))


def write_score_json(path: Path) -> Path:
    save_json({"confidence": 1.0}, path.with_suffix(".json"))
    return path.with_suffix(".json")


def write_checkpoint(path: Path) -> Path:
    target = path.with_suffix(".safetensors")
    return save_checkpoint({"w": torch.zeros(2)}, target, container={}, metadata={}, what="test")


def write_training_config(path: Path) -> Path:
    return load_config("lora").save(path.with_suffix(".yaml"))


WRITERS = {
    "score plot": write_plot,
    "score json": write_score_json,
    "checkpoint": write_checkpoint,
    "training config": write_training_config,
}


@pytest.fixture
def planted(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    """Symbolic links at every name a writer could pick for its temporary file (the old ``.<name>.<pid>.tmp``,
    and the random part fixed so the new name is known too), all pointing at a victim file outside the folder."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "out"
    folder.mkdir()
    monkeypatch.setattr(files.secrets, "token_hex", lambda size: "0" * (2 * size))
    for suffix in (".png", ".json", ".safetensors", ".yaml"):
        target = folder / f"result{suffix}"
        (folder / f".{target.name}.{os.getpid()}.tmp").symlink_to(victim)
        (folder / f".result.00000000.tmp{suffix}").symlink_to(victim)
    return {"victim": victim, "folder": folder}


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
def test_writers_never_follow_a_planted_link(planted: dict[str, Path], writer) -> None:
    with pytest.raises(Exception) as caught:
        writer(planted["folder"] / "result")
    assert isinstance(caught.value, FileExistsError) or isinstance(caught.value.__cause__, FileExistsError)
    assert planted["victim"].read_text() == "precious"
    assert not [path for path in planted["folder"].iterdir() if path.name.startswith("result")]


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
def test_writers_leave_only_the_result(tmp_path: Path, writer) -> None:
    written = writer(tmp_path / "result")
    assert [path.name for path in tmp_path.iterdir()] == [written.name]
    assert written.stem == "result" and written.stat().st_size > 0


def test_atomic_write_keeps_the_old_file_when_the_block_fails(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"old": True}))
    with pytest.raises(RuntimeError):
        with atomic_write(path) as temporary:
            temporary.write_text("half")
            raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]


def test_temporary_keeps_the_suffix_beside_the_target(tmp_path: Path) -> None:
    temporary = create_temporary(tmp_path / "clip.mp4", tag="partial")
    assert temporary.parent == tmp_path and temporary.name.startswith(".clip.") and temporary.name.endswith(
        ".partial.mp4"
    )
    assert temporary.stat().st_size == 0 and not temporary.is_symlink()
