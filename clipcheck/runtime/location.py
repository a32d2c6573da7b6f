"""Which line of the user's code made the call we are looking at."""

from __future__ import annotations

import os
import sys
import threading
from types import FrameType

import torch

import clipcheck

# Frames inside these folders are machinery, not the offending call.
_MACHINERY = tuple(
    os.path.dirname(module.__file__) + os.sep
    for module in (torch, clipcheck)
    if module.__file__ is not None
)


def user_location(frame: FrameType | None = None, thread: int | None = None) -> str | None:
    """``file:line`` of the innermost frame outside torch and clipcheck.

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
        if not filename.startswith(_MACHINERY) and not filename.startswith("<frozen"):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None
