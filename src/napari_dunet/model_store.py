"""The checkpoint the plugin's widgets share (Qt-free, imports torch only to load a model).

"Segment lesion" segments with the current checkpoint; a widget that makes a new checkpoint
(e.g. after fine-tuning) hands it over with ``set_checkpoint``, and every widget listening with
``subscribe`` sees the change::

    from napari_dunet import model_store
    model_store.set_checkpoint("runs/finetuned.safetensors", model=trained_model)

Call ``set_checkpoint`` from the GUI thread (in a napari worker, from its ``returned`` or
``yielded`` handler): listeners update widgets. Until something is set, the current checkpoint
is the bundled default weights, if the package has them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

Listener = Callable[[Path | None], None]

_lock = threading.Lock()
_state: dict[str, Any] = {"path": None, "key": None, "model": None, "metadata": None}
_listeners: list[Listener] = []


def current_checkpoint() -> Path | None:
    """The checkpoint in use: the last one set, else the bundled default (None if neither)."""
    if _state["path"] is not None:
        return _state["path"]
    from . import weights

    return weights.default_checkpoint()


def using_default() -> bool:
    """True while the current checkpoint is the bundled default weights."""
    from . import weights

    return _state["path"] is None or _state["path"] == weights.default_checkpoint()


def set_checkpoint(path: str | os.PathLike | None, *, model: Any = None,
                   metadata: dict[str, Any] | None = None) -> None:
    """Make ``path`` the current checkpoint (None: back to the default) and tell the listeners.

    ``model``/``metadata``, when given, are the already-loaded network for ``path`` and are
    used as they are instead of reading the file again.
    """
    path = Path(path) if path is not None else None
    with _lock:
        if path == _state["path"] and model is None:
            return
        _state.update(path=path, key=None, model=None, metadata=None)
        if model is not None:
            _state.update(key=_file_key(path), model=model, metadata=metadata or {})
    for listener in list(_listeners):
        listener(path)


def load_model(device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """``(model, metadata)`` of the current checkpoint, on ``device``; loaded once per file version.

    Raises ``CheckpointError`` when there is no checkpoint or it cannot be loaded.
    """
    from .checkpoint import load_checkpoint
    from .errors import CheckpointError

    path = current_checkpoint()
    if path is None:
        raise CheckpointError("No weights are chosen and none are bundled with the plugin; "
                              "choose a checkpoint file (.safetensors).")
    with _lock:
        key = _file_key(path)
        if _state["model"] is None or _state["key"] != key:
            model, metadata = load_checkpoint(path, device="cpu")
            _state.update(key=key, model=model, metadata=metadata)
        model, metadata = _state["model"], _state["metadata"]
    return model.to(device), metadata


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call ``listener(path)`` whenever the checkpoint changes; returns an unsubscribe function."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


def _file_key(path: Path | None) -> tuple | None:
    """Identity of a file version (path, inode, size, modification time)."""
    if path is None or not path.is_file():
        return (str(path),)
    stat = path.stat()
    return (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
