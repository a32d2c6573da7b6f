"""The pre-screen: decides with the standard library's ``ast`` (CPython's own parser, a small
part of a LibCST parse) whether a file can hold a finding, and which of its top-level
statements the analysis needs. Most Python files, even in a deep-learning code base, never
reach LibCST; those that do are analysed without the definitions that cannot matter.

The screen is exact, not a heuristic: a file it skips has no finding when analysed in full,
and a file it reduces has the same findings as the whole (``tests/test_screen.py`` checks both
over every fixture and over generated programs). Its words are the recognizer's vocabulary;
a test checks that they cover it.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import CodeType
from typing import Any, NamedTuple

from clipcheck.sources import source_lines
from clipcheck.static.frameworks.naming import OPTIMIZER_WORDS, any_says_scaler, class_words

# Calls that can make a finding on their own: a clip (CC301, CC401, CC402 and a clip inside
# Lightning's training_step), an unscale (CC203), a no_sync block (CC403), Lightning's
# Trainer threshold (CC301).
CLIP_WORDS = frozenset({"clip_grad_norm_", "clip_grad_norm", "clip_grad_value_", "clip_grads_with_norm_",
                        "clip_gradients"})
SINGLE_WORDS = CLIP_WORDS | {"unscale_", "unscale_gradients", "no_sync", "no_backward_sync",
                             "gradient_clip_val"}
# Every other finding needs two kinds of event: among a step, a backward, a zero-grad or a
# ``.grad`` written by hand, a scaler, and a framework hook that implies the others.
STEP_WORDS = frozenset({"step"})  # as a method: ``optimizer.step()``, ``scaler.step(opt)``
BACKWARD_WORDS = frozenset({"backward", "manual_backward"})
ZERO_WORDS = frozenset({"zero_grad"})
HOOK_WORDS = frozenset({
    "training_step", "train_step", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_before_zero_grad", "optimizer_step", "optimizer_zero_grad", "configure_gradient_clipping",
})
# A parameter generator handed to an optimizer twice (CC302, with a clip or an optimizer class).
# A generator expression stored under a name is one too: it counts as this word (the name
# CPython gives its code, so that compiled code names it as well).
GENERATOR_EXPRESSION = "<genexpr>"
GENERATOR_WORDS = frozenset({"parameters", "named_parameters", "filter", "map", "chain", "from_iterable",
                             "islice", GENERATOR_EXPRESSION})
# Calls that hand back what they are given (accelerate's ``prepare``): a generator expression
# handed to one is stored as well.
PASSING_METHODS = frozenset({"prepare"})
# Freezing a module (``net.requires_grad_(False)``, ``net.requires_grad = False``) is told
# apart from freezing any tensor by the optimizers built over it, wherever they are built.
FREEZE_METHOD, FREEZE_ATTRIBUTE = "requires_grad_", "requires_grad"
OPTIMIZER_MODULES = frozenset({"optim", "optimizers", "optimizer"})
# Methods that, on ``p.grad``, clip, zero or overwrite it by hand.
GRAD_METHODS = frozenset({"clamp_", "clip_", "mul_", "zero_", "fill_", "copy_"})
GRAD = "grad"
# Words after which a statement may hold an event, though alone they make no finding.
EVENT_WORDS = frozenset({"scale", "update", "requires_grad", "requires_grad_", "toggle_optimizer",
                         "untoggle_optimizer", "set_requires_grad", "deepcopy", GRAD})

# Members a framework reads from a class itself: Lightning's switch to manual optimization.
FRAMEWORK_MEMBERS = frozenset({"automatic_optimization"})


Verdict = tuple[str, int, int]  # why CPython refuses a text, and the (line, column) it names


class Screened(NamedTuple):
    """What the screen decided: a syntax error; or nothing that can be found (``text`` is
    ``None``); or the text to analyse, with the statements that cannot matter blanked out
    (every line and column of the rest in place)."""

    error: Verdict | None = None
    text: str | None = None


def _refused(error: SyntaxError) -> Verdict:
    return f"syntax error: {error.msg}", error.lineno or 1, error.offset or 1


def _compile(source: str | ast.Module, shown: str, flags: int) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes and the like: not ours to report
        # ``optimize=0`` whatever ``-O`` says: an ``assert``'s calls must stay among the names.
        return compile(source, shown, "exec", flags, dont_inherit=True, optimize=0)


def parse(source: str, shown: str, flags: int = 0) -> ast.Module | Verdict:
    """The module's tree, or CPython's verdict: a syntax error at its exact position, and a
    cheap refusal of pathological nesting (before LibCST's recursive parser sees it)."""
    try:
        tree = _compile(source, shown, flags | ast.PyCF_ONLY_AST)
    except SyntaxError as error:
        return _refused(error)
    except RecursionError:  # (a MemoryError is the worker's: its limit, not the code's)
        return "the code nests too deeply to analyse", 1, 1
    except ValueError as error:  # e.g. a null byte
        return f"cannot be parsed: {error}", 1, 1
    assert isinstance(tree, ast.Module)
    return tree


def compiled(source: str | ast.Module, shown: str, flags: int = 0) -> CodeType | Verdict | None:
    """The module's code, or the syntax error CPython's compiler finds, which its parser alone
    does not (``return`` outside a function, ``break`` outside a loop, a late ``from
    __future__`` import): Python refuses to run such a file all the same. ``None`` where
    the compiler gives up for another reason (deep nesting, a null byte): the parser's
    verdict then decides."""
    try:
        code = _compile(source, shown, flags)
    except SyntaxError as error:
        return _refused(error)
    except (ValueError, RecursionError, MemoryError):
        return None
    assert isinstance(code, CodeType)
    return code


def cell_error(source: str) -> Verdict | None:
    """Why a notebook's cell (its magics masked) is not one IPython runs, or ``None``. IPython
    compiles each top-level statement of a cell on its own, with ``await`` allowed at the top:
    a ``from __future__`` import after another statement, or ``global x`` after ``x = 1``,
    is no error there, while ``return`` or ``break`` at the top still is."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = parse(source, "<cell>", flags)
    if isinstance(tree, tuple):
        return tree
    for statement in tree.body:
        code = compiled(ast.Module([statement], []), "<cell>", flags)
        if not isinstance(code, CodeType):
            return code  # the compiler's error, or ``None``: it gave up where the parser did not
    return None


@dataclass(eq=False)
class _Item:
    """A top-level statement, or (for a class) its header and each member of its body: what
    it mentions, what it defines, what it reads."""

    first: int
    last: int
    is_import: bool = False
    parent: int | None = None  # a member: the index of its class's header
    names: set[str] = field(default_factory=set)  # every identifier, at any depth
    reads: set[str] = field(default_factory=set)  # names and attributes read, at any depth
    methods: set[str] = field(default_factory=set)  # attribute names (``x.step``)
    defs: set[str] = field(default_factory=set)  # functions defined, at any depth
    defines: set[str] = field(default_factory=set)  # what a call or a use of a name can reach
    binds: set[str] = field(default_factory=set)  # ... and the attributes it assigns
    grads: bool = False  # a ``p.grad`` written, or clipped, zeroed, overwritten by hand
    own_unit: bool = False  # a ``def`` or a class: not part of the module's top-level unit
    aliases: dict[str, set[str]] = field(default_factory=dict)  # ``import x.y as z``: z -> x, y
    frozen: set[str] = field(default_factory=set)  # the last names of the modules it may freeze


def _grad_receiver(node: ast.expr) -> bool:
    """``p.grad`` or ``p.grad.data``."""
    if isinstance(node, ast.Attribute) and node.attr == "data":
        node = node.value
    return isinstance(node, ast.Attribute) and node.attr == GRAD


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp, ast.SetComp,
           ast.DictComp, ast.GeneratorExp)


def _names_bound(node: ast.AST, into: set[str]) -> None:
    """The names ``node`` binds in the namespace it runs in, not in the functions, classes
    and comprehensions it defines (those define their own name only)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        into.add(node.name)
        return
    if isinstance(node, _SCOPES):
        return
    if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
        into.add(node.id)
    elif isinstance(node, ast.alias):
        into.add(node.asname or node.name.split(".")[0])
    for child in ast.iter_child_nodes(node):
        _names_bound(child, into)


# Fields that never hold a node: skipped on the walk (``ctx``: the shared ``Load`` and ``Store``).
_LEAF_FIELDS = frozenset({"ctx", "id", "attr", "arg", "module", "asname", "type_comment", "level",
                          "is_async", "simple", "conversion", "kind", "tag"})
_NODE_FIELDS: dict[type, tuple[str, ...]] = {}  # by node class: its fields but the leaves


def _subtree(node: ast.AST) -> list[ast.AST]:
    """``node`` and every node below it, in no particular order: :func:`ast.walk` without its
    generators (the screen's largest cost)."""
    found: list[ast.AST] = []
    stack: list[object] = [node]
    pop, push, extend, keep = stack.pop, stack.append, stack.extend, found.append
    fields_of = _NODE_FIELDS
    while stack:
        current = pop()
        if not isinstance(current, ast.AST):
            continue  # a name in ``global a, b``, a missing dictionary key
        keep(current)
        kind = current.__class__
        fields = fields_of.get(kind)
        if fields is None:
            fields = fields_of[kind] = tuple(f for f in kind._fields if f not in _LEAF_FIELDS)
        for name in fields:
            value = getattr(current, name, None)
            if value.__class__ is list:
                extend(value)
            else:
                push(value)
    return found


def _note_call(item: _Item, call: ast.Call) -> None:
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in GRAD_METHODS and _grad_receiver(func.value):
        item.grads = True
    item.names.update(k.arg for k in call.keywords if k.arg)
    if isinstance(func, ast.Attribute):
        if func.attr in PASSING_METHODS:
            _note_stored(item, call.args)
        elif func.attr == FREEZE_METHOD:
            _note_frozen(item, func.value)


def _note_frozen(item: _Item, module: ast.expr) -> None:
    if isinstance(module, (ast.Name, ast.Attribute)):
        item.frozen.add(module.id if isinstance(module, ast.Name) else module.attr)


def _note_stored(item: _Item, values: list[ast.expr]) -> None:
    """A generator expression among values bound to names: a parameter generator to the
    analysis, whatever it iterates (inline, ``sum(p.numel() for p in ps)``, it is none)."""
    if any(isinstance(v, ast.GeneratorExp) for v in values):
        item.names.add(GENERATOR_EXPRESSION)


def _note_definition(item: _Item, definition: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
    item.names.add(definition.name)
    if isinstance(definition, ast.ClassDef):
        item.binds.add(definition.name)  # the analysis knows a module's classes at any depth
    else:
        item.defs.add(definition.name)


def _note_global(item: _Item, statement: ast.Global) -> None:
    item.defines.update(statement.names)


def _note_alias(item: _Item, alias: ast.alias) -> None:
    parts = alias.name.split(".")
    item.names.update(parts)
    item.binds.add(alias.asname or parts[0])  # imports count at any depth, too
    if alias.asname:  # every import under that name, whichever runs (``try``/``except``)
        item.aliases.setdefault(alias.asname, set()).update(parts)


def _note_import_from(item: _Item, statement: ast.ImportFrom) -> None:
    if not statement.module:
        return
    module = statement.module.split(".")
    item.names.update(module)
    for imported in statement.names:  # ``from torch.optim import RMSprop``: an optim class
        bound = imported.asname or imported.name
        item.aliases.setdefault(bound, set()).update([*module, imported.name])


def _note_assignment(item: _Item, statement: ast.AugAssign | ast.AnnAssign | ast.Assign | ast.Delete) -> None:
    targets = statement.targets if isinstance(statement, (ast.Assign, ast.Delete)) else [statement.target]
    item.grads |= any(_grad_receiver(t) for t in targets)
    for target in targets:
        if isinstance(target, ast.Attribute) and target.attr == FREEZE_ATTRIBUTE:
            _note_frozen(item, target.value)
    value = statement.value if isinstance(statement, (ast.Assign, ast.AnnAssign)) else None
    if value is None:
        return
    values = value.elts if isinstance(value, (ast.Tuple, ast.List)) else [value]
    _note_stored(item, values)  # ``a, b = (p for p in x), y`` binds each its own
    for target in targets:  # ``O = optim.SGD``, ``Fast, Slow = optim.AdamW, optim.SGD``
        pairs = [(target, value)]
        if isinstance(target, (ast.Tuple, ast.List)) and len(target.elts) == len(values):
            pairs = list(zip(target.elts, values, strict=True))
        for name, bound in pairs:
            chain = _chain(bound)
            if chain and isinstance(name, ast.Name):
                item.aliases.setdefault(name.id, set()).update(chain)


# What an item notes of each kind of node but names and attributes (the most frequent, noted
# in the walk itself); the other kinds say nothing.
_NOTES: dict[type, Callable[[_Item, Any], None]] = {
    ast.Call: _note_call, ast.FunctionDef: _note_definition, ast.AsyncFunctionDef: _note_definition,
    ast.ClassDef: _note_definition, ast.Global: _note_global, ast.alias: _note_alias,
    ast.ImportFrom: _note_import_from, ast.AugAssign: _note_assignment, ast.AnnAssign: _note_assignment,
    ast.Assign: _note_assignment, ast.Delete: _note_assignment,
}


def _item(node: ast.AST, first: int, last: int, parent: int | None = None) -> _Item:
    item = _Item(first, last, isinstance(node, (ast.Import, ast.ImportFrom)), parent)
    names, reads, methods, binds, notes = item.names, item.reads, item.methods, item.binds, _NOTES
    for child in _subtree(node):
        kind = child.__class__
        if kind is ast.Name:
            names.add(child.id)  # type: ignore[attr-defined]
            if child.ctx.__class__ is ast.Load:  # type: ignore[attr-defined]
                reads.add(child.id)  # type: ignore[attr-defined]
        elif kind is ast.Attribute:
            attr = child.attr  # type: ignore[attr-defined]
            names.add(attr)
            methods.add(attr)
            if child.ctx.__class__ is ast.Load:  # type: ignore[attr-defined]
                reads.add(attr)
            else:
                binds.add(attr)  # ``self.optimizer = ...``: what ``self.optimizer`` reads
                item.grads |= attr == GRAD
        elif kind in notes:
            notes[kind](item, child)
    _names_bound(node, item.defines)
    item.binds |= item.defines
    return item


def _chain(node: ast.expr) -> list[str] | None:
    """The names of ``a.b.c``; ``None`` for any other expression."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        base = _chain(node.value)
        return None if base is None else [*base, node.attr]
    return None


def _start(node: ast.stmt) -> int:
    return min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])


def _items(body: list[ast.stmt]) -> list[_Item]:
    """The module's top-level statements as items, each class split into its header and its
    members (so that a large class is analysed with only the methods that can matter)."""
    items: list[_Item] = []
    for stmt in body:
        last = stmt.end_lineno or stmt.lineno
        if not isinstance(stmt, ast.ClassDef):
            items.append(_item(stmt, _start(stmt), last))
            items[-1].own_unit = isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef))
            continue
        header = ast.ClassDef(name=stmt.name, bases=stmt.bases, keywords=stmt.keywords, body=[],
                              decorator_list=stmt.decorator_list)
        items.append(_item(header, _start(stmt), _start(stmt.body[0]) - 1))
        items[-1].own_unit = True
        parent = len(items) - 1
        items.extend(_item(m, _start(m), m.end_lineno or m.lineno, parent) for m in stmt.body)
    return items


def _hooks(defs: Iterable[str]) -> bool:
    """A framework hook that runs once per batch around a step it implies."""
    return not HOOK_WORDS.isdisjoint(defs) or any(
        d.endswith(("_batch_start", "_batch_end")) and "train" in d for d in defs if d.startswith("on_"))


def _optimizer_class(names: Iterable[str]) -> bool:
    """An optimizer's class or module among ``names`` (``AdamW``, ``torch.optim``)."""
    return not OPTIMIZER_MODULES.isdisjoint(names) or any(
        class_words(n) & OPTIMIZER_WORDS for n in names if n[:1].isupper())


# The kinds of event a piece of code can hold, as bits: calls that make a finding alone
# (``SINGLE_WORDS``), the kinds of event of which any two can make one, and the two halves
# of an exhausted parameter generator (a generator and an optimizer class).
SINGLE, STEP, BACKWARD, ZERO, SCALER, HOOK, GENERATOR, OPTIMIZER = (1 << bit for bit in range(8))
_EVENTS = STEP | BACKWARD | ZERO | SCALER | HOOK
_EXHAUSTED = GENERATOR | OPTIMIZER


def kinds(names: set[str], *, step: bool, grads: bool, defs: Iterable[str],
          custom: frozenset[str] = frozenset()) -> int:
    """The kinds of event code can hold that mentions ``names``, with a step method (``step``),
    a ``.grad`` written by hand (``grads``) and these functions defined (``defs``)."""
    return ((SINGLE if names & (SINGLE_WORDS | custom) else 0) | (STEP if step else 0)
            | (BACKWARD if names & BACKWARD_WORDS else 0) | (ZERO if grads or names & ZERO_WORDS else 0)
            | (SCALER if any_says_scaler(names) else 0) | (HOOK if _hooks(defs) else 0)
            | (GENERATOR if names & GENERATOR_WORDS else 0) | (OPTIMIZER if _optimizer_class(names) else 0))


def can_find(found: int) -> bool:
    """Whether events of the kinds ``found`` can make a finding of any rule: one that makes one
    alone, two kinds of event, or a parameter generator beside an optimizer class."""
    return bool(found & SINGLE) or (found & _EVENTS).bit_count() >= 2 or found & _EXHAUSTED == _EXHAUSTED


def _code_names(code: CodeType, into: set[str]) -> None:
    """Every name compiled code uses: globals, attributes and imported paths (``co_names``),
    locals, its functions' names, and keyword arguments (tuples of names among its
    constants). Strings and comments, where words like "step" and "backward" abound, are
    not among them."""
    into.update(code.co_names)
    into.update(code.co_varnames)
    into.update(code.co_cellvars)
    into.update(code.co_freevars)
    into.add(code.co_name)
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            _code_names(constant, into)
        elif isinstance(constant, tuple):
            into.update(c for c in constant if isinstance(c, str))


def _names(code: CodeType) -> set[str]:
    """The names of compiled code, split at dots. Compiling costs no more than building the
    syntax tree, and reading the names of its code is far cheaper than walking the tree."""
    names: set[str] = set()
    _code_names(code, names)
    dotted = [name for name in names if "." in name]  # imported paths: few
    names.difference_update(dotted)
    names.update(part for name in dotted for part in name.split("."))
    return names


def _might_find(names: set[str], custom: frozenset[str]) -> bool:
    """:func:`can_find` on the compiled names: a quick no for most files. Each kind holds
    wherever the tree's does (a step's name is among the names, and so on)."""
    step = bool(names & STEP_WORDS)
    return can_find(kinds(names, step=step, grads=GRAD in names, defs=names, custom=custom))


def _own_kinds(item: _Item, custom: frozenset[str]) -> int:
    """The kinds of event an item (or the whole module) can hold itself."""
    return kinds(item.names, step=bool(item.methods & STEP_WORDS), grads=item.grads, defs=item.defs,
                 custom=custom)


_SEED_WORDS = SINGLE_WORDS | BACKWARD_WORDS | ZERO_WORDS | HOOK_WORDS | GENERATOR_WORDS | EVENT_WORDS


def _seed(item: _Item, custom: frozenset[str]) -> bool:
    """An item that may hold an event itself (a step is a method: ``step`` alone is a name)."""
    return bool(item.names & (_SEED_WORDS | custom) or item.methods & STEP_WORDS) or item.grads or _hooks(
        item.defs)


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _reached(items: list[_Item], custom: frozenset[str]) -> list[int]:
    """Each item's kinds of event with those of the definitions it uses, whatever the depth:
    what a unit can hold with its helpers inlined and its calls resolved. A helper or an
    object is reached through its name, a method through its name too (``x.run()``), except
    a special one, called through its class's instances (``wrapper(loss)`` runs ``__call__``):
    its class reaches its kinds then. An optimizer class counts only where it is named (a
    generator must be handed to it there); an import, only in what reads it (its words are
    added to the reader's). A module frozen is reached like one bound: the optimizers built
    over it, which tell its freeze apart from a tensor's, name it."""
    reached = [_own_kinds(i, custom) for i in items]
    readers = _index(items, lambda item: item.reads)
    carried: dict[str, int] = {}  # by name: the kinds that what binds it reaches
    grown = [index for index, found in enumerate(reached) if found]  # each time an item reaches more

    def reach(index: int, more: int) -> None:
        if reached[index] | more != reached[index]:
            reached[index] |= more
            grown.append(index)

    while grown:  # each item grows at most once per kind: linear, however long a chain of calls
        index = grown.pop()
        item, found = items[index], reached[index]
        passed = found & ~OPTIMIZER
        if passed and not item.is_import:
            for name in item.binds | item.frozen:
                before = carried.get(name, 0)
                if not _dunder(name) and before | passed != before:
                    carried[name] = before | passed
                    for reader in readers.get(name, ()):
                        reach(reader, passed)
        if item.parent is not None and any(map(_dunder, item.defines)):
            reach(item.parent, found)
    return reached


def _index(items: list[_Item], names: Callable[[_Item], Iterable[str]]) -> dict[str, list[int]]:
    """The items by each of their ``names``."""
    found: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        for name in names(item):
            found.setdefault(name, []).append(index)
    return found


def _needed(items: list[_Item], custom: frozenset[str]) -> list[bool]:
    """The items the analysis needs: those that can hold a finding, alone or with the events of
    what they call or use; the definitions of whatever a kept item reads (constants,
    bindings, the classes, methods and attributes a call resolves to, the helpers inlined);
    every import; at the top level, every statement that may hold an event (the module's
    own unit); and the header and special methods (``__init__``, ``__call__``) of every kept
    class."""
    kept = [can_find(found) or i.is_import or (i.parent is None and not i.own_unit and _seed(i, custom))
            for i, found in zip(items, _reached(items, custom), strict=True)]
    # The module's own unit stands whole once any of it is kept: its other statements can
    # prune paths (``if not debug: raise SystemExit``) or be calls handed an optimizer or the
    # parameters, which may zero them, though they name no event.
    top_level = [index for index, i in enumerate(items) if i.parent is None and not i.own_unit]
    if any(kept[index] and not items[index].is_import for index in top_level):
        for index in top_level:
            kept[index] = True
    binders = _index(items, lambda item: (n for n in item.binds if not _dunder(n)))
    members: dict[int, list[int]] = {}  # each class's, by its header
    for index, item in enumerate(items):
        if item.parent is not None:
            members.setdefault(item.parent, []).append(index)
    added = [index for index, k in enumerate(kept) if k]

    def keep(index: int) -> None:
        if not kept[index]:
            kept[index] = True
            added.append(index)

    while added:
        while added:  # what a kept item reads, its class, and what shares a line with it
            index = added.pop()
            item = items[index]
            for name in item.reads:
                for binder in binders.get(name, ()):
                    keep(binder)
            if item.parent is not None:
                keep(item.parent)
            # Statements sharing a line (``a = (1,\n 2); opt.step()``) stand or fall together.
            if index and items[index - 1].last >= item.first:
                keep(index - 1)
            if index + 1 < len(items) and item.last >= items[index + 1].first:
                keep(index + 1)
        for header, inside in members.items():  # each kept class's special members, or all of
            if kept[header]:  # them when it is read by name only
                whole = not any(kept[m] for m in inside)
                for m in inside:
                    if whole or items[m].binds & FRAMEWORK_MEMBERS or (
                            items[m].defines and all(map(_dunder, items[m].defines))):
                        keep(m)
    return kept


def _blanked(source: str, statements: list[_Item], kept: list[bool]) -> str:
    """The source with the lines of statements not kept emptied (their line breaks stay), except
    where a kept statement shares a line (``a = 1; opt.step()``)."""
    needed_lines = {n for s, k in zip(statements, kept, strict=True) if k for n in range(s.first, s.last + 1)}
    blank = {n for s, k in zip(statements, kept, strict=True) if not k
             for n in range(s.first, s.last + 1)} - needed_lines
    if not blank:
        return source
    lines = source_lines(source, keepends=True)
    for number in blank:
        line = lines[number - 1]
        lines[number - 1] = line[len(line.rstrip("\r\n")):]
    return "".join(lines)


def screen(source: str, shown: str, custom: frozenset[str] = frozenset(), *,
           runs_as_a_file: bool = True) -> Screened:
    """The screen's verdict on one program's text (``custom``: the last names of the project's
    own vocabulary). The compiler's own errors count only where the text ``runs_as_a_file``:
    not a stub (never run) nor a notebook's cells joined (IPython compiles each statement of
    a cell on its own, with ``await`` allowed at the top: :func:`cell_error`)."""
    code = compiled(source, shown)
    if isinstance(code, CodeType) and not _might_find(_names(code), custom):
        return Screened()
    parsed = parse(source, shown)
    if isinstance(parsed, tuple):
        return Screened(error=parsed)
    if isinstance(code, tuple) and runs_as_a_file:
        return Screened(error=code)
    items = _items(parsed.body)
    aliases: dict[str, set[str]] = {}
    for item in items:
        for name, parts in item.aliases.items():
            aliases.setdefault(name, set()).update(parts)
    for item in items:  # ``from torch.optim import SGD as O``: ``O(...)`` builds an SGD
        for name in item.reads & aliases.keys():
            item.names.update(aliases[name])
    whole = _Item(1, len(items))
    for item in items:
        whole.names |= item.names
        whole.methods |= item.methods
        whole.defs |= item.defs
        whole.grads |= item.grads
    if not can_find(_own_kinds(whole, custom)):
        return Screened()
    return Screened(text=_blanked(source, items, _needed(items, custom)))
