"""The training loop every mode shares (`train.loop`): logged losses are means over the logging interval, the tracker
records the run's config, and a resumed epoch skips the micro-batches it had consumed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from train.checkpoints import TrainingProgress
from train.config import load_config
from train.loop import flat_config, train_loop
from train.runtime import create_accelerator

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # accelerate runs: tens of seconds


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


class Numbers(Dataset):
    """Item ``i`` is ``{"value": i}``; `set_epoch` is what the trainers' datasets have."""

    def __init__(self, count: int):
        self.count = count
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        return {"value": torch.tensor(float(index))}

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def _scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, dict[int, float]] = {}
    for events in log_dir.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return found


def _run(tmp_path: Path, progress: TrainingProgress, max_steps: int, report: bool) -> tuple[Numbers, list[int]]:
    overrides = ["run.log_every_steps=2", "run.gradient_accumulation_steps=2", f"run.max_train_steps={max_steps}",
                 f"run.report_to={'tensorboard' if report else ''}", "optimizer.lr=0.5"]  # fmt: skip
    config = load_config("syncnet", "tiny_syncnet", overrides)
    accelerator = create_accelerator(config, tmp_path)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    dataset = Numbers(8)
    loader = DataLoader(dataset, batch_size=1, shuffle=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if report:
        accelerator.init_trackers("loop", config=flat_config(config))
    seen: list[int] = []

    def loss_terms(model, batch):
        seen.append(int(batch["value"].item()))
        # the value itself: its mean over micro-batches is known; the model term gives gradients
        return {"loss": batch["value"].mean() + 0 * model(batch["value"][:, None]).sum(), "twice": 2 * batch["value"].mean()}

    def after_step(step, terms):
        return {"after": float(step)}

    train_loop(config, accelerator, model, optimizer, scheduler, loader, dataset, progress, loss_terms, after_step)
    accelerator.end_training()
    return dataset, seen


def test_logged_losses_are_interval_means_with_the_config(tmp_path):
    progress = TrainingProgress()
    _, seen = _run(tmp_path, progress, max_steps=4, report=True)
    assert seen == list(range(8)) and progress.global_step == 4  # 2 micro-batches per optimizer step

    scalars = _scalars(tmp_path / "logs")
    # logged at step 1 (first), 2 and 4 (every 2 steps): the mean over every micro-batch since the last point
    assert scalars["train/loss"] == {1: 0.5, 2: 2.5, 4: 5.5}
    assert scalars["train/twice"] == {1: 1.0, 2: 5.0, 4: 11.0}
    assert scalars["after"] == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
    assert scalars["lr"] == {1: 0.5, 2: 0.5, 4: 0.5}
    (hparams_file,) = (tmp_path / "logs" / "loop").rglob("hparams.yml")
    hparams = hparams_file.read_text()
    assert "optimizer.lr: 0.5" in hparams and "run.gradient_accumulation_steps: 2" in hparams


def test_a_resumed_epoch_skips_what_it_had_consumed(tmp_path):
    progress = TrainingProgress(global_step=1, epoch=0, batches_in_epoch=2)
    dataset, seen = _run(tmp_path, progress, max_steps=6, report=False)
    # items 2..7 finish epoch 0, then epoch 1 starts over; 5 steps of 2 micro-batches
    assert seen == [2, 3, 4, 5, 6, 7, 0, 1, 2, 3] and sorted(set(dataset.epochs)) == [0, 1]
    assert (progress.global_step, progress.epoch, progress.batches_in_epoch) == (6, 1, 4)
