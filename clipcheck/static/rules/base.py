"""What every rule shares: the rule's identity, the raw finding it makes, and how messages
name events and their lines."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, NamedTuple

from clipcheck.catalogue import BY_CODE
from clipcheck.static.dataflow import OptState
from clipcheck.static.events import Event, Origin
from clipcheck.static.facts import UnitFacts


class RawFinding(NamedTuple):
    """A finding before positions: the event it points at and what to say."""

    rule: Rule
    event: Event
    message: str
    # It rests on the step an unseen caller runs after the function: it stands only where a
    # caller in the module shows that step (and is then reported inside the function).
    implied: bool = False
    # The event a fix moves the offending call next to (clip rules) or edits (a generator's
    # binding); ``None``: no fix is offered.
    anchor: Event | None = None


class Rule:
    """One rule: its code, and a check over facts; its name and summary are the catalogue's."""

    code: ClassVar[str]
    # Whether the rule decides on the gradients' states along the paths (most do); a rule
    # that reads one call's own arguments or the parameter generators does not.
    reads_paths: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return BY_CODE[self.code].name

    @property
    def summary(self) -> str:
        return BY_CODE[self.code].summary

    def check(self, facts: UnitFacts) -> Iterable[RawFinding]:
        raise NotImplementedError

    def finding(self, event: Event, message: str, step: Event | None = None,
                anchor: Event | None = None) -> RawFinding:
        return RawFinding(self, event, message, step is not None and step.origin is Origin.CALLER, anchor)


def label(event: Event) -> str:
    return f"`{event.label}`"


def subject(facts: UnitFacts, event: Event) -> str:
    """The event a finding is about; at a helper's call, where inside the helper it runs."""
    if not event.chain or event.origin is not Origin.SOURCE:
        return label(event)
    return f"{label(event)} (line {facts.line_of(event.node)}, reached through this call)"


def lines(numbers: Iterable[int]) -> str:
    """``line 16``, ``lines 16 and 23``, ``lines 16, 23 and 31``."""
    ordered = [str(n) for n in sorted(set(numbers))]
    if len(ordered) == 1:
        return f"line {ordered[0]}"
    return f"lines {', '.join(ordered[:-1])} and {ordered[-1]}"


def plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


def origins(states: Iterable[OptState], attribute: str) -> list[int]:
    return sorted({getattr(s, attribute) for s in states} - {-1})


def step_phrase(facts: UnitFacts, step: Event) -> str:
    """``the step at line 12``, or the step an unseen caller runs after the function."""
    if step.origin is Origin.CALLER:
        return "the caller's next step"
    return f"the step at {lines([facts.line_of(step.node)])}"
