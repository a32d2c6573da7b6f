"""The language server over pygls: buffers (and notebooks' cells) analysed in-process as they
change, findings published as diagnostics, quick fixes and ``# noqa`` actions, hovers that
explain a rule. Only ``clipcheck server`` imports this module (pygls is an optional extra)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from clipcheck import __version__
from clipcheck.engine import analyse_source
from clipcheck.findings import UNANALYSABLE_CODE, Finding
from clipcheck.server.documents import (
    Analysis,
    Part,
    Snapshot,
    analyse,
    hover_text,
    mentions,
    noqa_line,
    rule_page_uri,
)
from clipcheck.sources import source_lines
from clipcheck.suppressions import UNUSED_CODE

# How long a buffer must stay unchanged before it is analysed: typing a word is one analysis.
DEBOUNCE_SECONDS = 0.15
CONFIG_GLOBS = ("**/pyproject.toml", "**/clipcheck.toml")
# Analysed once at start-up, so that LibCST and the analysis are imported before the first buffer.
WARM_UP = """import torch


def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        model(x).sum().backward()
        optimizer.step()
"""
UNSUPPRESSIBLE = frozenset({UNANALYSABLE_CODE, UNUSED_CODE})  # no action: no comment silences them
UNSAFE_SUFFIX = " (unsafe fix: it changes what the training does; review it)"


def warm_up() -> None:
    """Import and exercise the analysis, then freeze what exists (modules, caches) out of the
    garbage collector's generations: later collections, which an analysis's many LibCST nodes
    trigger, then walk only the objects of that analysis."""
    analyse_source(WARM_UP, "warm-up.py")
    gc.freeze()


class ClipcheckServer(LanguageServer):
    """The open documents, their last analysis, and the pending (debounced) analyses. Analyses
    run one at a time on a worker thread, so that requests are answered while one runs."""

    def __init__(self) -> None:
        python = types.NotebookDocumentFilterWithNotebook(
            notebook="*", cells=[types.NotebookCellLanguage(language="python")])
        notebooks = types.NotebookDocumentSyncOptions(notebook_selector=[python], save=True)
        # Full sync: each change carries the whole text, so that no line-splitting difference
        # between editor and server can corrupt the buffer.
        super().__init__("clipcheck", __version__, text_document_sync_kind=types.TextDocumentSyncKind.Full,
                         notebook_document_sync=notebooks)
        self.documents: set[str] = set()  # URIs of the open Python documents and notebooks
        self.analyses: dict[str, Analysis] = {}
        self.pending: dict[str, asyncio.Task[None]] = {}
        self.with_diagnostics: dict[str, set[str]] = {}  # by document: the parts last given some
        self.analyser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipcheck-analysis")

    # -- what is open ----------------------------------------------------------------------------
    def key_of(self, uri: str) -> str:
        """The document a URI belongs to: a cell's notebook, or itself."""
        notebook = self.workspace.get_notebook_document(cell_uri=uri)
        return notebook.uri if notebook is not None else uri

    def snapshot(self, key: str) -> Snapshot | None:
        """The document's text as it stands now (``None`` once it is closed)."""
        if key not in self.documents:
            return None
        path = to_fs_path(key)
        notebook = self.workspace.get_notebook_document(notebook_uri=key)
        if notebook is None:
            document = self.workspace.get_text_document(key)
            return Snapshot(key, _path(path), (Part(key, document.source, document.version),))
        return Snapshot(key, _path(path), tuple(self._cell(cell) for cell in notebook.cells), notebook=True)

    def _cell(self, cell: types.NotebookCell) -> Part:
        document = self.workspace.get_text_document(cell.document)
        code = cell.kind == types.NotebookCellKind.Code and document.language_id == "python"
        return Part(cell.document, document.source, document.version, code)

    # -- analysing -------------------------------------------------------------------------------
    def schedule(self, key: str, delay: float = 0.0, again: bool = False) -> None:
        """Analyse the document after ``delay`` seconds without a newer change (``again``: even
        if its text has not changed since its last analysis), and publish."""
        previous = self.pending.pop(key, None)
        if previous is not None:
            previous.cancel()
        self.pending[key] = asyncio.get_running_loop().create_task(self._publish_after(key, delay, again))

    async def _publish_after(self, key: str, delay: float, again: bool) -> None:
        await asyncio.sleep(delay)
        analysis = await self.analysed(key, again)
        if analysis is not None:
            self.publish(analysis)

    async def analysed(self, key: str, again: bool = False) -> Analysis | None:
        """The analysis of the document as it stands (the last one if its text has not changed,
        unless ``again``); ``None`` if it is closed, or changed while being analysed (the
        change scheduled its own analysis)."""
        snapshot = self.snapshot(key)
        if snapshot is None:
            return None
        known = self.analyses.get(key)
        if not again and known is not None and known.snapshot.signature == snapshot.signature:
            return Analysis(snapshot, known.findings)  # the same texts, perhaps at newer versions
        analysis = await asyncio.get_running_loop().run_in_executor(self.analyser, analyse, snapshot)
        now = self.snapshot(key)
        if now is None or now.signature != snapshot.signature:
            return None
        self.analyses[key] = analysis
        return analysis

    def publish(self, analysis: Analysis) -> None:
        """Diagnostics for each part with findings, and empty ones for the parts that had some."""
        snapshot = analysis.snapshot
        before = self.with_diagnostics.get(snapshot.key, set())
        for part in snapshot.parts:
            found = analysis.findings.get(part.uri, [])
            if found or part.uri in before or not snapshot.notebook:
                diagnostics = [self.diagnostic(f, part, snapshot) for f in found]
                self.text_document_publish_diagnostics(
                    types.PublishDiagnosticsParams(part.uri, diagnostics, part.version))
        self.clear(before - {p.uri for p in snapshot.parts})
        self.with_diagnostics[snapshot.key] = set(analysis.findings)

    def clear(self, uris: set[str]) -> None:
        for uri in uris:
            self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri, []))

    def forget(self, key: str) -> None:
        """A closed document: no pending analysis, no diagnostics left behind."""
        self.documents.discard(key)
        pending = self.pending.pop(key, None)
        if pending is not None:
            pending.cancel()
        self.analyses.pop(key, None)
        self.clear(self.with_diagnostics.pop(key, set()))

    # -- findings as LSP values ------------------------------------------------------------------
    def position(self, lines: Sequence[str], line: int, column: int) -> types.Position:
        """A 1-based line and column (in characters) as the client counts (UTF-16 by default)."""
        return self.workspace.position_codec.position_to_client_units(
            lines, types.Position(line=max(line - 1, 0), character=max(column - 1, 0)))

    def span(self, finding: Finding, part: Part) -> types.Range:
        """The finding's range; an empty one (CPython's syntax-error position) runs to the end
        of its line so that editors show it."""
        lines = source_lines(part.text)
        end_line, end_column = finding.end_line, finding.end_column
        if (end_line, end_column) == (finding.line, finding.column) and 0 < end_line <= len(lines):
            end_column = max(end_column, len(lines[end_line - 1]) + 1)
        return types.Range(start=self.position(lines, finding.line, finding.column),
                           end=self.position(lines, end_line, end_column))

    def diagnostic(self, finding: Finding, part: Part, snapshot: Snapshot) -> types.Diagnostic:
        href = rule_page_uri(finding.code)
        return types.Diagnostic(
            range=self.span(finding, part), message=finding.message, severity=types.DiagnosticSeverity.Error,
            code=finding.code, source="clipcheck",
            code_description=types.CodeDescription(href=href) if href is not None else None,
            related_information=self.related(finding, part, snapshot) or None)

    def related(self, finding: Finding, part: Part,
                snapshot: Snapshot) -> list[types.DiagnosticRelatedInformation]:
        """Each line the message names (``the step at line 25``), at its code, in its cell."""
        found = []
        for mention in mentions(finding.message):
            target = part
            if mention.cell is not None:
                if not 0 < mention.cell <= len(snapshot.parts):
                    continue
                target = snapshot.parts[mention.cell - 1]
            lines = source_lines(target.text)
            if not 0 < mention.line <= len(lines):
                continue
            text = lines[mention.line - 1]
            start = len(text) - len(text.lstrip()) + 1
            where = types.Range(start=self.position(lines, mention.line, start),
                                end=self.position(lines, mention.line, len(text) + 1))
            found.append(types.DiagnosticRelatedInformation(types.Location(target.uri, where), mention.label))
        return found

    def fix_action(self, finding: Finding, part: Part, snapshot: Snapshot,
                   diagnostic: types.Diagnostic) -> types.CodeAction | None:
        """The finding's fix as a quick fix (preferred when safe; labelled when unsafe); in a
        notebook, each edit in the cell it names."""
        if finding.fix is None:
            return None
        changes: dict[str, list[types.TextEdit]] = {}
        for edit in cast(list[dict[str, Any]], finding.fix["edits"]):
            target = snapshot.parts[edit["cell"] - 1] if "cell" in edit else part
            lines = source_lines(target.text)
            start, end = edit["location"], edit["end_location"]
            changes.setdefault(target.uri, []).append(types.TextEdit(
                range=types.Range(start=self.position(lines, start["row"], start["column"]),
                                  end=self.position(lines, end["row"], end["column"])),
                new_text=edit["content"]))
        safe = finding.fix.get("applicability") == "safe"
        title = str(finding.fix["message"]) + ("" if safe else UNSAFE_SUFFIX)
        return types.CodeAction(title=title, kind=types.CodeActionKind.QuickFix, diagnostics=[diagnostic],
                                is_preferred=safe, edit=types.WorkspaceEdit(changes=changes))

    def noqa_action(self, finding: Finding, part: Part,
                    diagnostic: types.Diagnostic) -> types.CodeAction | None:
        """A quick fix that silences the finding with a ``# noqa`` comment on its line."""
        new = noqa_line(part.text, finding)
        if new is None:
            return None
        lines = source_lines(part.text)
        line = lines[finding.line - 1]
        edit = types.TextEdit(range=types.Range(start=self.position(lines, finding.line, 1),
                                                end=self.position(lines, finding.line, len(line) + 1)),
                              new_text=new)
        return types.CodeAction(title=f"Suppress {finding.code} on this line (`# noqa: {finding.code}`)",
                                kind=types.CodeActionKind.QuickFix, diagnostics=[diagnostic],
                                edit=types.WorkspaceEdit(changes={part.uri: [edit]}))

    async def at(self, uri: str) -> tuple[Analysis, Part] | None:
        """The fresh analysis of the document a URI belongs to, and the part the URI names."""
        analysis = await self.analysed(self.key_of(uri))
        if analysis is None:
            return None
        part = next((p for p in analysis.snapshot.parts if p.uri == uri), None)
        return (analysis, part) if part is not None else None


