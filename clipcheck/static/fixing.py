"""Fixes, offered only where the edit is certain: moving a clip statement next to its anchor
in the same block (the backward it must follow, the step it must precede), or wrapping a
stored parameter generator in ``list(...)`` where it is created.

A fix is a set of whole-line or in-line text edits, described in the JSON ``fix`` field the
way Ruff describes its own: ``applicability`` (``safe`` or ``unsafe``), ``message`` and
``edits`` with 1-based ``location``/``end_location`` (end exclusive) and ``content``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

import libcst as cst
from libcst.metadata import CodeRange

from clipcheck.sources import source_lines
from clipcheck.static.events import Event, Origin
from clipcheck.static.syntax import children

Positions = Mapping[cst.CSTNode, CodeRange]
# Words of loss scaling: where they appear, where a clip belongs depends on ``unscale_``.
SCALING = ("GradScaler", "unscale_", ".scale(")


def _edit(start: tuple[int, int], end: tuple[int, int], content: str) -> dict[str, object]:
    return {"content": content, "location": {"row": start[0], "column": start[1]},
            "end_location": {"row": end[0], "column": end[1]}}


class FixPlanner:
    """Builds fixes for one module; parents are computed once, on the first request."""

    def __init__(self, module: cst.Module, positions: Positions, code: str, text: str) -> None:
        self.module = module
        self.code = code  # the whole file's text (the module may be the screen's reduction)
        self.positions = positions
        self.text = text  # the module's own
        self._parents: dict[cst.CSTNode, cst.CSTNode] | None = None
        self._orders: dict[int, dict[int, int]] = {}

    @cached_property
    def lines(self) -> list[str]:
        return source_lines(self.text, keepends=True)

    def _parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        if self._parents is None:
            parents: dict[cst.CSTNode, cst.CSTNode] = {}

            def visit(parent: cst.CSTNode) -> None:
                for child in children(parent):
                    parents[child] = parent
                    visit(child)

            visit(self.module)
            self._parents = parents
        return self._parents.get(node)

    def _statement(self, event: Event) -> tuple[cst.SimpleStatementLine, cst.CSTNode] | None:
        """The line holding ``event``'s call alone as an expression statement, and its block."""
        if event.chain or event.origin is not Origin.SOURCE or not isinstance(event.node, cst.Call):
            return None
        expr = self._parent(event.node)
        line = self._parent(expr) if isinstance(expr, cst.Expr) else None
        if not isinstance(line, cst.SimpleStatementLine) or len(line.body) != 1:
            return None
        block = self._parent(line)
        return (line, block) if block is not None else None

    def _order(self, block: cst.CSTNode) -> dict[int, int]:
        """Where each statement of ``block`` stands in it, by identity, found once per block
        (a node compares through a Python call: searching a long block for each move costs
        its square)."""
        order = self._orders.get(id(block))
        if order is None:
            order = self._orders[id(block)] = {id(s): i for i, s in enumerate(getattr(block, "body", ()))}
        return order

    def _rows(self, node: cst.CSTNode) -> tuple[int, int]:
        where = self.positions[node]
        return where.start.line, where.end.line

    @cached_property
    def _scales(self) -> bool:
        """Whether the module's text mentions loss scaling anywhere."""
        return any(word in self.code for word in SCALING)

    def _plain(self, anchor: Event) -> bool:
        """``loss.backward()`` or ``optimizer.step()`` in a module without loss scaling: next to
        ``scaler.scale(loss).backward()``, ``scaler.step(optimizer)`` or
        ``accelerator.backward(loss)`` a moved clip could see scaled gradients."""
        call = anchor.node
        if not isinstance(call, cst.Call) or any(a.keyword is None for a in call.args):
            return False
        receiver = call.func.value if isinstance(call.func, cst.Attribute) else None
        return not isinstance(receiver, cst.Call) and not self._scales

    def move(self, clip: Event, anchor: Event, after: bool) -> dict[str, object] | None:
        """Move the clip's line to just after (``after``) or just before its anchor's line,
        when both are lone expression statements of the same block."""
        if not self._plain(anchor):
            return None
        found, target = self._statement(clip), self._statement(anchor)
        if found is None or target is None or found[1] is not target[1]:
            return None
        order = self._order(found[1])
        mine, theirs = order.get(id(found[0])), order.get(id(target[0]))
        if mine is None or theirs is None or (mine < theirs) != after:
            return None
        first, last = self._rows(found[0])
        anchor_first, anchor_last = self._rows(target[0])
        text = "".join(self.lines[first - 1:last])
        if not text.endswith("\n"):
            return None  # the clip is the file's last line without a newline: leave it
        removal = _edit((first, 1), (last + 1, 1), "")
        at = anchor_last + 1 if after else anchor_first
        where = f"after the backward pass at line {anchor_first}" if after else \
            f"before the step at line {anchor_first}"
        return {"applicability": "unsafe", "message": f"Move the clip {where}",
                "edits": [removal, _edit((at, 1), (at, 1), text)]}

    def wrap_in_list(self, binding: Event) -> dict[str, object] | None:
        """``params = model.parameters()`` becomes ``params = list(model.parameters())``."""
        if binding.chain or binding.origin is not Origin.SOURCE:
            return None
        node = binding.node
        value = getattr(node, "value", None)
        if not isinstance(node, (cst.Assign, cst.AnnAssign)) or not isinstance(value, cst.Call):
            return None
        where = self.positions[value]
        start = (where.start.line, where.start.column + 1)
        end = (where.end.line, where.end.column + 1)
        return {"applicability": "safe",
                "message": f"Store `list({self.module.code_for_node(value)})`",
                "edits": [_edit(end, end, ")"), _edit(start, start, "list(")]}
