"""Multi-process training through the command line: DeepSpeed ZeRO-2 with 2 CPU processes (gloo), and a run killed
with SIGKILL that resumes from its last checkpoint. Both start `python -m train` as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentsync.checkpoint import read_checkpoint
from latentsync.models.unet_loading import load_unet
from train.checkpoints import list_checkpoints
from train.data.tiny import make_tiny_assets

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = ["run.report_to=", "run.gradient_checkpointing=false", "validation.every_n_steps=-1", "data.cache_dir=cache"]


pytestmark = pytest.mark.slow  # real DeepSpeed runs in subprocesses: minutes on a 2-core runner


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train_cli")
    make_tiny_assets(folder / "tiny")
    return folder


def _command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "train", *arguments]


def _environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}


def test_deepspeed_zero2_two_processes(workdir):
    pytest.importorskip("deepspeed")
    command = _command(
        "stage2", "--config", "tiny_stage2", "--num-processes", "2", "--deepspeed", "zero2",
        "run.output_dir=runs/ds", *FAST,
    )  # fmt: skip
    result = subprocess.run(command, cwd=workdir, env=_environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "DistributedType.DEEPSPEED" in result.stderr and "Num processes: 2" in result.stderr
    checkpoint = workdir / "runs/ds/checkpoints/checkpoint-2"
    assert (checkpoint / "pytorch_model").is_dir()  # the ZeRO checkpoint (optimizer shards of both ranks)
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
    unet = load_unet(checkpoint / "unet.pt")  # full float32 weights, strictly loadable
    assert unet.global_step == 2
    initial = read_checkpoint(workdir / "tiny/models/latentsync_unet.pt").state_dict
    trained = read_checkpoint(checkpoint / "unet.pt").state_dict
    changed = {k for k in initial if not (initial[k] == trained[k]).all()}
    assert changed and all("motion_modules." in k or "attentions." in k for k in changed)


def test_sigkill_loses_at_most_one_save_interval(workdir):
    run = workdir / "runs/killed"
    arguments = ["stage2", "--config", "tiny_stage2", "run.output_dir=runs/killed", "ckpt.save_ckpt_steps=1",
                 "ckpt.checkpoints_total_limit=0", "run.max_train_steps=3", *FAST]  # fmt: skip
    process = subprocess.Popen(
        _command(*arguments), cwd=workdir, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not list_checkpoints(run / "checkpoints") and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    survived = list_checkpoints(run / "checkpoints")
    assert survived, "no checkpoint was written before the kill"
    last_step = survived[-1][0]
    assert last_step < 3, "the run finished before it could be killed"

    result = subprocess.run(
        _command(*arguments, "--resume"), cwd=workdir, env=_environment(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from {run / 'checkpoints' / f'checkpoint-{last_step}'} at step {last_step}" in result.stderr
    assert [step for step, _ in list_checkpoints(run / "checkpoints")] == [1, 2, 3]
    assert not list((run / "checkpoints").glob(".tmp-*"))
