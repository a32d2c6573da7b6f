"""The language server driven over stdio by a scripted client, as an editor drives it: JSON-RPC
by hand over the pipes of the real server process, every wait bounded so that a hang fails."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SERVER = [sys.executable, "-m", "clipcheck", "server"]
WAIT = 60.0  # seconds for any one answer: the first analysis imports LibCST
Message = dict[str, Any]

BAD = """import torch


def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
"""
CLIP_LINE = 7  # 1-based: the clip before the backward pass
FIXED = BAD.replace(
    "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n", "").replace(
    "        loss.backward()\n",
    "        loss.backward()\n        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n")
NEVER_ZEROED = """import torch


def train(model, loader, optimizer):
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
"""
EXHAUSTED = """import torch


def build(model):
    params = model.parameters()
    print(sum(p.numel() for p in params))
    return torch.optim.AdamW(params, lr=3e-4)
"""


class Client:
    """An editor's side of the protocol: requests wait for their response, the server's own
    requests get an empty answer, and published diagnostics are kept by URI, in order."""

    def __init__(self, cwd: Path, command: list[str] = SERVER, watch_files: bool = False) -> None:
        self.process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
        self.inbox: queue.Queue[Message | None] = queue.Queue()
        self.published: dict[str, list[Message]] = {}
        self.server_requests: list[Message] = []
        self.ids = 0
        threading.Thread(target=self._read, daemon=True).start()
        capabilities: Message = {"textDocument": {"publishDiagnostics": {"relatedInformation": True}},
                                 "workspace": {"didChangeWatchedFiles": {"dynamicRegistration": watch_files}},
                                 "notebookDocument": {"synchronization": {}}}
        self.initialized = self.request("initialize", {"processId": None, "rootUri": cwd.as_uri(),
                                                       "capabilities": capabilities})
        self.notify("initialized", {})

    def _read(self) -> None:
        """Messages off the server's standard output, framed by their Content-Length header."""
        stream = self.process.stdout
        assert stream is not None
        while True:
            length = None
            while (header := stream.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if header == b"" or length is None:
                self.inbox.put(None)
                return
            self.inbox.put(json.loads(stream.read(length)))

    def send(self, message: Message) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self.process.stdin is not None
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.process.stdin.flush()

    def notify(self, method: str, params: Message) -> None:
        self.send({"method": method, "params": params})

    def request(self, method: str, params: Message) -> Any:
        self.ids += 1
        ident = self.ids
        self.send({"id": ident, "method": method, "params": params})
        answer = self.wait(lambda m: m.get("id") == ident and "method" not in m, f"the answer to {method}")
        assert "error" not in answer, answer["error"]
        return answer.get("result")

    def wait(self, wanted: Callable[[Message], bool], what: str) -> Message:
        """The next message ``wanted`` accepts; what arrives meanwhile is recorded."""
        while True:
            try:
                message = self.inbox.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"no {what} within {WAIT} s")
            if message is None:
                pytest.fail(f"the server stopped before {what}")
            if message.get("method") == "textDocument/publishDiagnostics":
                self.published.setdefault(message["params"]["uri"], []).append(message["params"])
            elif "method" in message and "id" in message:
                self.server_requests.append(message)
                self.send({"id": message["id"], "result": None})
            if wanted(message):
                return message

    def diagnostics(self, uri: str, version: int | None = None) -> list[Message]:
        """The diagnostics published next for ``uri`` (for its ``version``, when given)."""
        def published(m: Message) -> bool:
            params = m.get("params", {})
            return (m.get("method") == "textDocument/publishDiagnostics" and params["uri"] == uri
                    and (version is None or params.get("version") == version))
        return self.wait(published, f"diagnostics for {uri}")["params"]["diagnostics"]

    def open(self, path: Path, text: str) -> list[Message]:
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": path.as_uri(), "languageId": "python", "version": 1, "text": text}})
        return self.diagnostics(path.as_uri())

    def change(self, path: Path, text: str, version: int) -> list[Message]:
        self.notify("textDocument/didChange", {"textDocument": {"uri": path.as_uri(), "version": version},
                                               "contentChanges": [{"text": text}]})
        return self.diagnostics(path.as_uri(), version)

    def actions(self, uri: str, diagnostic: Message, only: list[str] | None = None) -> list[Message]:
        context: Message = {"diagnostics": [diagnostic], **({"only": only} if only is not None else {})}
        return self.request("textDocument/codeAction", {
            "textDocument": {"uri": uri}, "range": diagnostic["range"], "context": context}) or []

    def close(self) -> None:
        """Shut down as an editor does; a server that does not leave is killed, and fails."""
        try:
            self.request("shutdown", {})
            self.notify("exit", {})
            assert self.process.wait(timeout=WAIT) == 0
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with a configuration file, so that no configuration above the tests' own
    temporary folder applies."""
    (tmp_path / "pyproject.toml").write_text("[tool.clipcheck]\n")
    return tmp_path


@pytest.fixture
def client(project: Path) -> Any:
    started = Client(project)
    yield started
    started.close()


def apply(text: str, edits: list[Message]) -> str:
    """An LSP WorkspaceEdit's text edits made on ``text`` (ASCII, so UTF-16 units are
    characters), from the last to the first."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def offset(position: Message) -> int:
        return starts[min(position["line"], len(starts) - 1)] + position["character"]

    spans = [(offset(e["range"]["start"]), offset(e["range"]["end"]), e["newText"]) for e in edits]
    for start, end, new in sorted(spans, key=lambda s: s[:2], reverse=True):
        text = text[:start] + new + text[end:]
    return text


