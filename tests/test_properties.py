"""Property-based tests (hypothesis).

Part A: random training functions (zero-grad, backward, clip, step and the GradScaler calls,
in branches and nested loops) are checked against ``reference_interpreter``, which follows
every path and decides CC101, CC102, CC103, CC104, CC201, CC202 and CC203 from the rules'
definitions. Part B: random text, mutated fixtures and pathological nesting never crash
``analyse_source``; what cannot be parsed comes back as CC000. Part C: the configuration's
pre-scan of a pyproject.toml never passes over one that tomllib reads a ``[tool.clipcheck]`` in.
Part D: the nodes a graph finds on its own loops (all at once) are those a search from each
node comes back to.
"""

from __future__ import annotations

import ast
import re
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("hypothesis", reason="the property tests need hypothesis (pip install hypothesis)")

from hypothesis import HealthCheck, Phase, example, find, given, settings
from hypothesis import strategies as st
from reference_interpreter import (
    AMP_EVENTS,
    CODES,
    PLAIN_EVENTS,
    STEPS,
    Event,
    History,
    If,
    Loop,
    Program,
    findings,
    kinds_in,
    source,
)

from clipcheck.config import _names_us
from clipcheck.engine import analyse_source
from clipcheck.findings import Finding
from clipcheck.static.cfg import Cfg, Edge, Node

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def deterministic(examples: int) -> settings:
    """CI runs the same examples every time, with no time limit per example."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- Part A: the reference interpreter ---------------------------------------------------------
# Event kinds, repeated to weight them: the events that make updates come up more often.
PLAIN_WEIGHTED = (*PLAIN_EVENTS, "zero", "backward", "backward", "clip", "step")
AMP_WEIGHTED = (*AMP_EVENTS, "zero", "scaled_backward", "scaled_backward", "clip", "unscale", "scaler_step")


@st.composite
def programs(draw: st.DrawFn, amp: bool, compounds: int = 2, depth: int = 2) -> Program:
    """A training function: a few events, then the training loop (with at most ``compounds``
    ``if``/``for`` statements nested at most ``depth`` deep; it steps somewhere), then a few
    events."""
    kinds = AMP_WEIGHTED if amp else PLAIN_WEIGHTED
    budget = [compounds]

    def block(level: int, least: int) -> tuple[Event | If | Loop, ...]:
        stmts: list[Event | If | Loop] = []
        for _ in range(draw(st.integers(least, 4))):
            choice = draw(st.integers(0, 3)) if level < depth and budget[0] > 0 else 0
            if choice <= 1:
                stmts.append(Event(draw(st.sampled_from(kinds))))
                continue
            budget[0] -= 1
            if choice == 2:
                body = block(level + 1, 0)
                orelse = block(level + 1, 0) if draw(st.booleans()) else None
                stmts.append(If(body, orelse))
            else:
                stmts.append(Loop(block(level + 1, 0)))
        return tuple(stmts)

    body = block(0, 1)
    if not kinds_in(body) & STEPS:
        body = (*body, Event("scaler_step" if amp and draw(st.booleans()) else "step"))
    before, after = (tuple(draw(st.lists(st.sampled_from(kinds).map(Event), max_size=2))) for _ in "ab")
    return Program(body, amp, before, after)


def reported(program: Program) -> set[tuple[str, int]]:
    """What clipcheck reports for the program, limited to the rules the reference decides."""
    return {(f.code, f.line) for f in analyse_source(source(program), "generated.py") if f.code in CODES}


def check_against_reference(program: Program) -> None:
    expected, got = findings(program), reported(program)
    assert got == expected, (f"\n{source(program)}\nreference only: {sorted(expected - got)}"
                             f"\nclipcheck only: {sorted(got - expected)}")


def events(*kinds: str) -> tuple[Event, ...]:
    return tuple(Event(k) for k in kinds)


# The rule pages' examples in the generator's vocabulary, and what each must report (lines of
# the rendered source: the body starts at line 6, or 7 with a scaler; a backward takes two).
RULE_PAGE_EXAMPLES = {
    "CC101": (Program(events("zero", "clip", "backward", "step")), {("CC101", 7)}),
    "CC102": (Program(events("backward", "step", "clip", "zero")), {("CC102", 9)}),
    "CC103": (Program(events("zero_keep", "step", "backward")), {("CC103", 7)}),
    "CC104": (Program(events("backward", "zero", "step")), {("CC104", 8)}),
    "CC104-truncated-bptt": (Program((Loop(events("zero", "backward")), Event("step"))), {("CC104", 7)}),
    "CC201": (Program(events("zero", "scaled_backward", "clip", "scaler_step", "update"), amp=True),
              {("CC201", 10)}),
    "CC202": (Program(events("zero", "scaled_backward", "step"), amp=True), {("CC202", 10)}),
    "CC203-every-micro-batch": (
        Program((Loop(events("scaled_backward", "unscale")), *events("scaler_step", "update")), amp=True),
        {("CC203", 10)}),
    "fixed": (Program(events("zero", "backward", "clip", "step")), set()),
    "fixed-amp": (Program(events("zero", "scaled_backward", "unscale", "clip", "scaler_step", "update"),
                          amp=True), set()),
}


@pytest.mark.parametrize(("program", "expected"), RULE_PAGE_EXAMPLES.values(), ids=list(RULE_PAGE_EXAMPLES))
def test_reference_on_rule_page_examples(program: Program, expected: set[tuple[str, int]]) -> None:
    """The reference finds the rule pages' mistakes (and nothing in their fixes), as does clipcheck."""
    assert findings(program) == expected, source(program)
    assert reported(program) == expected, source(program)