def _path(path: str | None) -> Path | None:
    return Path(path) if path is not None else None


def _overlaps(a: types.Range, b: types.Range) -> bool:
    """Whether two ranges share a position (a cursor touching a range's end counts)."""
    return _key(a.start) <= _key(b.end) and _key(b.start) <= _key(a.end)


def _key(position: types.Position) -> tuple[int, int]:
    return position.line, position.character


def _wants_quick_fixes(context: types.CodeActionContext) -> bool:
    """Whether the client asked for quick fixes (it asks for all kinds by leaving ``only`` out)."""
    kind = types.CodeActionKind.QuickFix.value
    return not context.only or any(kind == k or kind.startswith(f"{k}.") for k in context.only)


# -- handlers ------------------------------------------------------------------------------------
def initialized(ls: ClipcheckServer, params: types.InitializedParams) -> None:
    """Warm the analysis up, and ask to hear of configuration files changing where the client
    can watch files for us."""
    ls.analyser.submit(warm_up)
    workspace = ls.client_capabilities.workspace
    watching = workspace.did_change_watched_files if workspace is not None else None
    if watching is not None and watching.dynamic_registration:
        watchers = [types.FileSystemWatcher(glob_pattern=glob) for glob in CONFIG_GLOBS]
        options = types.DidChangeWatchedFilesRegistrationOptions(watchers=watchers)
        ls.client_register_capability(types.RegistrationParams(registrations=[types.Registration(
            id="clipcheck-configuration", method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
            register_options=options)]))