def edits_of(action: Message, uri: str) -> list[Message]:
    return action["edit"]["changes"][uri]


def test_a_mistake_is_diagnosed_and_clears_once_fixed(client: Client, project: Path) -> None:
    path = project / "train.py"
    [diagnostic] = client.open(path, BAD)
    assert diagnostic["code"] == "CC101" and diagnostic["source"] == "clipcheck"
    assert diagnostic["severity"] == 1
    assert diagnostic["range"] == {"start": {"line": CLIP_LINE - 1, "character": 8},
                                   "end": {"line": CLIP_LINE - 1, "character": 63}}
    page = Path(diagnostic["codeDescription"]["href"].removeprefix("file://"))
    assert page.name == "clip-before-backward.md" and page.read_text().startswith("# CC101")
    related = {(r["location"]["range"]["start"]["line"], r["message"])
               for r in diagnostic["relatedInformation"]}
    assert related == {(8, "the backward pass of this update (line 9)"), (9, "the step at line 10")}
    assert client.change(path, FIXED, version=2) == []


def test_changes_are_debounced(client: Client, project: Path) -> None:
    path = project / "train.py"
    client.open(path, FIXED)
    for version in range(2, 7):
        client.notify("textDocument/didChange", {"textDocument": {"uri": path.as_uri(), "version": version},
                                                 "contentChanges": [{"text": BAD if version % 2 else FIXED}]})
    assert [d["code"] for d in client.diagnostics(path.as_uri(), version=6)] == []
    bursts = [p["version"] for p in client.published[path.as_uri()] if p["version"] != 1]
    assert bursts == [6]


def test_a_buffer_that_does_not_parse_is_one_cc000_at_its_place(client: Client, project: Path) -> None:
    text = BAD.replace("for x, y in loader:", "for x, y in loader")
    with pytest.raises(SyntaxError) as python:
        compile(text, "train.py", "exec")
    line, column = python.value.lineno, python.value.offset
    assert line is not None and column is not None
    [diagnostic] = client.open(project / "train.py", text)
    assert diagnostic["code"] == "CC000"
    assert diagnostic["range"]["start"] == {"line": line - 1, "character": column - 1}


def test_the_unsafe_quick_fix_rechecks_clean(client: Client, project: Path) -> None:
    path = project / "train.py"
    [diagnostic] = client.open(path, BAD)
    fix = next(a for a in client.actions(path.as_uri(), diagnostic) if "noqa" not in a["title"])
    assert fix["kind"] == "quickfix" and "unsafe" in fix["title"] and not fix.get("isPreferred")
    assert fix["diagnostics"] == [diagnostic]
    fixed = apply(BAD, edits_of(fix, path.as_uri()))
    assert fixed == FIXED
    assert client.change(path, fixed, version=2) == []


def test_the_safe_quick_fix_is_preferred_and_rechecks_clean(client: Client, project: Path) -> None:
    path = project / "model.py"
    [diagnostic] = client.open(path, EXHAUSTED)
    assert diagnostic["code"] == "CC302"
    fix = next(a for a in client.actions(path.as_uri(), diagnostic) if "noqa" not in a["title"])
    assert fix["kind"] == "quickfix" and fix["isPreferred"] and "unsafe" not in fix["title"]
    fixed = apply(EXHAUSTED, edits_of(fix, path.as_uri()))
    assert "params = list(model.parameters())" in fixed
    assert client.change(path, fixed, version=2) == []


def test_a_noqa_action_silences_the_finding(client: Client, project: Path) -> None:
    path = project / "train.py"
    text = BAD.replace("1.0)\n", "1.0)  # noqa: E501\n")
    [diagnostic] = client.open(path, text)
    [noqa] = [a for a in client.actions(path.as_uri(), diagnostic) if "noqa" in a["title"]]
    silenced = apply(text, edits_of(noqa, path.as_uri()))
    assert silenced.splitlines()[CLIP_LINE - 1].endswith("1.0)  # noqa: E501, CC101")
    assert client.change(path, silenced, version=2) == []


