"""Answering a stop request at once, however long the work in hand takes (torch-free)."""

from __future__ import annotations

import threading
from typing import Any, Callable, TypeVar

from ..errors import Cancelled

POLL_SECONDS = 0.1
T = TypeVar("T")


def interruptible(work: Callable[[], T], cancel: Callable[[], bool] | None) -> T:
    """``work()``, or ``Cancelled`` within ``POLL_SECONDS`` of ``cancel()`` turning true: the
    work runs in a helper thread, which is then left to finish and its result dropped (not a
    daemon: the interpreter waits for it at exit rather than stopping torch mid-operation)."""
    if cancel is None:
        return work()
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=run, name="napari-dunet-work").start()
    while not finished.wait(POLL_SECONDS):
        if cancel():
            raise Cancelled("Stopped.")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
