"""Results of a callback's copy in a spawned or forked worker (``ddp_spawn``, ``ddp_fork``), back in the main process.

Under a multiprocessing strategy the fit runs in worker processes, each with its own copy of every
callback; the callback object the user holds stays in the main process, where no hook runs. Lightning
returns the model's weights and ``callback_metrics`` to the main process, not callback state, so the
rank-0 copy leaves its results in a directory that only this user can read or write (created with
``tempfile.mkdtemp``, mode 0700, when the callback is built, so that forked copies know it too), and
the main process's callback reads them back (``torch.load(..., weights_only=True)``: plain tensors,
numbers, strings and containers, never code) the first time a result is asked for. The directory is
removed when the main process's callback is collected or the interpreter exits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Any, Optional

import torch

__all__ = ["SpawnedResults"]

_FILE = "results.pt"


def _remove_directory(directory: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked copy collected in a worker must not remove the main process's directory
        shutil.rmtree(directory, ignore_errors=True)


class SpawnedResults:
    """A private channel from a callback's copy in a worker process to the callback in the process that built it.

    Example:
        >>> channel = SpawnedResults()
        >>> channel.in_worker()  # the process that built it
        False
        >>> channel.receive() is None  # nothing was sent
        True
    """

    def __init__(self) -> None:
        self.owner_pid = os.getpid()
        self.directory = tempfile.mkdtemp(prefix="lightning_infomem_")
        weakref.finalize(self, _remove_directory, self.directory, self.owner_pid)

    def in_worker(self) -> bool:
        """Whether this is a copy of the channel in another process than the one that built it."""
        return os.getpid() != self.owner_pid

    def send(self, state: dict[str, Any]) -> None:
        """From a worker: leave ``state`` (tensors, numbers, strings and containers of them) for the main process."""
        path = os.path.join(self.directory, _FILE)
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)

    def receive(self) -> Optional[dict[str, Any]]:
        """In the process that built the channel: the state a worker sent, once (``None`` if none was sent)."""
        if self.in_worker():
            return None
        path = os.path.join(self.directory, _FILE)
        if not os.path.exists(path):
            return None
        try:
            return torch.load(path, weights_only=True)
        finally:
            os.remove(path)
