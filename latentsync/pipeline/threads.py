"""Thread use of the pipeline: small per-frame tensor work on one intra-op thread."""

from __future__ import annotations

from contextlib import contextmanager

import torch


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
