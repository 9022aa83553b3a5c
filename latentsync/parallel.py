"""Run a pile of independent items — clips to prepare, rows to lip-sync — in this process, in local worker processes,
or on a Ray cluster, with the same results whichever way, resumable, one bad item never stopping the others.

One plain, top-level function does the work of one item in every mode::

    def prepare_clip(payload, report) -> dict:      # report(done, total): progress of this item (optional)
        model = worker_cache("syncnet", lambda: load_syncnet(payload["syncnet"], device=worker_device()))
        ...                                          # write outputs atomically (temp name + rename)
        return {"frames": 250}                       # a small JSON-able record

    items = [Item(key=str(path), payload={...}, fingerprint=fingerprint(path, options), weight=frames), ...]
    results = run_items(prepare_clip, items, workers=2, record=RunRecord(out / "run.jsonl"), label="clips")

=================  =====================================================================================
mode               how items run
=================  =====================================================================================
``workers=1``      here, in input order (no extra process; models loaded once in this process)
``workers=N``      N spawned worker processes; with GPUs, worker *i* sees GPU ``i % n_gpus`` only, and each
                   worker uses ``cores // N`` torch threads; `worker_pool` keeps them for several calls
``ray_address``    one Ray task per item (``num_cpus`` / ``num_gpus`` from the arguments, a GPU fraction
                   shares a GPU); ``"local"`` starts a local cluster of ``workers`` CPUs, ``"auto"`` or an
                   address joins a running one (every node needs this package installed); Ray is imported
                   only then; `ray_cluster` keeps one connection open across several calls
=================  =====================================================================================

A failing item is a value, not a crash: its exception becomes ``ItemResult(status="failed", error="Type: msg")``.
A worker process that dies (killed, out of memory, a crash in native code) takes its items with it; they are run
once more, and fail the second time. Results come back in input order; ``on_result`` sees them in completion
order. With a `RunRecord`, every finished item is appended to a JSON-lines file as it completes, so a run that was
killed skips on the next run what it finished (same key *and* same fingerprint); failed items are run again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, TypeVar

from .errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Task = Callable[[Any, Callable[[float, float], None]], dict]

# Items in flight per worker: one running, one queued, so a worker never waits for the driver.
_IN_FLIGHT_PER_WORKER = 2
# A worker process that died is replaced and its items are run this many more times.
_CRASH_RETRIES = 1
# How often the driver refreshes progress while it waits for results (seconds).
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Item:
    """One unit of work.

    Args:
        key: stable, unique id of the item (e.g. the input path); results and the run record are keyed by it.
        payload: the task's argument; picklable.
        fingerprint: what decides the item's result (inputs and options, see `fingerprint`); a run record skips
            the item only when key *and* fingerprint match a finished run.
        weight: the item's expected cost (frames, seconds of video) for the progress bar and the ETA.
    """

    key: str
    payload: Any
    fingerprint: str = ""
    weight: float = 1.0


@dataclass
class ItemResult:
    """What became of one item: ``status`` is ``"done"``, ``"skipped"`` (finished by an earlier run, ``record`` is
    that run's) or ``"failed"`` (``error`` is ``"ErrorType: message"``)."""

    key: str
    status: str
    record: Optional[dict] = None
    error: Optional[str] = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of ``parts`` (JSON-able values; paths and other objects by their ``str``)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunRecord:
    """The driver's resume file: one JSON line per finished item, appended and synced as each item completes.

    A run that is killed leaves at most a torn last line, which is ignored. One driver writes a record at a time.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._latest: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self._latest[entry["key"]] = entry
                except (ValueError, KeyError, TypeError):
                    logger.warning("%s: ignoring a damaged line (an interrupted write)", self.path)

    def lookup(self, key: str, fingerprint: str) -> Optional[dict]:
        """The record of ``key`` if an earlier run finished it with the same fingerprint, else None."""
        entry = self._latest.get(key)
        if entry is None or entry["status"] != "done" or entry["fingerprint"] != fingerprint:
            return None
        return entry["record"]

    def add(self, result: ItemResult, fingerprint: str) -> None:
        entry = {"fingerprint": fingerprint, **asdict(result)}
        self._latest[result.key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry, default=str) + "\n")
            file.flush()
            os.fsync(file.fileno())


# ----------------------------------------------------------------------------------------------------------------
# Inside a worker


_worker_cache: dict[str, Any] = {}
# Set in worker processes: where report() sends (key, done, total).
_progress_queue: Any = None


def worker_cache(name: str, build: Callable[[], T]) -> T:
    """``build()`` once per worker process (and once in the driver with ``workers=1``), then the same object:
    models are loaded once per worker, not once per item. Give different settings different names."""
    if name not in _worker_cache:
        _worker_cache[name] = build()
    return _worker_cache[name]


def worker_device() -> str:
    """The device a task should run on in this worker: ``"cuda"`` (the worker's own GPU) when one is visible."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _run_item(task: Task, item: Item, report: Callable[[float, float], None]) -> ItemResult:
    """Run one item; any exception becomes a failed result (KeyboardInterrupt and SystemExit pass through)."""
    start = time.perf_counter()
    try:
        record = task(item.payload, report)
    except Exception as error:  # noqa: BLE001 - errors are values: one bad item never stops the others
        logger.debug("item %s failed", item.key, exc_info=True)
        message = f"{type(error).__name__}: {error}"
        return ItemResult(item.key, "failed", error=message, seconds=time.perf_counter() - start)
    return ItemResult(item.key, "done", record=record, seconds=time.perf_counter() - start)


def _queue_reporter(key: str) -> Callable[[float, float], None]:
    def report(done: float, total: float) -> None:
        if _progress_queue is not None:
            _progress_queue.put((key, float(done), float(total)))

    return report


def _run_item_in_worker(task: Task, item: Item) -> ItemResult:
    return _run_item(task, item, _queue_reporter(item.key))


def _init_worker(counter, gpu_ids: list[str], threads: int, progress_queue) -> None:
    """Process-pool initializer: pin this worker to its GPU and thread count before torch starts."""
    global _progress_queue
    _progress_queue = progress_queue
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_ids[index % len(gpu_ids)]
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _ray_run_item(task: Task, item: Item, progress_queue) -> ItemResult:
    global _progress_queue
    _progress_queue = progress_queue
    return _run_item_in_worker(task, item)


# ----------------------------------------------------------------------------------------------------------------
# The driver


# Seconds between redraws of the progress line: live on a terminal; in a log file (CI, a job scheduler, `> log`),
# where every redraw is a new line, a line every half minute.
TERMINAL_REDRAW_SECONDS = 0.1
LOG_REDRAW_SECONDS = 30.0


@dataclass
class _Progress:
    """The driver's view: counts, rates and an ETA by weight, on one tqdm line, redrawn at most every
    `TERMINAL_REDRAW_SECONDS` on a terminal and every `LOG_REDRAW_SECONDS` otherwise (always when an item ends)."""

    label: str
    items: Sequence[Item]
    weight_unit: Optional[str] = None  # shown as "<done>/<total> <unit>" when set
    done: int = 0
    failed: int = 0
    weight_done: float = 0.0
    current: dict[str, float] = field(default_factory=dict)  # key -> fraction done of running items
    start: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        from tqdm import tqdm

        self.weights = {item.key: item.weight for item in self.items}
        self.total_weight = sum(self.weights.values()) or 1.0
        self.bar = tqdm(total=len(self.items), unit="item", dynamic_ncols=True, bar_format="{desc} |{bar}|")
        self.redraw_seconds = TERMINAL_REDRAW_SECONDS if sys.stderr.isatty() else LOG_REDRAW_SECONDS
        self.drawn_at = -float("inf")
        self.refresh(force=True)

    def report(self, key: str, done: float, total: float) -> None:
        if total > 0:
            self.current[key] = min(1.0, done / total)
        self.refresh(force=False)

    def finish(self, result: ItemResult) -> None:
        self.current.pop(result.key, None)
        self.weight_done += self.weights[result.key]
        self.done += result.ok
        self.failed += not result.ok
        self.bar.update(1)
        self.refresh(force=True)

    def refresh(self, force: bool) -> None:
        now = time.perf_counter()
        if not force and now - self.drawn_at < self.redraw_seconds:
            return
        self.drawn_at = now
        elapsed = now - self.start
        finished = self.done + self.failed
        weight = self.weight_done + sum(self.weights[key] * part for key, part in self.current.items())
        eta = elapsed * (self.total_weight - weight) / weight if weight > 0 else None
        parts = [f"{self.label}: {finished}/{len(self.items)}"] + ([f"{self.failed} failed"] if self.failed else [])
        if self.weight_unit is not None:
            parts.append(f"{weight:.0f}/{self.total_weight:.0f} {self.weight_unit}")
        parts.append(f"{finished / elapsed:.2f} {self.label}/s" if finished and elapsed > 0 else f"- {self.label}/s")
        parts.append(f"ETA {_clock(eta)}" if eta is not None else "ETA -")
        if self.current:
            key, part = next(iter(self.current.items()))
            parts.append(f"now {Path(key).name} {part:.0%}")
        self.bar.set_description_str(", ".join(parts), refresh=True)

    def close(self) -> None:
        self.bar.close()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else (
        f"{seconds // 60}:{seconds % 60:02d}")


def run_items(
    task: Task,
    items: Iterable[Item],
    *,
    workers: int = 1,
    ray_address: Optional[str] = None,
    cpus_per_item: float = 1.0,
    gpus_per_item: float = 0.0,
    record: Optional[RunRecord] = None,
    on_result: Optional[Callable[[ItemResult], None]] = None,
    label: str = "items",
    weight_unit: Optional[str] = None,
    show_progress: bool = True,
) -> list[ItemResult]:
    """Run ``task(item.payload, report)`` for every item; see the module docstring for the modes. The progress bar
    counts ``label`` (items) and, with ``weight_unit`` (e.g. ``"frames"``), the items' weights done of all.

    Returns:
        One `ItemResult` per item, in the order of ``items``.
    """
    items = list(items)
    keys = [item.key for item in items]
    if len(set(keys)) != len(keys):
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        raise ConfigError(f"Each item needs its own key; these appear more than once: {duplicated[:5]}.")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}.")

    results: dict[str, ItemResult] = {}
    pending = []
    for item in items:
        old = record.lookup(item.key, item.fingerprint) if record is not None else None
        if old is not None:
            results[item.key] = ItemResult(item.key, "skipped", record=old)
        else:
            pending.append(item)
    if len(pending) < len(items):
        logger.info("%d of %d %s already done by an earlier run: skipped", len(items) - len(pending), len(items), label)

    fingerprints = {item.key: item.fingerprint for item in pending}
    progress = _Progress(label, pending, weight_unit) if show_progress and pending else None

    def finish(result: ItemResult) -> None:
        results[result.key] = result
        if record is not None:
            record.add(result, fingerprints[result.key])
        if progress is not None:
            progress.finish(result)
        if on_result is not None:
            on_result(result)

    def report(key: str, done: float, total: float) -> None:
        if progress is not None and key in fingerprints:  # a late report of an earlier call's item is ignored
            progress.report(key, done, total)

    try:
        if pending and ray_address is not None:
            _run_on_ray(task, pending, ray_address, workers, cpus_per_item, gpus_per_item, finish, report)
        elif pending and workers > 1:
            _run_in_processes(task, pending, workers, finish, report)
        else:
            for item in pending:
                finish(_run_item(task, item, lambda done, total, key=item.key: report(key, done, total)))
    finally:
        if progress is not None:
            progress.close()
    return [results[key] for key in keys]


def _drain(progress_queue, report: Callable[[str, float, float], None]) -> None:
    while True:
        try:
            report(*progress_queue.get_nowait())
        except queue.Empty:
            return


class _WorkerPool:
    """Spawned worker processes (pinned to GPUs and thread counts by `_init_worker`) and the queue their progress
    reports come back on."""

    def __init__(self, workers: int):
        import multiprocessing

        import torch

        self.workers = workers
        self.context = multiprocessing.get_context("spawn")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpu_count = torch.cuda.device_count()
        self.gpu_ids = (visible.split(",") if visible else [str(index) for index in range(gpu_count)])[:gpu_count]
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.progress_queue = self.context.Queue()
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        counter = self.context.Value("i", 0)
        return ProcessPoolExecutor(self.workers, mp_context=self.context, initializer=_init_worker,
                                   initargs=(counter, self.gpu_ids, self.threads, self.progress_queue))

    def restart(self) -> None:
        """Replace the processes (after one died: the executor is broken then)."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = self._start()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


# Pools kept open by `worker_pool`, by worker count.
_open_pools: dict[int, _WorkerPool] = {}


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[None]:
    """Keep ``workers`` local worker processes for the block: the `run_items` calls with that many workers inside it
    share them, so a pipeline of steps starts its workers (imports, models in `worker_cache`) once, not once per
    step. Does nothing for one worker or when such a pool is already open."""
    if workers <= 1 or workers in _open_pools:
        yield
        return
    _open_pools[workers] = pool = _WorkerPool(workers)
    try:
        yield
    finally:
        del _open_pools[workers]
        pool.close()


def _run_in_processes(task: Task, items: list[Item], workers: int, finish, report) -> None:
    shared = _open_pools.get(workers)
    pool = shared or _WorkerPool(workers)
    todo = list(reversed(items))
    crashes = {item.key: 0 for item in items}
    try:
        while todo:
            running: dict[Future, Item] = {}
            try:
                while todo or running:
                    while todo and len(running) < workers * _IN_FLIGHT_PER_WORKER:
                        item = todo.pop()
                        running[pool.executor.submit(_run_item_in_worker, task, item)] = item
                    finished, _ = wait(running, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
                    _drain(pool.progress_queue, report)
                    broken = False
                    for future in finished:
                        if isinstance(future.exception(), BrokenProcessPool):
                            broken = True
                            continue
                        finish(future.result())
                        del running[future]
                    if broken:
                        raise BrokenProcessPool("a worker process died")
            except BrokenProcessPool:
                # A worker died; every item it may have held is in `running`. Run each once more in new processes.
                for item in running.values():
                    crashes[item.key] += 1
                    if crashes[item.key] > _CRASH_RETRIES:
                        finish(ItemResult(item.key, "failed", error="WorkerCrashed: the worker process running this "
                                          "item died (killed, out of memory, or a crash in native code)"))
                    else:
                        todo.append(item)
                logger.warning("a worker process died; starting new workers for %d remaining item(s)", len(todo))
                pool.restart()
        _drain(pool.progress_queue, report)
    finally:
        if shared is None:
            pool.close()


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise ConfigError(
            "Ray is not installed: install the cluster extra (pip install 'ray>=2.9', or pip install '.[cluster]' "
            "from the pack's folder), or run without --ray."
        ) from error
    return ray


@contextlib.contextmanager
def ray_cluster(address: Optional[str], workers: int = 1) -> Iterator[None]:
    """Connect to Ray for the block: ``"local"`` starts a local cluster of ``workers`` CPUs, ``"auto"`` or an address
    joins a running one; it is shut down at the end. Several `run_items` calls inside one block share the connection
    (a pipeline of steps starts Ray once, not once per step). Does nothing when ``address`` is None or Ray is
    already initialised."""
    if address is None:
        yield
        return
    ray = _import_ray()
    if ray.is_initialized():
        yield
        return
    if address == "local":
        # Workers of a local cluster import the driver's code: give them its module search path.
        path = os.pathsep.join(entry for entry in sys.path if entry)
        ray.init(num_cpus=workers, runtime_env={"env_vars": {"PYTHONPATH": path}}, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _run_on_ray(task: Task, items: list[Item], address: str, workers: int, cpus_per_item: float,
                gpus_per_item: float, finish, report) -> None:
    with ray_cluster(address, workers):
        ray = _import_ray()
        from ray.util.queue import Queue as RayQueue

        remote = ray.remote(_ray_run_item).options(num_cpus=cpus_per_item, num_gpus=gpus_per_item,
                                                   max_retries=_CRASH_RETRIES)
        progress_queue = RayQueue()
        slots = max(1, int(ray.cluster_resources().get("CPU", workers) / max(cpus_per_item, 1e-3)))
        todo = list(reversed(items))
        running: dict[Any, Item] = {}
        while todo or running:
            while todo and len(running) < slots * _IN_FLIGHT_PER_WORKER:
                item = todo.pop()
                running[remote.remote(task, item, progress_queue)] = item
            ready, _ = ray.wait(list(running), num_returns=1, timeout=_POLL_SECONDS)
            _drain(progress_queue, report)
            for ref in ready:
                item = running.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as error:  # noqa: BLE001 - a crashed worker fails this item only
                    result = ItemResult(item.key, "failed", error=f"{type(error).__name__}: {error}")
                finish(result)
        _drain(progress_queue, report)
        progress_queue.shutdown()
