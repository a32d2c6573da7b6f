"""PyTorch-Ignite: ``Engine(process_function)`` calls the function once per batch and never
touches the gradients itself, so a process function that steps must zero them too."""

from __future__ import annotations

import libcst as cst

from clipcheck.static.frameworks import Framework, register
from clipcheck.static.names import ModuleNames

ENGINE_CLASSES = frozenset({"ignite.engine.Engine", "ignite.engine.engine.Engine"})
ROOT = "ignite"


class _EngineCalls(cst.CSTVisitor):
    """The plain names handed first to an ignite ``Engine(...)``."""

    def __init__(self, names: ModuleNames) -> None:
        self.names = names
        self.found: set[str] = set()

    def visit_Call(self, node: cst.Call) -> None:
        if (node.args and isinstance(node.args[0].value, cst.Name) and self.names.is_imported(node.func)
                and self.names.qualify(node.func) in ENGINE_CLASSES):
            self.found.add(node.args[0].value.value)


@register
class Ignite(Framework):
    def process_functions(self, names: ModuleNames, module: cst.Module) -> dict[str, bool]:
        if not any(target.split(".")[0] == ROOT for target in names.aliases.values()):
            return {}  # nothing of ignite is imported: no walk of the module
        calls = _EngineCalls(names)
        module.visit(calls)
        return dict.fromkeys(calls.found, False)
