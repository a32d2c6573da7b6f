"""Which line of the user's code made the call we are looking at."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from types import CodeType, FrameType

import torch

import clipcheck


def _package_folders(names: tuple[str, ...]) -> list[str]:
    """The folders of the packages installed under ``names``, found without importing them."""
    folders: list[str] = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            folders.extend(spec.submodule_search_locations)
    return folders


def _prefixes(folders: list[str]) -> tuple[str, ...]:
    return tuple(os.path.join(f, "") for f in folders)


_LIGHTNING = _prefixes(_package_folders(("lightning", "pytorch_lightning")))
# torch, clipcheck and the training frameworks: their frames are machinery, not the offending call.
_MACHINERY = _prefixes([os.path.dirname(module.__file__) for module in (torch, clipcheck) if module.__file__]
                       + _package_folders(("accelerate", "lightning", "pytorch_lightning", "lightning_fabric",
                                           "transformers", "deepspeed")))
_USER, _LIBRARY, _LIGHTNING_LIBRARY = 0, 1, 2
# Per file name, what its frames are. Keyed by the name, whose hash the string caches (a code
# object's hash is recomputed from its contents on every lookup).
_kind_of: dict[str, int] = {}


def _classify(filename: str) -> int:
    if filename.startswith(_LIGHTNING):
        kind = _LIGHTNING_LIBRARY
    elif filename.startswith(_MACHINERY) or filename.startswith("<frozen"):
        kind = _LIBRARY
    else:
        kind = _USER
    _kind_of[filename] = kind
    return kind


def _training_step_of(frame: FrameType) -> str | None:
    """Under Lightning's automatic optimization, the step (with the closure that runs
    ``training_step``, zero-grad and backward) is called by ``LightningModule.optimizer_step``:
    the user's code behind it is their module's ``training_step``. Only that frame's ``self``
    counts: the strategy's and precision plugin's ``optimizer_step`` also run for a step the
    user calls by hand (manual optimization), whose own line is then the one to name."""
    code = getattr(getattr(type(frame.f_locals.get("self")), "training_step", None), "__code__", None)
    if code is not None and _classify(code.co_filename) == _USER:
        return f"{code.co_filename}:{code.co_firstlineno}"
    return None


# ``file:line`` per code object (by id; the entry holds the code object, so the id is not
# reused) and instruction: a training loop makes its calls from a few lines, again and again,
# and finding a line from an instruction scans the function's line table.
_lines: dict[tuple[int, int], tuple[CodeType, str]] = {}
_MAX_LINES = 100_000


def _line_of(code: CodeType, frame: FrameType, key: tuple[int, int]) -> str:
    if len(_lines) >= _MAX_LINES:  # code made on the fly (exec in a loop): start over
        _lines.clear()
    line = f"{code.co_filename}:{frame.f_lineno}"
    _lines[key] = (code, line)
    return line


def user_location(frame: FrameType | None = None, thread: int | None = None) -> str | None:
    """``file:line`` of the innermost frame outside torch, clipcheck and the training
    frameworks, starting at ``frame`` (by default the caller's); when Lightning's automatic
    optimization called it from ``trainer.fit``, the ``training_step`` of the module being
    trained.

    ``thread`` picks another thread's stack: autograd hooks can run on the engine's threads
    while the training thread waits in ``backward()``.
    """
    if frame is None:
        if thread is not None and thread != threading.get_ident():
            frame = sys._current_frames().get(thread)
        else:
            frame = sys._getframe(1)
    lightning_step: str | None = None
    kind_of = _kind_of
    while frame is not None:
        code = frame.f_code
        kind = kind_of.get(code.co_filename)
        if kind is None:
            kind = _classify(code.co_filename)
        if kind == _USER:
            if lightning_step is not None:
                return lightning_step
            key = (id(code), frame.f_lasti)
            known = _lines.get(key)
            return known[1] if known is not None else _line_of(code, frame, key)
        if kind == _LIGHTNING_LIBRARY and lightning_step is None and code.co_name == "optimizer_step":
            lightning_step = _training_step_of(frame)
        frame = frame.f_back
    return lightning_step
