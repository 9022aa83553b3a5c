"""Thread use of the pipeline: small per-frame tensor work on one intra-op thread, and video decode and encode in
background threads (the ``io_overlap`` speed switch)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

from ..errors import ConfigError

T = TypeVar("T")


@contextmanager
def one_torch_thread():
    """Run small per-frame tensor work (the warps and blurs of align and paste) on one intra-op thread.

    Splitting a 280 x 210 warp across threads costs more than it saves; on two busy cores one paste took 80 ms with
    two threads and 6 ms with one. The previous thread count is restored on exit (it is process-wide state).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_DONE = object()


def prefetch(items: Iterable[T], depth: int = 8) -> Iterator[T]:
    """Yield ``items`` in order while a background thread produces up to ``depth`` of them ahead.

    For decoding: PyAV and OpenCV release the GIL while they work, so the next frames decode while the caller
    computes. An exception in the producer is raised in the caller at the item where it happened. Closing the
    returned iterator (or leaving a ``for`` loop early) stops the thread and closes ``items`` if it can be.
    """
    if depth < 1:
        raise ConfigError(f"prefetch depth must be >= 1, got {depth}")
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((_DONE, None))
        except Exception as error:  # noqa: BLE001 (handed to the consumer)
            buffer.put((_DONE, error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="latentsync-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get(timeout=0.1)  # unblock a producer waiting on a full buffer
            except queue.Empty:
                pass
        thread.join()


@contextmanager
def background_calls(function: Callable[[T], object], depth: int = 8) -> Iterator[Callable[[T], None]]:
    """Run ``function(item)`` for every submitted item, in order, in one background thread.

    For encoding: ``with background_calls(writer.write_frame) as submit: submit(frame)``. At most ``depth`` items
    wait; `submit` blocks when the thread falls behind. Leaving the block waits for the queue to drain. An
    exception in ``function`` is raised by the next `submit` or on leaving the block, and later items are dropped.
    """
    if depth < 1:
        raise ConfigError(f"background queue depth must be >= 1, got {depth}")
    pending: queue.Queue = queue.Queue(maxsize=depth)
    errors: list[BaseException] = []

    def consume() -> None:
        while True:
            item = pending.get()
            if item is _DONE:
                return
            if not errors:
                try:
                    function(item)
                except Exception as error:  # noqa: BLE001 (handed to the submitter)
                    errors.append(error)

    thread = threading.Thread(target=consume, name="latentsync-background", daemon=True)
    thread.start()

    def submit(item: T) -> None:
        if errors:
            raise errors[0]
        pending.put(item)

    try:
        yield submit
    finally:
        pending.put(_DONE)
        thread.join()
    if errors:
        raise errors[0]