@deterministic(250)
@given(programs(amp=False))
# A stale backward's gradients cross an iteration boundary before the zero-grad: the step
# then applies zeros it already applied (CC103), not discarded gradients (CC104).
@example(Program((*events("zero_keep", "zero_keep"),
                  If(events("zero_keep"), events("step", "step", "backward")))))
# Only the loop's fourth iteration shows the path (gradients discarded, then found by the
# second step) that keeps the second step from CC103: unrolling loops three times is not enough.
@example(Program((If(events("zero", "step", "zero"), events("step", "step", "backward")), Event("clip"))))
def test_reference_agrees_without_amp(program: Program) -> None:
    """Plain programs: clipcheck reports exactly what the reference decides."""
    check_against_reference(program)


@deterministic(250)
@given(programs(amp=True))
def test_reference_agrees_with_amp(program: Program) -> None:
    """Programs with a GradScaler: clipcheck reports exactly what the reference decides."""
    check_against_reference(program)


# Found by the property below (minimal programs). Past 64 states at one node, clipcheck's
# dataflow widens what arrives into one "guessed" state. It used to become an ordinary path once
# a backward made its unknown gradients fresh and a zero-grad or step cleared the guess, so a
# rule that needs "every path" concluded on an incomplete set of paths and reported what the
# reference rules out (here, a mistake that the dropped paths do not make). A widened state now
# stays marked, and a unit where one arises makes no finding that rests on the paths: silence,
# not a guess. These are the programs that showed it.
WIDENING = {
    "CC101": Program((
        Event("zero"),
        Loop((If(events("scaler_step")), If(events("clip")), Event("scaled_backward"))),
        Event("clip"),
        Loop(events("step")),
    ), amp=True),
    "CC102": Program((
        Loop(events("zero")),
        If(events("backward")),
        If(events("zero_keep", "backward"), (Loop(events("step", "clip")), Event("clip"))),
    )),
    "CC103": Program((
        Loop((Loop(events("backward")),)),
        Loop((If(events("step", "step"), events("step")), Event("clip"))),
        If(events("zero_keep"), events("clip", "zero")),
    )),
    "CC104": Program((
        *events("zero_keep", "clip"),
        If(events("scaler_step")),
        Loop((If(events("step")), If(events("backward"), events("zero")))),
        Loop((Event("unscale"), Loop(events("update")))),
        Event("scaled_backward"),
    ), amp=True),
    "CC203": Program((
        Loop((
            If((If((), events("unscale")), If(events("zero"), events("unscale", "scaler_step")))),
            If(events("backward")),
        )),
        Event("scaled_backward"),
    ), amp=True),
}


@pytest.mark.parametrize("program", WIDENING.values(), ids=list(WIDENING))
def test_widening_adds_no_finding(program: Program) -> None:
    got, expected = reported(program), findings(program)
    assert got <= expected, f"\n{source(program)}\nclipcheck only: {sorted(got - expected)}"


@deterministic(60)
@given(programs(amp=True, compounds=5, depth=3))
@example(WIDENING["CC103"])
def test_larger_programs_report_nothing_the_reference_rules_out(program: Program) -> None:
    """Larger programs, where clipcheck may lose precision: it may stay silent where the
    reference reports, but every finding it makes is one the reference makes too."""
    got, expected = reported(program), findings(program)
    assert got <= expected, f"\n{source(program)}\nclipcheck only: {sorted(got - expected)}"