def did_open(ls: ClipcheckServer, params: types.DidOpenTextDocumentParams) -> None:
    if params.text_document.language_id == "python":
        ls.documents.add(params.text_document.uri)
        ls.schedule(params.text_document.uri)


def did_change(ls: ClipcheckServer, params: types.DidChangeTextDocumentParams) -> None:
    if params.text_document.uri in ls.documents:
        ls.schedule(params.text_document.uri, DEBOUNCE_SECONDS)


def did_save(ls: ClipcheckServer, params: types.DidSaveTextDocumentParams) -> None:
    """A save checks again (a configuration file may have changed unseen)."""
    if params.text_document.uri in ls.documents:
        ls.schedule(params.text_document.uri, again=True)


def did_close(ls: ClipcheckServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.forget(params.text_document.uri)


def notebook_did_open(ls: ClipcheckServer, params: types.DidOpenNotebookDocumentParams) -> None:
    ls.documents.add(params.notebook_document.uri)
    ls.schedule(params.notebook_document.uri)


def notebook_did_change(ls: ClipcheckServer, params: types.DidChangeNotebookDocumentParams) -> None:
    ls.schedule(params.notebook_document.uri, DEBOUNCE_SECONDS)


def notebook_did_save(ls: ClipcheckServer, params: types.DidSaveNotebookDocumentParams) -> None:
    ls.schedule(params.notebook_document.uri, again=True)


def notebook_did_close(ls: ClipcheckServer, params: types.DidCloseNotebookDocumentParams) -> None:
    ls.forget(params.notebook_document.uri)


def configuration_changed(ls: ClipcheckServer, params: types.DidChangeWatchedFilesParams) -> None:
    """A configuration file changed: every open document is analysed again."""
    for key in ls.documents:
        ls.schedule(key, again=True)


async def code_action(ls: ClipcheckServer, params: types.CodeActionParams) -> list[types.CodeAction] | None:
    """For each finding in the range: its fix, where it has one, and a ``# noqa`` for it (not
    for CC000, which is never silenced, nor for CC900, which a comment cannot silence)."""
    found = await ls.at(params.text_document.uri)
    if found is None or not _wants_quick_fixes(params.context):
        return None
    analysis, part = found
    actions = []
    for finding in analysis.findings.get(part.uri, []):
        diagnostic = ls.diagnostic(finding, part, analysis.snapshot)
        if finding.code in UNSUPPRESSIBLE or not _overlaps(diagnostic.range, params.range):
            continue
        fix = ls.fix_action(finding, part, analysis.snapshot, diagnostic)
        actions += [a for a in (fix, ls.noqa_action(finding, part, diagnostic)) if a is not None]
    return actions


async def hover(ls: ClipcheckServer, params: types.HoverParams) -> types.Hover | None:
    """The rule behind each finding under the cursor: its summary and why it matters."""
    found = await ls.at(params.text_document.uri)
    if found is None:
        return None
    analysis, part = found
    point = types.Range(start=params.position, end=params.position)
    texts: list[str] = []
    for finding in analysis.findings.get(part.uri, []):
        text = hover_text(finding.code)
        if text is not None and text not in texts and _overlaps(ls.span(finding, part), point):
            texts.append(text)
    if not texts:
        return None
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown,
                                                    value="\n\n---\n\n".join(texts)))


def build() -> ClipcheckServer:
    """A server with every handler registered."""
    server = ClipcheckServer()
    server.feature(types.INITIALIZED)(initialized)
    server.feature(types.TEXT_DOCUMENT_DID_OPEN)(did_open)
    server.feature(types.TEXT_DOCUMENT_DID_CHANGE)(did_change)
    server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))(did_save)
    server.feature(types.TEXT_DOCUMENT_DID_CLOSE)(did_close)
    server.feature(types.NOTEBOOK_DOCUMENT_DID_OPEN)(notebook_did_open)
    server.feature(types.NOTEBOOK_DOCUMENT_DID_CHANGE)(notebook_did_change)
    server.feature(types.NOTEBOOK_DOCUMENT_DID_SAVE)(notebook_did_save)
    server.feature(types.NOTEBOOK_DOCUMENT_DID_CLOSE)(notebook_did_close)
    server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)(configuration_changed)
    server.feature(types.TEXT_DOCUMENT_CODE_ACTION,
                   types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.QuickFix]))(code_action)
    server.feature(types.TEXT_DOCUMENT_HOVER)(hover)
    return server
