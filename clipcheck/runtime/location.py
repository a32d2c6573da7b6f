"""Which line of the user's code made the call we are looking at."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from types import FrameType

import torch

import clipcheck


def _library_folders() -> tuple[str, ...]:
    """The folders of torch, clipcheck and the training frameworks installed (found without
    importing them): their frames are machinery, not the offending call."""
    folders = [os.path.dirname(module.__file__) for module in (torch, clipcheck) if module.__file__]
    for name in ("accelerate", "lightning", "pytorch_lightning", "lightning_fabric", "transformers",
                 "deepspeed"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            folders.extend(spec.submodule_search_locations)
    return tuple(os.path.join(f, "") for f in folders)


_MACHINERY = _library_folders()
# Per file name: whether its frames are machinery. Keyed by the name, whose hash the string
# caches (a code object's hash is recomputed from its contents on every lookup).
_is_machinery: dict[str, bool] = {}


def user_location(frame: FrameType | None = None, thread: int | None = None) -> str | None:
    """``file:line`` of the innermost frame outside torch, clipcheck and the training
    frameworks.

    ``thread`` picks another thread's stack: autograd hooks can run on the engine's threads
    while the training thread waits in ``backward()``.
    """
    if frame is None:
        if thread is not None and thread != threading.get_ident():
            frame = sys._current_frames().get(thread)
        else:
            frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        machinery = _is_machinery.get(filename)
        if machinery is None:
            machinery = filename.startswith(_MACHINERY) or filename.startswith("<frozen")
            _is_machinery[filename] = machinery
        if not machinery:
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None
