"""What every rule shares: the rule's identity, the raw finding it makes, and how messages
name events and their lines."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from clipcheck.static.dataflow import OptState
from clipcheck.static.events import Event
from clipcheck.static.facts import UnitFacts


@dataclass(frozen=True)
class RawFinding:
    """A finding before positions: the event it points at and what to say."""

    rule: Rule
    event: Event
    message: str


class Rule:
    code: ClassVar[str]
    name: ClassVar[str]
    summary: ClassVar[str]

    def check(self, facts: UnitFacts) -> Iterable[RawFinding]:
        raise NotImplementedError

    def finding(self, event: Event, message: str) -> RawFinding:
        return RawFinding(self, event, message)


def label(event: Event) -> str:
    return f"`{event.label}`"


def origins(states: Iterable[OptState], attribute: str) -> list[int]:
    return sorted({getattr(s, attribute) for s in states} - {-1})