MUTATIONS = {
    "no zero-grad discards gradients": ("_killed_by", lambda self: None),
    "no clip is misplaced before a backward": ("_clip_verdict", lambda self, fresh: None),
    "loop iterations are not told apart": ("boundary", lambda self, accumulation: None),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_wrong_reference_fails_the_property(mutation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison has teeth: a reference with one rule definition broken disagrees with
    clipcheck on some generated program."""
    name, broken = MUTATIONS[mutation]
    monkeypatch.setattr(History, name, broken)
    quick = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                     phases=[Phase.generate])
    found = find(programs(amp=False), lambda p: findings(p) != reported(p), settings=quick)
    assert findings(found) != reported(found)


# -- Part B: robustness ---------------------------------------------------------------------------
def parses(text: str) -> bool:
    """Whether CPython's parser accepts ``text`` (errors found later, when compiling, such as
    ``break`` outside a loop, leave the file analysable)."""
    try:
        compile(text, "<generated>", "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def check_never_crashes(text: str) -> list[Finding]:
    """``analyse_source`` returns findings, a CC000 among them when Python cannot parse it."""
    with warnings.catch_warnings():  # CPython's SyntaxWarnings about odd literals (``1if``)
        warnings.simplefilter("ignore", SyntaxWarning)
        result = analyse_source(text, "mutated.py")
        parsed = parses(text)
    assert isinstance(result, list)
    assert all(isinstance(f, Finding) and re.fullmatch(r"CC\d{3}", f.code) for f in result)
    last_line = len(text.splitlines()) + 1
    assert all(1 <= f.line <= last_line and f.column >= 1 for f in result), result
    if not parsed:
        assert [f.code for f in result] == ["CC000"], text
    return result


# Pieces of training code to glue together: random text that gets past the pre-screen.
TOKENS = [
    "optimizer.step()", "optimizer.zero_grad()", "loss.backward()", "scaler.scale(loss).backward()",
    "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)", "scaler.unscale_(optimizer)",
    "scaler.step(optimizer)", "scaler.update()", "def train(model, opt):", "class T:", "for x in loader:",
    "while True:", "if flag:", "else:", "with torch.autocast('cuda'):", "try:", "except Exception:",
    "return", "break", "continue", "lambda: ", "yield", "async ", "await ", "@decorator", "import torch",
    "from torch import nn", "x = ", "(", ")", "[", "]", "{", "}", ":", ",", ".", "=", "*", "**", "#",
    "'", '"', '"""', "\\", "\n", "    ", "\t", "\r", " ", "1.0", "-1", "self.", "opt", "p.grad = None",
    "\x00", "\ufeff", "é", "match x:", "case _:",
]


@deterministic(300)
@given(st.text())
def test_random_text_never_crashes(text: str) -> None:
    check_never_crashes(text)


@deterministic(300)
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_random_training_tokens_never_crash(text: str) -> None:
    check_never_crashes(text)


FIXTURE_SOURCES = sorted(p.read_text(encoding="utf-8") for p in FIXTURES.rglob("*.py"))


@st.composite
def mutated_fixtures(draw: st.DrawFn) -> str:
    """A fixture with lines deleted, duplicated, swapped, re-indented or broken by random
    characters, and perhaps truncated."""
    lines = draw(st.sampled_from(FIXTURE_SOURCES)).splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        j = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "indent", "dedent"]))
        if action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(j, lines[i])
        elif action == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif action == "insert":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.text(min_size=1, max_size=3)) + lines[i][at:]
        elif action == "indent":
            lines[i] = " " * draw(st.integers(1, 8)) + lines[i]
        else:
            lines[i] = lines[i].lstrip(" ")
    text = "".join(lines)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


@deterministic(300)
@given(mutated_fixtures())
def test_mutated_fixtures_never_crash(text: str) -> None:
    check_never_crashes(text)


def nested_ifs(depth: int) -> str:
    lines = ["def train(model, loader, optimizer):"]
    lines += ["    " * (d + 1) + f"if flag{d}:" for d in range(depth)]
    lines.append("    " * (depth + 1) + "optimizer.step()")
    return "\n".join(lines) + "\n"


def nested_loops(depth: int) -> str:
    lines = ["def train(model, loader, optimizer):"]
    lines += ["    " * (d + 1) + f"for x{d} in loader:" for d in range(depth)]
    body = ["loss = model(x0).sum()", "loss.backward()", "optimizer.step()", "optimizer.zero_grad()"]
    lines += ["    " * (depth + 1) + text for text in body]
    return "\n".join(lines) + "\n"


PATHOLOGICAL = {
    "parentheses 1000 deep": "(" * 1000 + ")" * 1000 + "\n",
    "parentheses 1000 deep in a step": "optimizer.step(" + "(" * 1000 + "1.0" + ")" * 1000 + ")\n",
    "parentheses 150 deep in a step": "optimizer.step(" + "(" * 150 + "1.0" + ")" * 150 + ")\n",
    "lists 1000 deep": "x = " + "[" * 1000 + "]" * 1000 + "\n",
    "if 200 deep": nested_ifs(200),
    "if 95 deep": nested_ifs(95),
    "for 95 deep": nested_loops(95),
    "calls 180 deep": "loss = " + "f(" * 180 + "x" + ")" * 180 + "\nloss.backward()\n",
    "a sum of 5000 terms": "loss = " + " + ".join(["x"] * 5000) + "\nloss.backward()\noptimizer.step()\n",
    "an attribute chain of 5000": "x" + ".a" * 5000 + ".step()\n",
    "1200 statements": "optimizer.zero_grad()\nloss.backward()\noptimizer.step()\n" * 400,
    "unary minus 5000 deep": "x = " + "-" * 5000 + "1\noptimizer.step()\n",
    "lambdas 100 deep": "f = " + "lambda: " * 100 + "optimizer.step()\n",
}


