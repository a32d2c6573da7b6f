"""Control-flow graphs of training code, one event per node.

The graph of a unit (a function, or the module's top-level code) has a node per training event
and empty join nodes for headers. Edges that close a training loop (a loop whose body runs a
backward pass or a step) are marked as back edges, because the dataflow treats "the previous
iteration" differently from "earlier in this iteration". Calls to helpers of the same module
are expanded in place (bounded, recursion-safe), their events tagged with the call site.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import libcst as cst

from clipcheck.static.events import Event, EventKind
from clipcheck.static.names import dotted
from clipcheck.static.recognizer import BoundaryTest, Branch, Inline, Item, Recognizer
from clipcheck.static.syntax import statements

MAX_INLINE_DEPTH = 4
MAX_NODES = 20_000
TRAINING_KINDS = frozenset({EventKind.BACKWARD, EventKind.STEP})
UPDATE_KINDS = frozenset({EventKind.STEP, EventKind.ZERO_GRAD})


@dataclass
class Node:
    id: int
    event: Event | None = None
    succs: list[tuple[int, bool]] = field(default_factory=list)


@dataclass
class Cfg:
    nodes: list[Node]
    entry: int
    exit: int
    # Nodes that run only when this micro-batch updates (behind an accumulation boundary test).
    boundary: frozenset[int] = frozenset()
    # For event nodes inside ``if`` statements: those statements' tests (``if MAX > 0:``).
    guards: dict[int, tuple[cst.BaseExpression, ...]] = field(default_factory=dict)

    def guarded_by(self, node: int) -> frozenset[str]:
        """The names the tests of the ``if`` statements around ``node`` read."""
        return frozenset(n for test in self.guards.get(node, ()) for n in map(dotted, _names(test))
                         if n is not None)

    def events(self) -> list[tuple[int, Event]]:
        return [(n.id, n.event) for n in self.nodes if n.event is not None]

    def reachable_from(self, start: int) -> set[int]:
        seen: set[int] = set()
        stack = [s for s, _ in self.nodes[start].succs]
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(s for s, _ in self.nodes[node].succs)
        return seen


Frontier = list[int]


@dataclass
class _Loop:
    header: int
    breaks: Frontier = field(default_factory=list)
    continues: Frontier = field(default_factory=list)


@dataclass
class _Finally:
    body: Sequence[cst.BaseStatement]


@dataclass
class _Handlers:
    raisers: Frontier = field(default_factory=list)


@dataclass
class _Function:
    returns: Frontier = field(default_factory=list)


_Frame = _Loop | _Finally | _Handlers | _Function

# The program's expansion policy: the recognizer for a helper call's body, or None to skip it.
Expansion = Callable[[Inline, Recognizer], Recognizer | None]


class CfgBuilder:
    def __init__(self, recognizer: Recognizer, expansion: Expansion) -> None:
        self.nodes: list[Node] = []
        self.recognizer = recognizer
        self.expansion = expansion
        self.frames: list[_Frame] = []
        self.inlining: list[cst.CSTNode] = []
        self.boundary: set[int] = set()
        self.tests: list[cst.BaseExpression] = []
        self.guards: dict[int, tuple[cst.BaseExpression, ...]] = {}

    # -- graph primitives ---------------------------------------------------------------------
    def _node(self, frontier: Frontier, event: Event | None = None) -> int:
        node = Node(len(self.nodes), event)
        self.nodes.append(node)
        if event is not None and self.tests:
            self.guards[node.id] = tuple(self.tests)
        for pred in frontier:
            self._edge(pred, node.id)
        return node.id

    def _edge(self, src: int, dst: int, back: bool = False) -> None:
        if (dst, back) not in self.nodes[src].succs:
            self.nodes[src].succs.append((dst, back))

    def _items(self, items: list[Item], frontier: Frontier) -> Frontier:
        for item in items:
            if isinstance(item, Event):
                frontier = [self._node(frontier, item)]
            elif isinstance(item, Branch):
                frontier = _merge(self._items(item.then, frontier), self._items(item.orelse, frontier))
            else:
                frontier = self._inline(item, frontier)
        return frontier

    def _expr(self, node: cst.CSTNode | None, frontier: Frontier) -> Frontier:
        if node is None:
            return frontier
        return self._items(self.recognizer.items(node), frontier)

    # -- units --------------------------------------------------------------------------------
    def build(
        self,
        body: Sequence[cst.BaseStatement] | cst.BaseExpression,
        before: Sequence[Event] = (),
        after: Sequence[Event] = (),
    ) -> Cfg:
        entry = self._node([])
        frontier = self._items(list(before), [entry])
        function = _Function()
        self.frames.append(function)
        if isinstance(body, cst.BaseExpression):
            frontier = self._expr(body, frontier)
        else:
            frontier = self._stmts(body, frontier)
        self.frames.pop()
        frontier = self._items(list(after), _merge(frontier, function.returns))
        exit_node = self._node(frontier)
        return Cfg(self.nodes, entry, exit_node, frozenset(self.boundary), self.guards)

    def _inline(self, item: Inline, frontier: Frontier) -> Frontier:
        if (len(self.inlining) >= MAX_INLINE_DEPTH or item.callee in self.inlining
                or len(self.nodes) > MAX_NODES):
            # Not followed: whatever the helper does to the gradients is unknown here.
            unseen = Event(EventKind.UNKNOWN_GRADS, item.call, "", chain=self.recognizer.chain, certain=False)
            return [self._node(frontier, unseen)]
        recognizer = self.expansion(item, self.recognizer)
        if recognizer is None:
            return frontier
        saved = (self.recognizer, self.frames)
        self.recognizer, self.frames = recognizer, [_Function()]
        self.inlining.append(item.callee)
        try:
            if isinstance(item.callee, cst.Lambda):
                frontier = self._expr(item.callee.body, frontier)
            else:
                frontier = self._stmts(statements(item.callee.body), frontier)
            function = self.frames[0]
            assert isinstance(function, _Function)
            return _merge(frontier, function.returns)
        finally:
            self.inlining.pop()
            self.recognizer, self.frames = saved

    # -- statements -----------------------------------------------------------------------------
    def _stmts(self, body: Sequence[cst.BaseStatement], frontier: Frontier) -> Frontier:
        for index, stmt in enumerate(body):
            handlers = next((f for f in reversed(self.frames) if isinstance(f, _Handlers)), None)
            if handlers is not None and frontier:
                handlers.raisers[:] = _merge(handlers.raisers, frontier)
            frontier = self._stmt(stmt, frontier)
            skip = self._skips_to_boundary(stmt)
            if skip is not None:
                # ``if not boundary: continue``: the rest of the block runs only on updates.
                return self._guarded(partial(self._stmts, body[index + 1:]), frontier, skip)
        return frontier

    def _skips_to_boundary(self, stmt: cst.BaseStatement) -> BoundaryTest | None:
        """The boundary test of ``if not boundary: continue`` (or ``return``)."""
        if not isinstance(stmt, cst.If) or stmt.orelse is not None:
            return None
        test, body = stmt.test, statements(stmt.body)
        if not (isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not)
                and len(body) == 1 and isinstance(body[0], cst.SimpleStatementLine)
                and isinstance(body[0].body[-1], (cst.Continue, cst.Return))):
            return None
        return self.recognizer.is_boundary_test(test.expression)

    def _guarded(self, build: Callable[[Frontier], Frontier], frontier: Frontier,
                 test: BoundaryTest | None) -> Frontier:
        """Build a branch; when ``test`` is an accumulation boundary and the branch updates
        (steps or zeroes) or the test is a flag made for it, mark its nodes."""
        first = len(self.nodes)
        out = build(frontier)
        if test is not None:
            made = range(first, len(self.nodes))
            if test in (BoundaryTest.SYNC_FLAG, BoundaryTest.NAMED_FLAG) or any(
                self.nodes[n].event is not None and self.nodes[n].event.kind in UPDATE_KINDS  # type: ignore[union-attr]
                for n in made
            ):
                self.boundary.update(made)
        return out

    def _stmt(self, stmt: cst.BaseStatement, frontier: Frontier) -> Frontier:
        if isinstance(stmt, cst.SimpleStatementLine):
            return self._simple(stmt.body, frontier)
        method = getattr(self, f"_{type(stmt).__name__}", None)
        if method is None:  # FunctionDef, ClassDef: separate units
            return frontier
        return method(stmt, frontier)  # type: ignore[no-any-return]

    def _simple(self, body: Sequence[cst.BaseSmallStatement], frontier: Frontier) -> Frontier:
        for small in body:
            if isinstance(small, cst.Return):
                self._jump(_Function, self._expr(small.value, frontier), "returns")
                return []
            if isinstance(small, cst.Raise):
                self._jump(_Handlers, self._expr(small.exc, frontier), "raisers")
                return []
            if isinstance(small, cst.Break):
                self._jump(_Loop, frontier, "breaks")
                return []
            if isinstance(small, cst.Continue):
                self._jump(_Loop, frontier, "continues")
                return []
            if isinstance(small, (cst.Import, cst.ImportFrom, cst.Global, cst.Nonlocal, cst.Pass)):
                continue
            frontier = self._expr(small, frontier)
        return frontier

    def _suite(self, suite: cst.BaseSuite, frontier: Frontier) -> Frontier:
        return self._stmts(statements(suite), frontier)

    def _If(self, stmt: cst.If, frontier: Frontier) -> Frontier:
        frontier = self._expr(stmt.test, frontier)
        known = self.recognizer.truth(stmt.test)
        if known is True:
            return self._suite(stmt.body, frontier)
        if known is False:
            if isinstance(stmt.orelse, cst.If):
                return self._If(stmt.orelse, frontier)
            return self._suite(stmt.orelse.body, frontier) if stmt.orelse is not None else frontier
        self.tests.append(stmt.test)
        try:
            then = self._guarded(lambda f: self._suite(stmt.body, f), list(frontier),
                                 self.recognizer.is_boundary_test(stmt.test))
            if stmt.orelse is None:
                # ``if p.grad is not None: p.grad.zero_()``: nothing to skip when there is no grad.
                return then if _has_grad_test(stmt.test) else _merge(then, frontier)
            if isinstance(stmt.orelse, cst.If):
                return _merge(then, self._If(stmt.orelse, frontier))
            return _merge(then, self._suite(stmt.orelse.body, frontier))
        finally:
            self.tests.pop()

    def _loop(
        self,
        frontier: Frontier,
        test: cst.BaseExpression | None,
        body: cst.BaseSuite,
        orelse: cst.Else | None,
        runs_once: bool,
        endless: bool,
        target: cst.BaseExpression | None = None,
        iterable: cst.BaseExpression | None = None,
    ) -> Frontier:
        """A loop. One that steps or zeroes its loop variable (``for opt in optimizers:
        opt.step()``) makes a pass per optimizer of a collection, which is never empty: one
        pass stands for all, and nothing carries from one pass to the next. The body is built
        first, so its entry is wired once that is known."""
        header = self._node([])
        after_test = self._expr(test, [header])
        body_entry = self._node(after_test)
        loop = _Loop(header)
        first = len(self.nodes)
        self.frames.append(loop)
        with self.recognizer.loop_target(target, iterable):
            body_end = self._suite(body, [body_entry])
        self.frames.pop()
        per_element = self._updates_element(target, first)
        for pred in frontier:
            self._edge(pred, body_entry if runs_once or per_element else header)
        if per_element:
            exits = _merge(body_end, loop.continues)
            if orelse is not None:
                exits = self._suite(orelse.body, exits)
            return _merge(exits, loop.breaks)
        trains = any(n.event is not None and n.event.kind in TRAINING_KINDS for n in self.nodes[first:])
        for src in body_end + loop.continues:
            self._edge(src, header, back=trains)
        exits = [] if endless else after_test
        if orelse is not None:
            exits = self._suite(orelse.body, exits)
        return _merge(exits, loop.breaks)

    def _For(self, stmt: cst.For, frontier: Frontier) -> Frontier:
        frontier = self._expr(stmt.iter, frontier)
        frontier = self._items(self.recognizer.iteration(stmt.iter, stmt.iter), frontier)
        runs_once = self.recognizer.owners(stmt.iter) is not None or _is_param_groups(stmt.iter)
        return self._loop(frontier, None, stmt.body, stmt.orelse, runs_once=runs_once,
                          endless=False, target=stmt.target, iterable=stmt.iter)

    def _updates_element(self, target: cst.BaseExpression | None, first: int) -> bool:
        """Whether the loop body built from node ``first`` on steps or zeroes an optimizer that
        is the loop variable (``for name, opt in optimizers.items()`` too)."""
        if isinstance(target, (cst.Tuple, cst.List)):
            names = [e.value for e in target.elements]
        else:
            names = [target] if target is not None else []
        elements = {self.recognizer.key(n) for n in names if isinstance(n, cst.Name)} - {None}
        return bool(elements) and any(
            n.event is not None and n.event.kind in UPDATE_KINDS and n.event.optimizers
            and n.event.optimizers <= elements
            for n in self.nodes[first:]
        )

    def _While(self, stmt: cst.While, frontier: Frontier) -> Frontier:
        endless = (isinstance(stmt.test, cst.Name) and stmt.test.value == "True") or (
            isinstance(stmt.test, cst.Integer) and stmt.test.value not in ("0",)
        )
        return self._loop(frontier, stmt.test, stmt.body, stmt.orelse, runs_once=False,
                          endless=endless)

    def _With(self, stmt: cst.With, frontier: Frontier) -> Frontier:
        for item in stmt.items:
            frontier = self._expr(item.item, frontier)
        return self._suite(stmt.body, frontier)

    def _Try(self, stmt: cst.Try | cst.TryStar, frontier: Frontier) -> Frontier:
        if stmt.finalbody is not None:
            self.frames.append(_Finally(statements(stmt.finalbody.body)))
        handlers = _Handlers(list(frontier)) if stmt.handlers else None
        if handlers is not None:
            self.frames.append(handlers)
        body = self._suite(stmt.body, frontier)
        if handlers is not None:
            self.frames.pop()
            handlers.raisers[:] = _merge(handlers.raisers, body)
        out = self._suite(stmt.orelse.body, body) if stmt.orelse is not None else body
        if handlers is not None:
            entry = self._node(handlers.raisers)
            for handler in stmt.handlers:
                out = _merge(out, self._suite(handler.body, [entry]))
        if stmt.finalbody is not None:
            self.frames.pop()
            out = self._suite(stmt.finalbody.body, out)
        return out

    _TryStar = _Try

    def _Match(self, stmt: cst.Match, frontier: Frontier) -> Frontier:
        frontier = self._expr(stmt.subject, frontier)
        out = list(frontier)
        for case in stmt.cases:
            entry = self._expr(case.guard, list(frontier))
            out = _merge(out, self._suite(case.body, entry))
        return out

    # -- jumps --------------------------------------------------------------------------------
    def _jump(self, kind: type, frontier: Frontier, slot: str) -> None:
        """Leave through every enclosing ``finally`` up to the frame the jump targets. An
        exception that meets no handler before the function's frame leaves the unit."""
        frames = self.frames
        for depth in range(len(frames) - 1, -1, -1):
            frame = frames[depth]
            if isinstance(frame, _Finally):
                self.frames = frames[:depth]
                frontier = self._stmts(frame.body, frontier)
                self.frames = frames
            elif isinstance(frame, kind):
                targets = getattr(frame, slot)
                targets[:] = _merge(targets, frontier)
                return
            elif isinstance(frame, _Function):
                return


