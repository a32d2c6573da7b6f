"""DDP's ``no_sync()`` (and accelerate's ``accelerator.no_sync(model)``, Fabric's
``fabric.no_backward_sync(model)``): DDP decides in the forward pass whether the backward
will all-reduce, so the context must wrap the forward as well as the backward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import libcst as cst

from clipcheck.static.bindings import Kind
from clipcheck.static.events import EventKind
from clipcheck.static.frameworks import Context, Framework, register
from clipcheck.static.syntax import children, statements

if TYPE_CHECKING:
    from clipcheck.static.names import ModuleNames
    from clipcheck.static.recognizer import Recognizer

DDP = "ddp"
DDP_CLASSES = frozenset({"torch.nn.parallel.DistributedDataParallel",
                         "torch.nn.parallel.distributed.DistributedDataParallel"})
ON_MODULE = frozenset({"no_sync"})                       # ``model.no_sync()``
ON_ARGUMENT = frozenset({"no_sync", "no_backward_sync"})  # ``accelerator.no_sync(model)``
# Calls a block may make that run no forward pass: the backward and its loss scaling.
BACKWARD_ONLY_CALLS = frozenset({"backward", "manual_backward", "scale"})


def _calls(node: cst.CSTNode) -> list[cst.Call]:
    found = [node] if isinstance(node, cst.Call) else []
    for child in children(node):
        found.extend(_calls(child))
    return found


def _simple(body: Sequence[cst.BaseStatement]) -> list[cst.CSTNode] | None:
    """The simple statements of ``body``, also inside ``for`` loops over what needs no call
    (``for loss in losses[:-1]:``); ``None`` for any other compound statement."""
    found: list[cst.CSTNode] = []
    for stmt in body:
        if isinstance(stmt, cst.SimpleStatementLine):
            found.append(stmt)
        elif isinstance(stmt, cst.For) and stmt.orelse is None and not _calls(stmt.iter):
            inner = _simple(statements(stmt.body))
            if inner is None:
                return None
            found.extend(inner)
        else:
            return None
    return found


def _backward_only(body: Sequence[cst.BaseStatement]) -> bool:
    """The block runs backward passes and nothing else that calls anything: the forward that
    made their losses ran before it."""
    simple = _simple(body)
    if simple is None:
        return False
    calls = [c for stmt in simple for c in _calls(stmt)]
    names = [c.func.attr.value if isinstance(c.func, cst.Attribute) else None for c in calls]
    return any(n in ("backward", "manual_backward") for n in names) and all(
        n in BACKWARD_ONLY_CALLS for n in names)


@register
class NoSync(Framework):
    def wrapper(self, names: ModuleNames, value: cst.BaseExpression) -> str:
        return DDP if (isinstance(value, cst.Call) and names.is_imported(value.func)
                       and names.qualify(value.func) in DDP_CLASSES) else ""

    def context(self, recognizer: Recognizer, expr: cst.BaseExpression,
                body: Sequence[cst.BaseStatement]) -> Context | None:
        if isinstance(expr, cst.IfExp):  # ``nullcontext() if last else model.no_sync()``
            return self.context(recognizer, expr.body, body) or self.context(recognizer, expr.orelse, body)
        if not (isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute)):
            return None
        method = expr.func.attr.value
        positional = [a.value for a in expr.args if a.keyword is None and not a.star]
        if method in ON_MODULE and not expr.args:
            model = expr.func.value
        elif method in ON_ARGUMENT and positional:
            model = positional[0]
        else:
            return None
        if (not _backward_only(body) or recognizer.module_wrapper(model) not in ("", DDP)
                or recognizer.kind(model) is Kind.ENGINE):
            # FSDP1 and DeepSpeed engines read the flag at backward time: wrapping it is enough.
            return Context()
        key = recognizer.key(model)
        return Context(events=(recognizer.event(EventKind.LATE_NO_SYNC, expr, expr,
                                                models=frozenset({key}) if key else None),))
