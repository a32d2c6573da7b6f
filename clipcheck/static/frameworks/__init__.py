"""One file per framework: its vocabulary rows and the matchers over them.

``torch`` (the core vocabulary), ``naming`` (what names say when bindings are silent) and
``custom`` (a project's own vocabulary) are read directly, as are Lightning's automatic
optimization and accelerate's sync flag. Every framework also defines a :class:`Framework`
subclass decorated with :func:`register`; :func:`registered` imports the package's modules
once and hands the recognizer their matchers, so a new framework adds a file here, its name
to :data:`FRAMEWORKS`, its fixtures and its rule page, and touches nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import libcst as cst

    from clipcheck.static.bindings import Binding, Bindings, Kind, Scope
    from clipcheck.static.names import ModuleNames
    from clipcheck.static.recognizer import Item, Recognizer


class Context(NamedTuple):
    """What entering a ``with`` item means: events at its entry, and (for a block that runs
    one micro-batch of an accumulation window) the flag that is true on the window's last."""

    events: Sequence[Item] = ()
    sync_flag: str | None = None


class Framework:
    """A framework's matchers. Each answers ``None`` for what is not its own."""

    def constructed(self, qualified: str, call: cst.Call) -> Kind | None:
        """The kind of object a call of ``qualified`` builds (``Accelerator(...)``)."""
        return None

    def unpacked(self, qualified: str, call: cst.Call, count: int, bindings: Bindings,
                 scope: Scope | None) -> list[Binding] | None:
        """Bindings by position for ``a, b, ... = qualified(...)``."""
        return None

    def function(self, recognizer: Recognizer, call: cst.Call, qualified: str) -> list[Item] | None:
        """The events of a call of the imported ``qualified`` (``Trainer(...)``)."""
        return None

    def method(self, recognizer: Recognizer, call: cst.Call, receiver: cst.BaseExpression,
               method: str, positional: list[cst.BaseExpression]) -> list[Item] | None:
        """The events of ``receiver.method(...)``."""
        return None

    def context(self, recognizer: Recognizer, expr: cst.BaseExpression,
                body: Sequence[cst.BaseStatement]) -> Context | None:
        """What ``with expr:`` around ``body`` means."""
        return None

    def process_functions(self, names: ModuleNames, module: cst.Module) -> dict[str, bool]:
        """The functions of the module this framework calls once per batch (``Engine(step)``),
        each with whether the framework zeroes the gradients between two calls."""
        return {}

    def wrapper(self, names: ModuleNames, value: cst.BaseExpression) -> str:
        """The name of this framework when ``value`` wraps a module in it (``FSDP(model)``)."""
        return ""


# The modules that register a framework when imported, named here rather than found on disk
# (an installation need not be a folder); a test checks that none is left out.
FRAMEWORKS = ("accelerate", "amp", "ddp", "deepspeed", "fsdp", "ignite", "lightning")
_REGISTERED: list[Framework] = []
_LOADED: list[bool] = []


def register(cls: type[Framework]) -> type[Framework]:
    _REGISTERED.append(cls())
    return cls


def registered() -> Sequence[Framework]:
    """Every framework of this package, its modules imported on first use."""
    if not _LOADED:
        _LOADED.append(True)
        for name in FRAMEWORKS:
            importlib.import_module(f"{__name__}.{name}")
    return _REGISTERED
