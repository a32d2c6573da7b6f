"""A small reference interpreter for clipcheck's ordering and mixed-precision rules.

A *program* is one training function: ``for x, y in loader:`` around a body of events
(``optimizer.zero_grad()``, a backward pass, a clip, a step, and the GradScaler calls), ``if``
statements on opaque flags (each ``if`` tests a flag of its own, so no two tests are
correlated) and nested ``for _ in range(k):`` loops (any number of iterations, zero
included). :func:`render` writes it as Python source.

:func:`findings` follows every path through the function. Each rule is a predicate on one
occurrence of an event on one path, stated on the events that came before it on that path
(the :class:`History`), plus the quantifier its documentation gives ("on every path", "on
some path"). A history is summarised by the order of the last occurrence of each kind of
event (indices replaced by their ranks), which is all the predicates read; the summaries are
finite, so the interpreter follows paths to a fixpoint instead of unrolling loops to a bound.
Nothing here reads clipcheck's own data structures.

Vocabulary of the rule definitions:

* an *iteration boundary* is the end of an iteration of a loop whose body runs a step (a
  training loop) or a backward pass without a step (an accumulation loop); an occurrence is
  *steady* once its path has crossed one. Where an event has steady occurrences, only those
  are judged: the first iteration's start must not mask what every later iteration does.
* ``zero_grad()`` sets the gradients to ``None`` (*clears* them); ``zero_grad(set_to_none=
  False)`` fills them with zeros. A step is *effective* unless the gradients are cleared: a
  step on ``None`` gradients changes nothing.
* the gradients are *fresh* when the last backward, zero-grad or effective step is a
  backward: a backward's gradients wait for a step.
* a backward is *stale* when it adds onto gradients an effective step already applied (no
  zero-grad since that step).
* an accumulation loop's *window* is open while gradients that were fresh (not stale) when an
  iteration of it ended wait for their step: until the loop exits, a step or a zero-grad. Only
  an unconditional zero-grad is known to throw a window away: one inside an ``if`` may be the
  one that starts the window (``if j == 0:``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

# Event kinds and the lines each renders as (the last line is the event's own).
EVENT_SOURCE: dict[str, tuple[str, ...]] = {
    "zero": ("optimizer.zero_grad()",),
    "zero_keep": ("optimizer.zero_grad(set_to_none=False)",),
    "backward": ("loss = model(x).sum()", "loss.backward()"),
    "clip": ("torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)",),
    "step": ("optimizer.step()",),
    "scaled_backward": ("loss = model(x).sum()", "scaler.scale(loss).backward()"),
    "unscale": ("scaler.unscale_(optimizer)",),
    "scaler_step": ("scaler.step(optimizer)",),
    "update": ("scaler.update()",),
}
PLAIN_EVENTS = ("zero", "zero_keep", "backward", "clip", "step")
AMP_EVENTS = (*PLAIN_EVENTS, "scaled_backward", "unscale", "scaler_step", "update")

BACKWARDS = frozenset({"backward", "scaled_backward"})
STEPS = frozenset({"step", "scaler_step"})
ZEROES = frozenset({"zero", "zero_keep"})

# The rules the reference decides.
CODES = frozenset({"CC101", "CC102", "CC103", "CC104", "CC201", "CC202", "CC203"})


@dataclass(frozen=True)
class Event:
    kind: str


@dataclass(frozen=True)
class If:
    body: tuple[Statement, ...]
    orelse: tuple[Statement, ...] | None = None


@dataclass(frozen=True)
class Loop:
    """``for _ in range(k):``"""

    body: tuple[Statement, ...]


Statement = Event | If | Loop


@dataclass(frozen=True)
class Program:
    """``body`` runs in the training loop; ``before`` and ``after`` are events the function
    runs once before and after it."""

    body: tuple[Statement, ...]
    amp: bool = False
    before: tuple[Event, ...] = ()
    after: tuple[Event, ...] = ()

    def everything(self) -> tuple[Statement, ...]:
        return (*self.before, *self.body, *self.after)


def walk(block: Iterable[Statement]) -> Iterator[Statement]:
    for stmt in block:
        yield stmt
        if isinstance(stmt, If):
            yield from walk(stmt.body)
            yield from walk(stmt.orelse or ())
        elif isinstance(stmt, Loop):
            yield from walk(stmt.body)


def kinds_in(block: Iterable[Statement]) -> set[str]:
    return {s.kind for s in walk(block) if isinstance(s, Event)}


# -- rendering ----------------------------------------------------------------------------------
# A program with lines: ("event", kind, line, guarded), ("if", body, orelse), ("loop", body).
Placed = tuple


def render(program: Program) -> tuple[str, tuple[Placed, ...]]:
    """The program as Python source, and its statements with the line of each event."""
    out = ["import torch", "", ""]
    flags = sum(isinstance(s, If) for s in walk(program.body))
    params = ["model", "loader", "optimizer", "k", *(f"flag{n}" for n in range(1, flags + 1))]
    out.append(f"def train({', '.join(params)}):")
    if program.amp:
        out.append("    scaler = torch.amp.GradScaler()")
    tests = iter(range(1, flags + 1))

    def block(stmts: tuple[Statement, ...], depth: int, guarded: bool) -> tuple[Placed, ...]:
        pad = "    " * depth
        if not stmts and depth > 1:
            out.append(pad + "pass")
        placed: list[Placed] = []
        for stmt in stmts:
            if isinstance(stmt, Event):
                out.extend(pad + text for text in EVENT_SOURCE[stmt.kind])
                placed.append(("event", stmt.kind, len(out), guarded))
            elif isinstance(stmt, If):
                out.append(f"{pad}if flag{next(tests)}:")
                body = block(stmt.body, depth + 1, True)
                orelse: tuple[Placed, ...] = ()
                if stmt.orelse is not None:
                    out.append(pad + "else:")
                    orelse = block(stmt.orelse, depth + 1, True)
                placed.append(("if", body, orelse))
            else:
                out.append(f"{pad}for _ in range(k):")
                placed.append(("loop", block(stmt.body, depth + 1, guarded)))
        return tuple(placed)

    before = block(program.before, 1, False)
    out.append("    for x, y in loader:")
    body = block(program.body, 2, False)
    after = block(program.after, 1, False)
    return "\n".join(out) + "\n", (*before, ("loop", body), *after)


def source(program: Program) -> str:
    return render(program)[0]


# -- histories ----------------------------------------------------------------------------------
# The kinds of things whose last index a history keeps.
MARKS = ("backward", "scaled_backward", "zero", "step", "effective_step", "scaler_step", "unscale",
         "update", "boundary")


@dataclass(frozen=True)
class Occurrence:
    """One event on one path, with what the rules need to know about what came before it."""

    kind: str
    line: int
    steady: bool
    facts: tuple[tuple[str, object], ...] = ()

    def __getitem__(self, name: str) -> object:
        return dict(self.facts)[name]


@dataclass
class History:
    """What the rules read of a path so far: the index of the last event of each kind (``-1``:
    none), and a few facts fixed when they happened."""

    last: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MARKS, -1))
    clock: int = 0
    steady: bool = False
    cleared: bool = False
    # The last clip since the last step: its index, line, and whether the gradients were
    # fresh there ("done"), applied in this iteration ("late") or neither ("early").
    clip: tuple[int, int, str] | None = None
    stale: bool = False  # the last backward is stale
    # The first zero-grad after the last backward: its line, and whether an iteration
    # boundary lies between the two.
    first_zero: tuple[int, bool] | None = None
    discarding_zero: int | None = None  # the last zero-grad's line, when it closed a window
    window: bool = False

    def at(self, *names: str) -> int:
        return max(self.last[n] for n in names)

    def fresh(self) -> bool:
        return self.last["backward"] > self.at("zero", "effective_step")

    def key(self) -> tuple[object, ...]:
        """Replace the indices by their ranks (nothing reads more than their order) and return
        the history as a hashable key: equal keys, equal futures."""
        indices = sorted({i for i in self.last.values() if i >= 0} | ({self.clip[0]} if self.clip else set()))
        rank = {i: r for r, i in enumerate(indices)}
        rank[-1] = -1
        self.last = {k: rank[i] for k, i in self.last.items()}
        if self.clip is not None:
            self.clip = (rank[self.clip[0]], *self.clip[1:])  # type: ignore[assignment]
        self.clock = len(indices)
        return (tuple(self.last.values()), self.steady, self.cleared, self.clip, self.stale,
                self.first_zero, self.discarding_zero, self.window)

    def copy(self) -> History:
        return History(dict(self.last), self.clock, self.steady, self.cleared, self.clip, self.stale,
                       self.first_zero, self.discarding_zero, self.window)

    def boundary(self, accumulation: bool) -> None:
        """An iteration of a training (or ``accumulation``) loop ends."""
        if accumulation and not self.window and self.fresh() and not self.stale:
            self.window = True
        self.steady = True
        self._mark("boundary")

    def _mark(self, *names: str) -> None:
        for name in names:
            self.last[name] = self.clock
        self.clock += 1

    def feed(self, kind: str, line: int, guarded: bool) -> Occurrence:
        """The event happens: what the rules read at it, then its effect on the history."""
        facts = self._facts(kind)
        last = self.last
        if kind in BACKWARDS:
            if last["backward"] <= self.at("zero", "effective_step"):  # the first since a reset
                self.stale = last["effective_step"] > last["zero"]
            self._mark("backward", *(["scaled_backward"] if kind == "scaled_backward" else []))
            self.cleared = False
            self.first_zero = None
        elif kind in ZEROES:
            if self.first_zero is None and last["backward"] > last["zero"]:
                self.first_zero = (line, last["boundary"] > last["backward"])
            # A zero-grad behind a test may be the one that starts a window: only an
            # unconditional one is known to throw an open window's gradients away.
            self.discarding_zero = line if self.window and not guarded else None
            self.window = False
            self._mark("zero")
            self.cleared = kind == "zero"
        elif kind in STEPS:
            names = ["step", *([] if self.cleared else ["effective_step"])]
            self._mark(*names, *(["scaler_step"] if kind == "scaler_step" else []))
            self.window = False
            self.clip = None
        elif kind in ("unscale", "update"):
            self._mark(kind)
        elif kind == "clip":
            verdict = "done" if facts["fresh"] else "late" if facts["after_step"] else "early"
            self.clip = (self.clock, line, verdict)
            self.clock += 1
        return Occurrence(kind, line, self.steady, tuple(facts.items()))

    def _facts(self, kind: str) -> dict[str, object]:
        last = self.last
        facts: dict[str, object] = {}
        fresh = self.fresh()
        if kind == "clip":
            facts["fresh"] = fresh
            # An effective step applied the gradients in this iteration, no backward since.
            facts["after_step"] = last["effective_step"] > max(last["backward"], last["boundary"])
            facts["scaled"] = fresh and last["scaled_backward"] > self.at("unscale", "zero", "step")
        elif kind in STEPS:
            facts["clip"] = self._clip_verdict(fresh)
            facts["killed_by"] = self._killed_by()
            facts["empty"] = self._empty()
            facts["cleared"] = self.cleared
            facts["scaled"] = last["scaled_backward"] > self.at("zero", "step")
            facts["discarded_by"] = self.discarding_zero if last["zero"] > last["step"] else None
        elif kind == "unscale":
            facts["again"] = last["unscale"] > self.at("scaler_step", "update")
            facts["window"] = self.window
        return facts

    def _clip_verdict(self, fresh: bool) -> tuple[int, bool] | None:
        """The step's last clip (since the previous step) and whether it clipped before a
        backward whose gradients this step applies: a clip that found no fresh gradients (and
        none applied in this iteration), or one that found fresh gradients and then saw
        another backward add more, with no zero-grad since."""
        if self.clip is None:
            return None
        index, line, verdict = self.clip
        if verdict == "done":
            bad = self.last["backward"] > index and self.last["zero"] < index
        else:
            bad = verdict == "early"
        return line, bad and fresh

    def _killed_by(self) -> int | None:
        """The zero-grad that discarded the last backward's gradients before any step applied
        them, while nothing has written the gradients since: its line. A stale backward's
        gradients that crossed an iteration boundary first belong to the old update: not
        discarded."""
        last = self.last
        if self.first_zero is None or last["effective_step"] > last["backward"]:
            return None
        line, crossed = self.first_zero
        return None if self.stale and crossed else line

    def _empty(self) -> bool:
        """The step would apply no new gradients: the last thing that touched them is an
        effective step, or a zero-grad that found no unapplied gradients."""
        latest = self.at("backward", "zero", "effective_step")
        if latest < 0 or latest == self.last["backward"]:
            return False
        return latest == self.last["effective_step"] or self._killed_by() is None


# -- every path ---------------------------------------------------------------------------------
def occurrences(program: Program) -> set[Occurrence]:
    """Every occurrence of every event on every path, to a fixpoint."""
    seen: set[Occurrence] = set()

    def block(stmts: tuple[Placed, ...], states: dict[tuple[object, ...], History]
              ) -> dict[tuple[object, ...], History]:
        for stmt in stmts:
            if stmt[0] == "event":
                _, kind, line, guarded = stmt
                after: dict[tuple[object, ...], History] = {}
                for state in states.values():
                    state = state.copy()
                    seen.add(state.feed(kind, line, guarded))
                    after[state.key()] = state
                states = after
            elif stmt[0] == "if":
                states = {**block(stmt[1], states), **block(stmt[2], states)}
            else:
                states = loop(stmt[1], states)
        return states

    def loop(body: tuple[Placed, ...], states: dict[tuple[object, ...], History]
             ) -> dict[tuple[object, ...], History]:
        kinds = {s[1] for s in _events(body)}
        ends = "training" if kinds & STEPS else "accumulation" if kinds & BACKWARDS else None
        header = dict(states)
        frontier = states
        while frontier:
            after = block(body, frontier)
            frontier = {}
            for state in after.values():
                if ends is not None:
                    state = state.copy()
                    state.boundary(ends == "accumulation")
                key = state.key()
                if key not in header:
                    header[key] = frontier[key] = state
        if ends != "accumulation":
            return header
        closed = [s.copy() for s in header.values()]
        for state in closed:
            state.window = False
        return {s.key(): s for s in closed}

    _, placed = render(program)
    block(placed, {History().key(): History()})
    return seen


def _events(placed: tuple[Placed, ...]) -> Iterator[Placed]:
    for stmt in placed:
        if stmt[0] == "event":
            yield stmt
        else:
            for part in stmt[1:]:
                yield from _events(part)


def findings(program: Program) -> set[tuple[str, int]]:
    """The (code, line) pairs the reference expects for the rules in :data:`CODES`."""
    by_line: dict[int, list[Occurrence]] = defaultdict(list)
    for occ in occurrences(program):
        by_line[occ.line].append(occ)
    kinds = kinds_in(program.everything())
    _, placed = render(program)
    in_loop = {e[2] for e in _events(placed[len(program.before)][1])}
    backwards = [e[2] for e in _events(placed) if e[1] in BACKWARDS]
    expected: set[tuple[str, int]] = set()
    for line, occs in by_line.items():
        kind = occs[0].kind
        steady = [o for o in occs if o.steady] or occs
        if kind == "clip":
            # CC102: on every path the clip runs after this iteration's effective step, with
            # no backward since.
            if all(o["after_step"] for o in steady):
                expected.add(("CC102", line))
            # CC201: on every path the clip finds loss-scaled gradients (a scaled backward and
            # no unscale_, zero-grad or step since), or on some path when nothing unscales.
            scaled = [bool(o["scaled"]) for o in steady]
            if all(scaled) or (any(scaled) and "unscale" not in kinds):
                expected.add(("CC201", line))
        elif kind in STEPS:
            # CC101: for some step, a clip that is its last clip on some path, and on every
            # such path clipped before a backward whose gradients the step applies.
            verdicts: dict[int, list[bool]] = defaultdict(list)
            for o in steady:
                if o["clip"] is not None:
                    clip_line, bad = o["clip"]  # type: ignore[misc]
                    verdicts[clip_line].append(bad)
            expected.update(("CC101", c) for c, bad in verdicts.items() if all(bad))
            # CC104: on every path the step finds the gradients discarded by a zero-grad.
            killers = [o["killed_by"] for o in steady]
            if all(k is not None for k in killers):
                expected.update(("CC104", k) for k in killers)  # type: ignore[misc]
            # CC104, accumulation: on some path a zero-grad threw an open window away.
            expected.update(("CC104", o["discarded_by"]) for o in occs  # type: ignore[misc]
                            if o["discarded_by"] is not None)
            # CC103: on every path the step applies no new gradients (and on some path they
            # are not all None), while a backward can run after it (later in the function,
            # or anywhere in the training loop around it).
            later = any(b > line or (line in in_loop and b in in_loop) for b in backwards)
            if later and all(o["empty"] for o in steady) and not all(o["cleared"] for o in steady):
                expected.add(("CC103", line))
            # CC202: a plain step on loss-scaled gradients (a scaled backward, no zero-grad or
            # step since) on some path, in a function that never steps through the scaler.
            if kind == "step" and "scaler_step" not in kinds and any(o["scaled"] for o in steady):
                expected.add(("CC202", line))
        elif kind == "unscale":
            # CC203: unscaled again (no scaler.step or update since the last unscale_) on
            # every path, or on some path inside an open accumulation window.
            again = [o for o in steady if o["again"]]
            if again and (len(again) == len(steady) or any(o["window"] for o in again)):
                expected.add(("CC203", line))
    return expected
