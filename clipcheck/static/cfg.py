"""Control-flow graphs of training code, one event per node.

The graph of a unit (a function, or the module's top-level code) has a node per training event
and empty join nodes for headers. Edges that close a training loop (a loop whose body runs a
backward pass or a step) are marked as back edges, because the dataflow treats "the previous
iteration" differently from "earlier in this iteration". Calls to helpers of the same module
are expanded in place (bounded, recursion-safe), their events tagged with the call site.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import NamedTuple

import libcst as cst

from clipcheck.static.events import Amp, Event, EventKind, Origin
from clipcheck.static.names import dotted
from clipcheck.static.recognizer import BoundaryTest, Branch, Inline, Item, Recognizer
from clipcheck.static.syntax import children, statements

MAX_INLINE_DEPTH = 4
MAX_NODES = 20_000
# Helpers that call helpers at several places each multiply: past this many expansions of one
# helper in one graph, its further calls are left unexpanded (their effect unknown).
MAX_EXPANSIONS_PER_CALLEE = 32
UPDATE_KINDS = frozenset({EventKind.STEP, EventKind.ZERO_GRAD})
# Simple statements that hold no event.
_NO_EVENTS = frozenset({cst.Import, cst.ImportFrom, cst.Global, cst.Nonlocal, cst.Pass})


class Edge(enum.Enum):
    FORWARD = "forward"
    BACK = "back"              # closes a training loop (its body steps)
    ACCUMULATE = "accumulate"  # closes a loop that runs backward without stepping
    LOOP = "loop"              # closes any other loop


@dataclass(eq=False)
class Node:
    """One event, or a join; the start of a branch also records the value its test takes
    (``assume``: an atom and its truth), an assignment the atoms it invalidates (``forget``)
    or the value it gives a flag (``sets``),
    the side of an accumulation boundary that does not update says so (``skips_update``), and
    the exit of a loop that accumulates without stepping ends what it made pending
    (``closes_window``)."""

    id: int
    event: Event | None = None
    succs: list[tuple[int, Edge]] = field(default_factory=list)
    assume: tuple[str, bool] | None = None
    sets: tuple[str, bool] | None = None
    forget: frozenset[str] = frozenset()
    skips_update: bool = False
    closes_window: bool = False
    failed: bool = False  # the entry of an exception handler: the paths an error took

    @property
    def on_path(self) -> bool:
        """Whether the node says something about the path, beside its event."""
        return (self.assume is not None or self.sets is not None or bool(self.forget)
                or self.skips_update or self.closes_window)


class Cfg(NamedTuple):
    nodes: list[Node]
    entry: int
    exit: int
    # Nodes that run only when this micro-batch updates (behind an accumulation boundary test).
    boundary: frozenset[int]
    # For event nodes inside ``if`` statements: those statements' tests (``if MAX > 0:``).
    guards: dict[int, tuple[cst.BaseExpression, ...]]
    # Nodes on a path that leaves the iteration early (``if bad: zero_grad(); continue``).
    skips: frozenset[int]
    # Nodes on the updating side of any accumulation boundary test, whatever that side does
    # (``boundary`` holds only those of a side that steps or zeroes, or of a flag's test).
    behind_boundary: frozenset[int]
    # The header of the innermost loop around each node in one, and of the loop around each loop.
    loop_of: dict[int, int]
    loop_parent: dict[int, int]

    def trains(self, *edges: Edge) -> bool:
        """Whether the unit runs a training loop of its own (a loop whose body steps, or one
        of ``edges``)."""
        return any(edge is Edge.BACK or edge in edges for n in self.nodes for _, edge in n.succs)

    def guarded_by(self, node: int) -> frozenset[str]:
        """The names the tests of the ``if`` statements around ``node`` read."""
        return frozenset(n for test in self.guards.get(node, ()) for n in map(dotted, _names(test))
                         if n is not None)

    def close_as_iteration(self, caller_zero: Event | None) -> None:
        """Make the unit one iteration of a loop its caller runs: a back edge from its exit to
        its entry, and (unless the caller is known not to) another through ``caller_zero``, a
        zero-grad the caller may run between two calls."""
        self.nodes[self.exit].succs.append((self.entry, Edge.BACK))
        if caller_zero is not None:
            zero = Node(len(self.nodes), caller_zero, [(self.entry, Edge.BACK)])
            self.nodes.append(zero)
            self.nodes[self.exit].succs.append((zero.id, Edge.FORWARD))

    def steps_at_boundary(self) -> bool:
        """Whether a step runs only behind an accumulation boundary test."""
        return any(self.nodes[n].event is not None and self.nodes[n].event.kind is EventKind.STEP  # type: ignore[union-attr]
                   for n in self.boundary)

    def events(self) -> list[tuple[int, Event]]:
        return [(n.id, n.event) for n in self.nodes if n.event is not None]

    def reachable_from(self, start: int, through_exit: bool = True,
                       avoiding: Callable[[Node], bool] | None = None) -> set[int]:
        """The nodes after ``start``; without ``through_exit``, only along paths that stay in
        the unit (not round the iteration an unseen caller closes); with ``avoiding``, only
        along paths that pass no node it holds for (such a node is reached, not passed)."""
        seen: set[int] = set()
        stack = [s for s, _ in self.nodes[start].succs]
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stops = avoiding is not None and avoiding(self.nodes[node])
                if (through_exit or node != self.exit) and not stops:
                    stack.extend(s for s, _ in self.nodes[node].succs)
        return seen

    def loops_around(self, node: int) -> list[int]:
        """The headers of the loops around ``node``, innermost first."""
        found: list[int] = []
        header = self.loop_of.get(node)
        while header is not None:
            found.append(header)
            header = self.loop_parent.get(header)
        return found

    def on_own_loops(self) -> set[int]:
        """The nodes that run again in a loop of the unit's own source: those on a cycle that
        does not pass the exit (round the iteration an unseen caller closes). Found at once,
        as the strongly connected components (Tarjan's, without recursion), where a search
        from each event would cost the square of a long function."""
        index: dict[int, int] = {}
        low: dict[int, int] = {}
        stack: list[int] = []
        on_stack: set[int] = set()
        cyclic: set[int] = set()
        successors = [[] if n.id == self.exit else [s for s, _ in n.succs] for n in self.nodes]
        for root in range(len(self.nodes)):
            if root in index:
                continue
            work = [(root, 0)]
            while work:
                node, position = work.pop()
                if position == 0:
                    index[node] = low[node] = len(index)
                    stack.append(node)
                    on_stack.add(node)
                if position < len(successors[node]):
                    work.append((node, position + 1))
                    successor = successors[node][position]
                    if successor not in index:
                        work.append((successor, 0))
                    elif successor in on_stack:
                        low[node] = min(low[node], index[successor])
                    continue
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in successors[node]:
                        cyclic.update(component)
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
        if self.exit in self.reachable_from(self.exit, through_exit=False):  # a search starts past it
            cyclic.add(self.exit)
        return cyclic


Frontier = list[int]


class _Loop(NamedTuple):
    header: int
    breaks: Frontier
    continues: Frontier


class _Finally(NamedTuple):
    body: Sequence[cst.BaseStatement]


class _Handlers(NamedTuple):
    raisers: Frontier


class _Function(NamedTuple):
    returns: Frontier


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
        self.expansions: dict[cst.CSTNode, int] = {}
        self.boundary: set[int] = set()
        self.behind_boundary: set[int] = set()
        self.skips: set[int] = set()
        # The branch starts (then, else) of each boundary test's ``if``.
        self.arms: dict[cst.If, tuple[int, int]] = {}
        self.tests: list[cst.BaseExpression] = []
        self.guards: dict[int, tuple[cst.BaseExpression, ...]] = {}
        # The atoms tested so far, by each name they read: an assignment to it forgets them.
        self.atoms_reading: dict[str, set[str]] = {}
        # The atoms of tests around training events (or that skip the rest of an iteration).
        self.guarding: set[str] = set()
        # The names assigned ``True`` or ``False`` somewhere.
        self.flags: set[str] = set()
        # The sync flags of the accumulation blocks around here (``with accelerator.accumulate``).
        self.windows: list[str] = []
        # Loops, by their header: the innermost one around each node, the one around each loop.
        self.open_loops: list[int] = []
        self.loop_of: dict[int, int] = {}
        self.loop_parent: dict[int, int] = {}

    # -- graph primitives ---------------------------------------------------------------------
    def _node(self, frontier: Frontier, event: Event | None = None) -> int:
        node = Node(len(self.nodes), event)
        self.nodes.append(node)
        if event is not None and self.tests:
            self.guards[node.id] = tuple(self.tests)
        for pred in frontier:
            self._edge(pred, node.id)
        return node.id

    def _edge(self, src: int, dst: int, edge: Edge = Edge.FORWARD) -> None:
        if (dst, edge) not in self.nodes[src].succs:
            self.nodes[src].succs.append((dst, edge))

    def _items(self, items: Sequence[Item], frontier: Frontier) -> Frontier:
        for item in items:
            if isinstance(item, Event) and self.windows and _waits_for_sync(item):
                frontier = self._on_sync(item, frontier, self.windows[-1])
            elif isinstance(item, Event):
                frontier = [self._node(frontier, item)]
            elif isinstance(item, Branch):
                frontier = _merge(self._items(item.then, frontier), self._items(item.orelse, frontier))
            else:
                frontier = self._inline(item, frontier)
        return frontier

    def _on_sync(self, event: Event, frontier: Frontier, flag: str) -> Frontier:
        """A prepared optimizer's step or zero-grad inside an accumulation block: it acts only
        on the micro-batch where ``flag`` holds; on the others the window stays open."""
        on, off = self._node(frontier), self._node(frontier)
        self.nodes[on].assume, self.nodes[off].assume = (flag, True), (flag, False)
        self.nodes[off].skips_update = event.kind is EventKind.STEP
        self.guarding.add(flag)
        # Inside the block the zero-grad's gate is explicit: on the sync micro-batch it runs.
        acting = replace(event, gated=False) if event.kind is EventKind.ZERO_GRAD else event
        return [self._node([on], acting), off]

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
        function = _Function([])
        self.frames.append(function)
        if isinstance(body, cst.BaseExpression):
            frontier = self._expr(body, frontier)
        else:
            frontier = self._stmts(body, frontier)
        self.frames.pop()
        frontier = self._items(list(after), _merge(frontier, function.returns))
        exit_node = self._node(frontier)
        self._forget_untested_atoms()
        return Cfg(self.nodes, entry, exit_node, frozenset(self.boundary), self.guards, frozenset(self.skips),
                   frozenset(self.behind_boundary), self.loop_of, self.loop_parent)

    def _forget_untested_atoms(self) -> None:
        """Keep the values of atoms tested around training events more than once, or once and
        assigned a literal: only they can correlate two points that matter, and each kept
        atom may double the states a node sees."""
        tested = Counter(n.assume[0] for n in self.nodes if n.assume is not None and n.assume[1])
        kept = {a for a, count in tested.items() if a in self.guarding and (count >= 2 or a in self.flags)}
        for node in self.nodes:
            if node.assume is not None and node.assume[0] not in kept:
                node.assume = None
            if node.sets is not None and node.sets[0] not in kept:
                node.sets = None
            if node.forget:
                node.forget = frozenset(a for a in node.forget if a in kept)

    def _inline(self, item: Inline, frontier: Frontier) -> Frontier:
        expanded = self.expansions.get(item.callee, 0)
        if (len(self.inlining) >= MAX_INLINE_DEPTH or item.callee in self.inlining
                or len(self.nodes) > MAX_NODES or expanded >= MAX_EXPANSIONS_PER_CALLEE):
            # Not followed: whatever the helper does to the gradients is unknown here.
            unseen = Event(EventKind.UNKNOWN_GRADS, item.call, "", chain=self.recognizer.chain, certain=False)
            return [self._node(frontier, unseen)]
        recognizer = self.expansion(item, self.recognizer)
        if recognizer is None:
            return frontier
        self.expansions[item.callee] = expanded + 1
        saved = (self.recognizer, self.frames)
        self.recognizer, self.frames = recognizer, [_Function([])]
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
                rest = len(self.nodes)
                out = self._guarded(partial(self._stmts, body[index + 1:]), frontier, skip)
                arms = self.arms.get(stmt) if isinstance(stmt, cst.If) else None
                if arms is not None and self._steps(rest):
                    self.nodes[arms[0]].skips_update = True
                return out
        return frontier

    def _steps(self, first: int, end: int | None = None) -> bool:
        """Whether the nodes built from ``first`` (to ``end``) step an optimizer."""
        return any(n.event is not None and n.event.kind is EventKind.STEP for n in self.nodes[first:end])

    def _skips_to_boundary(self, stmt: cst.BaseStatement) -> BoundaryTest | None:
        """The boundary test of ``if not boundary: ...; continue`` (or ``return``)."""
        if not isinstance(stmt, cst.If) or stmt.orelse is not None:
            return None
        found = self.recognizer.boundary_test(stmt.test)
        if found is None or found[1] or not _leaves_iteration(stmt.body):
            return None
        return found[0]

    def _guarded(self, build: Callable[[Frontier], Frontier], frontier: Frontier,
                 test: BoundaryTest | None) -> Frontier:
        """Build a branch; when ``test`` is an accumulation boundary and the branch updates
        (steps or zeroes) or the test is a flag made for it, mark its nodes."""
        first = len(self.nodes)
        out = build(frontier)
        if test is not None:
            made = range(first, len(self.nodes))
            self.behind_boundary.update(made)
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
        # ``type() is``: these classes have no subclasses, and LibCST's ``isinstance`` goes
        # through ``ABCMeta``, several times slower, for every statement.
        for small in body:
            if type(small) is cst.Return:
                self._jump(_Function, self._expr(small.value, frontier), "returns")
                return []
            if type(small) is cst.Raise:
                self._jump(_Handlers, self._expr(small.exc, frontier), "raisers")
                return []
            if type(small) is cst.Break:
                self._jump(_Loop, frontier, "breaks")
                return []
            if type(small) is cst.Continue:
                self._jump(_Loop, frontier, "continues")
                return []
            if type(small) in _NO_EVENTS:
                continue
            frontier = self._expr(small, frontier)
            if isinstance(small, (cst.Assign, cst.AugAssign, cst.AnnAssign)):
                frontier = self._forget(small, frontier)
        return frontier

    def _forget(self, assignment: cst.Assign | cst.AugAssign | cst.AnnAssign, frontier: Frontier) -> Frontier:
        """After an assignment, tests that read what it assigns may take another value; a flag
        assigned ``True`` or ``False`` takes that one (``stepped = True``)."""
        if isinstance(assignment, cst.Assign):
            targets = [t.target for t in assignment.targets]
        else:
            targets = [assignment.target]
        atoms = {a for t in targets for name in _names(t) for a in self.atoms_reading.get(
            self.recognizer.key(name) or "", ())}
        value = assignment.value if isinstance(assignment, (cst.Assign, cst.AnnAssign)) else None
        flags: list[str] = []
        if isinstance(value, cst.Name) and value.value in ("True", "False"):  # ``a = b = True`` too
            flags = [k for t in targets if isinstance(t, (cst.Name, cst.Attribute))
                     for k in (self.recognizer.key(t),) if k is not None]
        if not atoms and not flags:
            return frontier
        for flag in flags or [None]:  # type: ignore[list-item]
            node = self.nodes[self._node(frontier)]
            node.forget = frozenset(atoms)
            if flag is not None:
                node.sets = (flag, value.value == "True")  # type: ignore[union-attr]
                self.flags.add(flag)
            frontier = [node.id]
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
        if _has_grad_test(stmt.test) and stmt.orelse is None:
            # ``if p.grad is not None: p.grad.zero_()``: nothing to skip when there is no grad.
            return self._suite(stmt.body, frontier)
        test, positive = _without_not(stmt.test)
        found = self.recognizer.boundary_test(test)
        boundary = found[0] if found is not None else None
        atom = self._atom(test)
        updates_then = found is not None and found[1] == positive  # else the other side updates
        self.tests.append(stmt.test)
        try:
            then_start = self._assume(frontier, atom, positive, boundary)
            first = len(self.nodes)
            then = self._guarded(lambda f: self._suite(stmt.body, f), then_start,
                                 boundary if updates_then else None)
            then_end = len(self.nodes)
            leaves = _leaves_iteration(stmt.body)
            if leaves:
                self.skips.update(range(first, then_end))
            else_start = self._assume(frontier, atom, not positive, boundary)
            second = len(self.nodes)
            if stmt.orelse is None:
                out = _merge(then, else_start)
            elif isinstance(stmt.orelse, cst.If):
                out = _merge(then, self._If(stmt.orelse, else_start))
            else:
                orelse = stmt.orelse
                out = _merge(then, self._guarded(lambda f: self._suite(orelse.body, f), else_start,
                                                 boundary if not updates_then else None))
            if atom is not None and (leaves or any(n.event is not None for n in self.nodes[first:])):
                self.guarding.add(atom)
            if boundary is not None:
                self.arms[stmt] = (then_start[0], else_start[0])
                sides = [(then_start[0], self._steps(first, then_end)), (else_start[0], self._steps(second))]
                self._mark_pending_side(*(sides if updates_then else sides[::-1]))
            return out
        finally:
            self.tests.pop()

    def _mark_pending_side(self, update: tuple[int, bool], other: tuple[int, bool]) -> None:
        """Of a boundary test's two sides (each: where it starts, whether it steps), the one
        that does not update leaves this micro-batch's gradients pending, when only the
        updating side steps. (``if not boundary: continue`` is marked by :meth:`_stmts` once
        the rest of the block is built.)"""
        if update[1] and not other[1]:
            self.nodes[other[0]].skips_update = True

    def _atom(self, test: cst.BaseExpression) -> str | None:
        """A key for what a test reads, when two tests of it must agree: a name or attribute
        (``need_update``, ``accelerator.sync_gradients``), or a call-free expression of them
        (``(step + 1) % accum == 0``). Remembers which names the atom reads."""
        if isinstance(test, (cst.Name, cst.Attribute)):
            key = self.recognizer.key(test)
            reads = {key} if key is not None else set()
        elif _has_call(test):
            return None
        else:
            names = _names(test)
            reads = {k for k in map(self.recognizer.key, names) if k is not None}
            key = self.recognizer.module.code_for_node(test)
            if reads - {dotted(n) for n in names}:  # it reads a helper's locals: this call's
                key += "@" + ",".join(sorted(reads))
        if key is None:
            return None
        for name in reads:
            self.atoms_reading.setdefault(name, set()).add(key)
        return key

    def _assume(self, frontier: Frontier, atom: str | None, value: bool,
                boundary: BoundaryTest | None) -> Frontier:
        """The start of a branch on which ``atom`` is ``value`` (a node of its own when the
        atom is kept or the test is an accumulation boundary)."""
        if atom is None and boundary is None:
            return list(frontier)
        node = self._node(frontier)
        if atom is not None:
            self.nodes[node].assume = (atom, value)
        return [node]

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
        loop = _Loop(header, [], [])
        first = len(self.nodes)
        self.frames.append(loop)
        self.open_loops.append(header)
        with self.recognizer.loop_target(target, iterable) as fans_out:
            body_end = self._suite(body, [body_entry])
        self.open_loops.pop()
        self.frames.pop()
        per_element = fans_out or self._updates_element(target, first)
        if not per_element:  # the innermost loop of each node built so far that has none yet
            for node in range(header, len(self.nodes)):
                self.loop_of.setdefault(node, header)
            if self.open_loops:
                self.loop_parent[header] = self.open_loops[-1]
        for pred in frontier:
            self._edge(pred, body_entry if runs_once or per_element else header)
        if per_element:
            exits = _merge(body_end, loop.continues)
            if orelse is not None:
                exits = self._suite(orelse.body, exits)
            return _merge(exits, loop.breaks)
        kinds = {n.event.kind for n in self.nodes[first:] if n.event is not None}
        if EventKind.STEP in kinds or (EventKind.BACKWARD in kinds and EventKind.UNKNOWN_GRADS in kinds):
            edge = Edge.BACK
        elif EventKind.BACKWARD in kinds:
            edge = Edge.ACCUMULATE
        else:
            edge = Edge.LOOP
        for src in body_end + loop.continues:
            self._edge(src, header, edge)
        exits = [] if endless else after_test
        if orelse is not None:
            exits = self._suite(orelse.body, exits)
        exits = _merge(exits, loop.breaks)
        if exits and (edge is Edge.ACCUMULATE or any(n.skips_update for n in self.nodes[first:])):
            # A window lives inside its loop: what the loop left pending is the step's (or the
            # code's) after it to use, and a last micro-batch the engine cannot tell from the
            # others (``or last_batch``) has usually updated already.
            closed = self._node(exits)
            self.nodes[closed].closes_window = True
            return [closed]
        return exits

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
        body = statements(stmt.body)
        windows = len(self.windows)
        for item in stmt.items:
            frontier = self._expr(item.item, frontier)
            context = self.recognizer.context(item.item, body)
            frontier = self._items(context.events, frontier)
            if context.sync_flag is not None:
                self.windows.append(context.sync_flag)
        try:
            return self._stmts(body, frontier)
        finally:
            del self.windows[windows:]

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
            self.nodes[entry].failed = True
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


def _waits_for_sync(event: Event) -> bool:
    """A step or zero-grad of an optimizer accelerate prepared (inside an accumulation block it
    acts only on sync micro-batches), not a scaler's, an unseen caller's or another optimizer's."""
    return (event.kind in UPDATE_KINDS and bool(event.optimizers) and event.gated
            and event.amp is not Amp.SCALER and event.origin is Origin.SOURCE and not event.wrapper)


def _has_grad_test(test: cst.BaseExpression) -> bool:
    """``p.grad is not None``."""
    return (isinstance(test, cst.Comparison) and len(test.comparisons) == 1
            and isinstance(test.comparisons[0].operator, cst.IsNot)
            and isinstance(test.comparisons[0].comparator, cst.Name)
            and test.comparisons[0].comparator.value == "None"
            and isinstance(test.left, cst.Attribute) and test.left.attr.value == "grad")


def _without_not(test: cst.BaseExpression) -> tuple[cst.BaseExpression, bool]:
    """``not x`` is ``x`` on the other branch, and so is ``a != b`` for ``a == b``."""
    positive = True
    while isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        test, positive = test.expression, not positive
    if (isinstance(test, cst.Comparison) and len(test.comparisons) == 1
            and isinstance(test.comparisons[0].operator, cst.NotEqual)):
        equal = test.comparisons[0].with_changes(operator=cst.Equal())
        test, positive = test.with_changes(comparisons=[equal]), not positive
    return test, positive


def _has_call(node: cst.CSTNode) -> bool:
    return isinstance(node, cst.Call) or any(_has_call(c) for c in children(node))


def _leaves_iteration(body: cst.BaseSuite) -> bool:
    """A branch that ends with ``continue`` or ``return``: it skips the rest of the iteration."""
    last = statements(body)[-1:]
    return bool(last) and isinstance(last[0], cst.SimpleStatementLine) and isinstance(
        last[0].body[-1], (cst.Continue, cst.Return))


def _names(test: cst.CSTNode) -> list[cst.BaseExpression]:
    """The names and attributes a test reads."""
    if isinstance(test, (cst.Name, cst.Attribute)):
        return [test]
    return [n for child in children(test) for n in _names(child)]


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