def test_no_action_away_from_a_finding_nor_of_another_kind(client: Client, project: Path) -> None:
    path = project / "train.py"
    [diagnostic] = client.open(path, BAD)
    elsewhere = {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 5}}
    assert client.actions(path.as_uri(), {**diagnostic, "range": elsewhere}) == []
    assert client.actions(path.as_uri(), diagnostic, only=["source.organizeImports"]) == []
    assert len(client.actions(path.as_uri(), diagnostic, only=["quickfix"])) == 2


def test_hover_tells_the_rule_and_why_it_matters(client: Client, project: Path) -> None:
    path = project / "train.py"
    [diagnostic] = client.open(path, BAD)
    hover = client.request("textDocument/hover", {"textDocument": {"uri": path.as_uri()},
                                                  "position": diagnostic["range"]["start"]})
    assert hover["contents"]["kind"] == "markdown"
    text = hover["contents"]["value"]
    assert text.startswith("**CC101 clip-before-backward**: gradients are clipped before the backward")
    assert "Clipping exists to bound the update" in text  # the page's "Why it is bad"
    assert client.request("textDocument/hover", {"textDocument": {"uri": path.as_uri()},
                                                 "position": {"line": 0, "character": 0}}) is None


def test_the_configuration_of_the_documents_folder_applies(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.clipcheck]\nignore = ["clip-before-backward"]\nexclude = ["third_party/"]\n\n'
        '[tool.clipcheck.per-file-ignores]\n"scripts/*.py" = ["CC105"]\n')
    (tmp_path / "scripts").mkdir()
    (tmp_path / "third_party").mkdir()
    for folder, config in (("plain", "[tool.clipcheck]\n"),
                           ("in_house", '[tool.clipcheck.vocabulary]\nclip = ["mylib.utils.clip_all"]\n')):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "pyproject.toml").write_text(config)
    in_house = BAD.replace("torch.nn.utils.clip_grad_norm_", "clip_all").replace(
        "import torch\n", "import torch\nfrom mylib.utils import clip_all\n")
    client = Client(tmp_path)
    try:
        assert client.open(tmp_path / "train.py", BAD) == []
        assert [d["code"] for d in client.open(tmp_path / "loop.py", NEVER_ZEROED)] == ["CC105"]
        assert client.open(tmp_path / "scripts" / "loop.py", NEVER_ZEROED) == []
        assert client.open(tmp_path / "third_party" / "loop.py", NEVER_ZEROED) == []
        assert client.open(tmp_path / "plain" / "train.py", in_house) == []  # an unknown call: no guess
        assert [d["code"] for d in client.open(tmp_path / "in_house" / "train.py", in_house)] == ["CC101"]
    finally:
        client.close()


def test_an_edited_configuration_applies_when_the_client_reports_it(tmp_path: Path) -> None:
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.clipcheck]\n")
    client = Client(tmp_path, watch_files=True)
    try:
        path = tmp_path / "train.py"
        assert [d["code"] for d in client.open(path, BAD)] == ["CC101"]
        [registration] = [r for r in client.server_requests if r["method"] == "client/registerCapability"]
        watchers = registration["params"]["registrations"][0]["registerOptions"]["watchers"]
        assert {w["globPattern"] for w in watchers} == {"**/pyproject.toml", "**/clipcheck.toml"}
        config.write_text('[tool.clipcheck]\nignore = ["CC101"]\n')
        client.notify("workspace/didChangeWatchedFiles", {"changes": [{"uri": config.as_uri(), "type": 2}]})
        assert client.diagnostics(path.as_uri()) == []
    finally:
        client.close()


def test_a_save_checks_again_under_the_configuration_as_it_is_now(client: Client, project: Path) -> None:
    path = project / "train.py"
    assert [d["code"] for d in client.open(path, BAD)] == ["CC101"]
    (project / "pyproject.toml").write_text('[tool.clipcheck]\nignore = ["CC101"]\n')
    client.notify("textDocument/didSave", {"textDocument": {"uri": path.as_uri()}})
    assert client.diagnostics(path.as_uri()) == []


def test_a_broken_configuration_is_one_cc000(client: Client, project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.clipcheck]\nignore = ["no-such-rule"]\n')
    [diagnostic] = client.open(project / "train.py", BAD)
    assert diagnostic["code"] == "CC000" and "no-such-rule" in diagnostic["message"]


def notebook_cell(notebook: Path, number: int) -> str:
    return f"vscode-notebook-cell:{notebook}#cell{number}"


