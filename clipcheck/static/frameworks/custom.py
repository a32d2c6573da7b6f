"""The project's own vocabulary (``[tool.clipcheck.vocabulary]``): in-house callables that
count as backward, clip, step or zero-grad. An entry is a dotted name as imported: a function
(``mylib.train.clip_all``, called with what it acts on first) or a method of a class
(``mylib.Trainer.backward``, on instances built by calling ``mylib.Trainer``)."""

from __future__ import annotations

from typing import NamedTuple

from clipcheck.static.events import EventKind

KEYS: dict[str, EventKind] = {"backward": EventKind.BACKWARD, "clip": EventKind.CLIP,
                              "step": EventKind.STEP, "zero-grad": EventKind.ZERO_GRAD}


class Vocabulary(NamedTuple):
    entries: tuple[tuple[str, EventKind], ...] = ()

    @property
    def words(self) -> frozenset[str]:
        """The names the project's calls go by (``clip_all``, ``backward``): the pre-screen's."""
        return frozenset(name.rpartition(".")[2] for name, _ in self.entries)

    def of_function(self, qualified: str | None) -> EventKind | None:
        return next((kind for name, kind in self.entries if name == qualified), None)

    def of_method(self, constructors: frozenset[str], method: str) -> EventKind | None:
        """The kind of ``x.method()`` when ``x`` was built by one of ``constructors``."""
        return next((kind for name, kind in self.entries
                     if name.rpartition(".")[2] == method and name.rpartition(".")[0] in constructors), None)


NONE = Vocabulary()