def _has_grad_test(test: cst.BaseExpression) -> bool:
    """``p.grad is not None``."""
    return (isinstance(test, cst.Comparison) and len(test.comparisons) == 1
            and isinstance(test.comparisons[0].operator, cst.IsNot)
            and isinstance(test.comparisons[0].comparator, cst.Name)
            and test.comparisons[0].comparator.value == "None"
            and isinstance(test.left, cst.Attribute) and test.left.attr.value == "grad")


def _names(test: cst.CSTNode) -> list[cst.BaseExpression]:
    """The names and attributes a test reads."""
    if isinstance(test, (cst.Name, cst.Attribute)):
        return [test]
    return [n for child in test.children for n in _names(child)]


def _merge(*frontiers: Frontier) -> Frontier:
    """The union of frontiers, without duplicates: paths that join must not multiply."""
    return list(dict.fromkeys(node for frontier in frontiers for node in frontier))


def _is_param_groups(expr: cst.BaseExpression) -> bool:
    """``optimizer.param_groups`` and ``group["params"]`` are never empty."""
    if isinstance(expr, cst.Attribute) and expr.attr.value == "param_groups":
        return True
    if isinstance(expr, cst.Subscript) and len(expr.slice) == 1:
        index = expr.slice[0].slice
        if isinstance(index, cst.Index) and isinstance(index.value, cst.SimpleString):
            return index.value.value.strip("'\"") == "params"
    return False