def open_notebook(client: Client, notebook: Path, cells: list[tuple[str, str]]) -> None:
    """``notebookDocument/didOpen`` with cells of (language, text); markdown is a markup cell."""
    client.notify("notebookDocument/didOpen", {
        "notebookDocument": {"uri": notebook.as_uri(), "notebookType": "jupyter-notebook", "version": 1,
                             "cells": [{"kind": 1 if language == "markdown" else 2,
                                        "document": notebook_cell(notebook, i)}
                                       for i, (language, _) in enumerate(cells)]},
        "cellTextDocuments": [{"uri": notebook_cell(notebook, i), "languageId": language, "version": 1,
                               "text": text} for i, (language, text) in enumerate(cells)]})


def test_a_notebooks_cells_are_one_program(client: Client, project: Path) -> None:
    notebook = project / "train.ipynb"
    body = BAD.removeprefix("import torch\n")
    cells = [("markdown", "# Training"), ("python", "import torch\n%matplotlib inline"), ("python", body)]
    open_notebook(client, notebook, cells)
    cell = notebook_cell(notebook, 2)
    [diagnostic] = client.diagnostics(cell)
    assert diagnostic["code"] == "CC101"
    assert diagnostic["range"]["start"]["line"] == CLIP_LINE - 2  # the line in its cell
    assert {r["location"]["uri"] for r in diagnostic["relatedInformation"]} == {cell}
    fix, noqa = client.actions(cell, diagnostic)
    assert noqa["title"] == "Suppress CC101 on this line (`# noqa: CC101`)"
    assert list(fix["edit"]["changes"]) == [cell]
    fixed = apply(body, edits_of(fix, cell))
    assert fixed == FIXED.removeprefix("import torch\n")
    client.notify("notebookDocument/didChange", {
        "notebookDocument": {"uri": notebook.as_uri(), "version": 2},
        "change": {"cells": {"textContent": [{"document": {"uri": cell, "version": 2},
                                              "changes": [{"text": fixed}]}]}}})
    assert client.diagnostics(cell, version=2) == []


def test_a_fix_across_cells_edits_each_cell(client: Client, project: Path) -> None:
    notebook = project / "explore.ipynb"
    setup = ("import torch\nmodel = torch.nn.Linear(2, 1)\n"
             "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\nx = torch.randn(4, 2)\n")
    clip = "optimizer.zero_grad()\ntorch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
    update = "loss = model(x).sum()\nloss.backward()\noptimizer.step()\n"
    open_notebook(client, notebook, [("python", setup), ("python", clip), ("python", update)])
    clip_cell, update_cell = notebook_cell(notebook, 1), notebook_cell(notebook, 2)
    [diagnostic] = client.diagnostics(clip_cell)
    assert {(r["location"]["uri"], r["location"]["range"]["start"]["line"])
            for r in diagnostic["relatedInformation"]} == {(update_cell, 1), (update_cell, 2)}
    fix = client.actions(clip_cell, diagnostic)[0]
    assert set(fix["edit"]["changes"]) == {clip_cell, update_cell}
    clipped = apply(clip, edits_of(fix, clip_cell))
    updated = apply(update, edits_of(fix, update_cell))
    assert clipped == "optimizer.zero_grad()\n"
    assert updated == update.replace("optimizer.step()", clip.splitlines()[1] + "\noptimizer.step()")
    client.notify("notebookDocument/didChange", {
        "notebookDocument": {"uri": notebook.as_uri(), "version": 2},
        "change": {"cells": {"textContent": [
            {"document": {"uri": clip_cell, "version": 2}, "changes": [{"text": clipped}]},
            {"document": {"uri": update_cell, "version": 2}, "changes": [{"text": updated}]}]}}})
    assert client.diagnostics(clip_cell, version=2) == []


def test_unused_suppressions_are_reported_where_the_configuration_selects_cc900(
        client: Client, project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.clipcheck]\nextend-select = ["CC900"]\n')
    path = project / "train.py"
    [diagnostic] = client.open(path, FIXED.replace("optimizer.step()", "optimizer.step()  # noqa: CC105"))
    assert diagnostic["code"] == "CC900"
    assert client.actions(path.as_uri(), diagnostic) == []


def test_the_linter_never_imports_pygls(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(BAD)
    command = [sys.executable, "-X", "importtime", "-m", "clipcheck", "check", "--no-cache", "train.py"]
    imported = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert imported.returncode == 1, imported.stderr
    assert "CC101" in imported.stdout
    modules = {line.split("|")[-1].strip() for line in imported.stderr.splitlines() if "|" in line}
    assert "clipcheck.cli" in modules and not {m for m in modules if m.startswith(("pygls", "lsprotocol"))}


def test_without_the_extra_the_server_says_how_to_install_it() -> None:
    script = "import sys; sys.modules['pygls'] = None; from clipcheck.cli import main; main()"
    result = subprocess.run([sys.executable, "-c", script, "server"], capture_output=True, text=True,
                            timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr == 'clipcheck server needs the lsp extra: pip install "clipcheck[lsp]"\n'
