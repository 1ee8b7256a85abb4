"""One long job at a time for a panel, in a napari thread worker (the viewer stays responsive).

``JobRunner`` starts the job with a ``cancel`` callable, answers Stop, tells the panel when the
job runs and ends (``on_running``), and drops every callback once the panel is closed (its
controls are gone then). ``failure`` turns a job's exception into the one line shown to the
user, the same way for every panel.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from napari.qt.threading import create_worker

from ..errors import Cancelled, DunetError

logger = logging.getLogger(__name__)


class JobRunner:
    """Runs ``function(*args, cancel=..., **kwargs)`` for the panel ``widget``."""

    def __init__(self, widget: Any, on_running: Callable[[bool], None]):
        self.worker: Any = None
        self.stop_requested = threading.Event()
        self.alive = True
        self._on_running = on_running
        widget.native.destroyed.connect(self.close)

    def start(self, function: Callable, *args: Any, returned: Callable[[Any], None],
              errored: Callable[[Exception], None], yielded: Callable[[Any], None] | None = None,
              aborted: Callable[[], None] | None = None, **kwargs: Any) -> bool:
        """Start the job unless one runs; the handlers run in the GUI thread while the panel lives."""
        if self.worker is not None:
            return False
        self.stop_requested.clear()
        self._on_running(True)
        handlers = {"returned": returned, "errored": errored, "yielded": yielded, "aborted": aborted}
        connect = {name: self._while_alive(handler) for name, handler in handlers.items()
                   if handler is not None}
        self.worker = create_worker(function, *args, cancel=self.stop_requested.is_set,
                                    _connect={**connect, "finished": self._finished}, **kwargs)
        return True

    def stop(self) -> None:
        """Ask the job to stop (it polls ``cancel()``)."""
        self.stop_requested.set()

    def close(self, *_: Any) -> None:
        """The panel is gone: stop the job and call nothing of the panel's any more."""
        self.alive = False
        self.stop()

    def _finished(self) -> None:
        self.worker = None
        if self.alive:
            self._on_running(False)

    def _while_alive(self, handler: Callable[..., None]) -> Callable[..., None]:
        return lambda *args: handler(*args) if self.alive else None


def failure(exc: BaseException, job: str, out_of_memory: str,
            cancelled: str = "Stopped.") -> tuple[str, str]:
    """``(kind, text)`` to show for a job's exception: kind ``"info"`` when the user cancelled
    it, else ``"error"``; unexpected exceptions are logged with their traceback."""
    if isinstance(exc, Cancelled):
        return "info", cancelled
    if isinstance(exc, DunetError):
        return "error", str(exc)
    if isinstance(exc, MemoryError):
        return "error", out_of_memory
    logger.error("%s failed", job, exc_info=exc)
    return "error", f"{job} failed: {type(exc).__name__}: {exc}"