@pytest.mark.parametrize("text", PATHOLOGICAL.values(), ids=list(PATHOLOGICAL))
def test_pathological_nesting_never_crashes(text: str) -> None:
    check_never_crashes(text)


# -- Part C: the pyproject.toml pre-scan ---------------------------------------------------------
# Table headers and key lines of a pyproject.toml, with clipcheck's table written every way TOML
# allows, and lines that only look like it (in strings, comments, arrays and other tables).
# ``{n}`` makes each key its own, so that most documents are valid TOML.
TOML_HEADERS = ("[tool]", "[tool.clipcheck]", "[ tool . 'clipcheck' ]", '["tool"]',
                '[tool."clipcheck".vocabulary]', "[[tool.clipcheck.list]]", '["tool.clipcheck"]',
                "[project]", "[project.scripts]", "[tool.ruff] # [tool.clipcheck]", "[[tool]]",
                "[tool.black]")
TOML_KEYS = ('clipcheck{n} = "clipcheck.cli:main"', 'name{n} = "clipcheck"', "clipcheck.select{n} = []",
             "tool.clipcheck.x{n} = 1", "tool = {{ clipcheck = {{ y{n} = 2 }} }}", '"tool.clipcheck{n}" = 1',
             "'clipcheck' . z{n} = 3", "clipcheck = {{ w{n} = [1, 2] }}", 'k{n} = "a # [tool]"',
             'k{n} = [\n  "[tool]",\n  [1, 2],\n  {{ a = "]" }},\n]', "k{n} = [ # [\n  1\n]",
             "k{n} = [\n  [1, 2]]", "# clipcheck{n} = 1", "", 'k{n} = \'it"s ]\'',
             'k{n} = """\n[tool]\nclipcheck = 1\n"""', "tool . clipcheck . v{n} = true", 'k{n} = "\\u0041"',
             'dependencies{n} = ["clipcheck>=0.1"]')


@st.composite
def pyprojects(draw: st.DrawFn) -> str:
    lines = [draw(st.sampled_from(TOML_KEYS)).format(n=n) for n in range(draw(st.integers(0, 2)))]
    for header in draw(st.lists(st.sampled_from(TOML_HEADERS), max_size=4, unique=True)):
        lines.append(header)
        lines += [draw(st.sampled_from(TOML_KEYS)).format(n=n) for n in range(draw(st.integers(0, 3)))]
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is the oracle")
@deterministic(1500)
@given(pyprojects())
@example('[tool]\n# a\u2028[other]\nclipcheck.select = []\n')
@example('[tool]\nx = [\n  [1, 2]]\nclipcheck = {}\n')
def test_the_pyproject_pre_scan_misses_no_table_of_ours(text: str) -> None:
    import tomllib

    try:
        tool = tomllib.loads(text).get("tool")
    except tomllib.TOMLDecodeError:
        return
    if isinstance(tool, dict) and "clipcheck" in tool:
        assert _names_us(text)


def test_the_pyproject_pre_scan_passes_over_files_that_only_name_clipcheck() -> None:
    """A project that depends on clipcheck, or is clipcheck, is not parsed for its settings."""
    assert not _names_us('[project]\nname = "clipcheck"\n'
                         'dependencies = ["clipcheck>=0.1"]  # [tool.clipcheck]\n'
                         '[project.scripts]\nclipcheck = "clipcheck.cli:main"\n'
                         '[project.optional-dependencies]\ndev = [\n  "clipcheck",\n  "ruff",\n]\n'
                         '[tool.ruff]\nline-length = 100\n')


# -- Part D: the nodes on the unit's own loops ------------------------------------------------------
@st.composite
def graphs(draw: st.DrawFn) -> Cfg:
    size = draw(st.integers(1, 12))
    nodes = [Node(i, succs=[(s, Edge.FORWARD) for s in draw(st.lists(st.integers(0, size - 1), max_size=3))])
             for i in range(size)]
    return Cfg(nodes, 0, draw(st.integers(0, size - 1)), frozenset(), {}, frozenset(), frozenset(), {}, {})


@deterministic(1500)
@given(graphs())
def test_the_own_loops_are_the_nodes_a_search_comes_back_to(cfg: Cfg) -> None:
    searched = {n.id for n in cfg.nodes if n.id in cfg.reachable_from(n.id, through_exit=False)}
    assert cfg.on_own_loops() == searched
