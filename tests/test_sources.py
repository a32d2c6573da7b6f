"""Every path is a result (issue 19): a FIFO, a socket or a device is skipped with a note, an
unreadable folder or file is a CC000 for that path, link loops end, and nothing raises or hangs.

The machines these run on run as root, where ``chmod 000`` stops nothing; so unreadable folders
and files are made by refusing the system calls for them (what the kernel does for other users),
and the ``chmod`` versions run too wherever the tests are not root.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BAD as TRAIN
from conftest import clipcheck_command

from clipcheck.sources import Source, Unreadable, discover, read_bytes

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


def never(path: Path) -> bool:
    return False


def found(given: list[str] | None = None) -> list[Source]:
    return discover(given or [], never)


def shown(sources: list[Source]) -> list[str]:
    return [s.shown for s in sources]


def by_name(sources: list[Source], name: str) -> Source:
    (source,) = [s for s in sources if s.shown == name]
    return source


def within(seconds: float, work: Callable[[], Any]) -> Any:
    """``work()``'s result, or its exception, failing the test (not hanging it) past ``seconds``."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("value", work()))
        except BaseException as error:  # handed back to the test below
            outcome.append(("error", error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s: it blocked"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def unread(source: Source) -> str:
    """The reason ``read_bytes`` gives for ``source``, which must be unreadable."""
    def attempt() -> str:
        with pytest.raises(Unreadable) as caught:
            read_bytes(source)
        return str(caught.value)
    return str(within(5, attempt))


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder, made the current directory, with one training file in it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text(TRAIN)
    return tmp_path


def refuse(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``folder`` unreadable as the kernel does for a user without permission on it:
    listing it, and looking up or opening anything inside it, fail with EACCES."""
    inside = os.path.abspath(folder)

    def denied(path: Any) -> bool:
        if isinstance(path, int):
            return False
        text = os.path.abspath(os.fsdecode(os.fspath(path)))
        return text == inside or text.startswith(inside + os.sep)

    def guard(real: Callable[..., Any], listing: bool) -> Callable[..., Any]:
        def call(path: Any = ".", *args: Any, **kwargs: Any) -> Any:
            if denied(path) and (listing or os.path.abspath(os.fsdecode(os.fspath(path))) != inside):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "scandir", guard(os.scandir, listing=True))
    monkeypatch.setattr(os, "stat", guard(os.stat, listing=False))
    monkeypatch.setattr(os, "lstat", guard(os.lstat, listing=False))
    monkeypatch.setattr(os, "open", guard(os.open, listing=False))


@pytest.fixture
def chmod_000(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """``chmod 000`` that is undone afterwards, so pytest can clean up."""
    changed: list[Path] = []

    def chmod(path: Path) -> None:
        changed.append(path)
        path.chmod(0)

    yield chmod
    for path in changed:
        path.chmod(0o755)


# Special files: skipped, never opened.


@needs_fifo
def test_fifo_in_a_folder_is_skipped_not_read(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkfifo(tree / "pipe.py")
    opened: list[str] = []
    real_open = os.open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fspath(path))
        return int(real_open(path, *args, **kwargs))

    monkeypatch.setattr(os, "open", recording_open)
    sources = within(10, found)
    assert shown(sources) == ["pipe.py", "train.py"]
    pipe = by_name(sources, "pipe.py")
    assert pipe.skipped == "a FIFO, not a regular file" and pipe.missing is None
    assert by_name(sources, "train.py").skipped is None
    assert unread(pipe) == "a FIFO, not a regular file"  # an engine not told of notes still never opens it
    assert not [p for p in opened if p.endswith("pipe.py")]


@needs_fifo
def test_fifo_named_directly_is_skipped(tree: Path) -> None:
    os.mkfifo(tree / "pipe.py")
    (pipe,) = within(10, lambda: found(["pipe.py"]))
    assert pipe == Source("pipe.py", Path("pipe.py"), skipped="a FIFO, not a regular file")


@needs_fifo
def test_reading_a_file_swapped_for_a_fifo_does_not_block(tree: Path) -> None:
    os.mkfifo(tree / "pipe.py")
    # Discovered as a regular file, a FIFO by the time it is read.
    assert unread(Source("pipe.py", Path("pipe.py"))) == "not a regular file: a FIFO"


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no unix sockets here")
def test_socket_is_skipped(tree: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind("sock.py")
        sources = within(10, found)
        assert by_name(sources, "sock.py").skipped == "a socket, not a regular file"
        assert by_name(found(["sock.py"]), "sock.py").skipped == "a socket, not a regular file"
        assert unread(Source("sock.py", Path("sock.py"))).startswith("cannot read the file")
    finally:
        server.close()


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null here")
def test_device_named_directly_is_skipped(tree: Path) -> None:
    (null,) = found(["/dev/null"])
    assert null == Source("/dev/null", Path("/dev/null"), skipped="a character device, not a regular file")
    assert unread(Source("/dev/null", Path("/dev/null"))) == "not a regular file: a character device"


@needs_fifo
def test_symlink_to_a_fifo_is_skipped(tree: Path) -> None:
    os.mkfifo(tree / "pipe")
    (tree / "link.py").symlink_to("pipe")
    assert by_name(found(), "link.py").skipped == "a FIFO, not a regular file"


def test_special_files_without_a_checked_suffix_are_not_mentioned(tree: Path) -> None:
    if hasattr(os, "mkfifo"):
        os.mkfifo(tree / "pipe")
    assert shown(found()) == ["train.py"]


# Unreadable folders and files: a CC000 for that path, the rest still checked.


def test_unreadable_folder_is_one_source_with_a_reason(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / "secret").mkdir()
    (tree / "secret" / "hidden.py").write_text(TRAIN)
    (tree / "zoo").mkdir()
    (tree / "zoo" / "model.py").write_text(TRAIN)
    refuse(monkeypatch, tree / "secret")
    sources = found()
    assert shown(sources) == ["train.py", "secret", "zoo/model.py"]
    secret = by_name(sources, "secret")
    assert secret.missing == "cannot read the folder: Permission denied"
    assert unread(secret) == "cannot read the folder: Permission denied"
    assert [s.missing for s in sources if s.shown != "secret"] == [None, None]


def test_unreadable_folder_named_directly(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / "secret").mkdir()
    (tree / "secret" / "hidden.py").write_text(TRAIN)
    refuse(monkeypatch, tree / "secret")
    assert found(["secret", "train.py"]) == [
        Source("secret", Path("secret"), missing="cannot read the folder: Permission denied"),
        Source("train.py", Path("train.py")),
    ]
    assert found(["./"])[0].shown == "./train.py"


def test_file_in_an_unsearchable_folder_named_directly(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / "secret").mkdir()
    (tree / "secret" / "hidden.py").write_text(TRAIN)
    refuse(monkeypatch, tree / "secret")
    (hidden,) = found(["secret/hidden.py"])
    assert hidden == Source("secret/hidden.py", Path("secret/hidden.py"))
    assert unread(hidden) == "cannot read the file: Permission denied"


def test_unreadable_file_is_kept_and_reading_says_why(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / "locked.py").write_text(TRAIN)
    real_open = os.open

    def locked_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path).endswith("locked.py"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return int(real_open(path, *args, **kwargs))

    monkeypatch.setattr(os, "open", locked_open)
    sources = found()
    assert shown(sources) == ["locked.py", "train.py"]
    assert unread(by_name(sources, "locked.py")) == "cannot read the file: Permission denied"
    assert read_bytes(by_name(sources, "train.py")) == TRAIN.encode()


def test_settings_that_cannot_be_looked_up_do_not_raise(tree: Path) -> None:
    def broken(path: Path) -> bool:
        raise PermissionError(errno.EACCES, "Permission denied", str(path / "clipcheck.toml"))
    (tree / "pkg").mkdir()
    (tree / "pkg" / "a.py").write_text(TRAIN)
    assert shown(discover([], broken)) == ["train.py", "pkg/a.py"]


@pytest.mark.skipif(IS_ROOT or not hasattr(os, "geteuid"), reason="root reads any folder")
def test_unreadable_folder_for_real(tree: Path, chmod_000: Callable[[Path], None]) -> None:
    (tree / "secret").mkdir()
    (tree / "secret" / "hidden.py").write_text(TRAIN)
    chmod_000(tree / "secret")
    sources = found()
    assert shown(sources) == ["train.py", "secret"]
    assert by_name(sources, "secret").missing == "cannot read the folder: Permission denied"
    assert found(["secret"])[0].missing == "cannot read the folder: Permission denied"
    assert unread(found(["secret/hidden.py"])[0]) == "cannot read the file: Permission denied"


@pytest.mark.skipif(IS_ROOT or not hasattr(os, "geteuid"), reason="root reads any file")
def test_unreadable_file_for_real(tree: Path, chmod_000: Callable[[Path], None]) -> None:
    (tree / "locked.py").write_text(TRAIN)
    chmod_000(tree / "locked.py")
    assert unread(by_name(found(), "locked.py")) == "cannot read the file: Permission denied"


# Links: loops end, dangling links are reported, nothing raises.


def test_symlink_loop_files_end_as_reasons(tree: Path) -> None:
    (tree / "a.py").symlink_to("b.py")
    (tree / "b.py").symlink_to("a.py")
    sources = within(10, found)
    assert shown(sources) == ["a.py", "b.py", "train.py"]
    assert "Too many levels of symbolic links" in unread(by_name(sources, "a.py"))
    (named,) = found(["a.py"])
    assert named == Source("a.py", Path("a.py"))
    assert "Too many levels of symbolic links" in unread(named)


def test_dangling_symlink_is_a_reason(tree: Path) -> None:
    (tree / "gone.py").symlink_to("nowhere.py")
    expected = "cannot read the file: a broken symbolic link (its target does not exist)"
    assert unread(by_name(found(), "gone.py")) == expected
    (named,) = found(["gone.py"])
    assert named.missing is None and unread(named) == expected


def test_symlinked_folder_loop_ends(tree: Path) -> None:
    (tree / "d").mkdir()
    (tree / "d" / "model.py").write_text(TRAIN)
    (tree / "d" / "loop").symlink_to("..")
    assert shown(within(10, found)) == ["train.py", "d/model.py"]
    # Named, the link is walked once: its own loop is not followed again.
    assert shown(within(10, lambda: found(["d/loop"]))) == ["d/loop/train.py", "d/loop/d/model.py"]


def test_missing_path_is_still_no_such_file(tree: Path) -> None:
    assert found(["nope.py"]) == [Source("nope.py", Path("nope.py"), missing="no such file or directory")]
    assert found(["nope/a.py"])[0].missing == "no such file or directory"


def test_normal_files_keep_order_and_names(tree: Path) -> None:
    for name in ("src/b.py", "src/a.py", "src/pkg/c.pyi", "src/pkg/n.ipynb", "src/z.txt"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("x = 1\n")
    assert shown(found(["src"])) == ["src/a.py", "src/b.py", "src/pkg/c.pyi", "src/pkg/n.ipynb"]
    assert shown(found()) == ["train.py", "src/a.py", "src/b.py", "src/pkg/c.pyi", "src/pkg/n.ipynb"]
    assert all(s.missing is None and s.skipped is None for s in found())


# The command line, end to end.


def run_check(folder: Path) -> tuple[int, list[dict[str, Any]]]:
    """The exit code and findings of ``clipcheck check .`` in ``folder``; it must end in a
    minute and print JSON (not a traceback) whatever the tree holds."""
    result = subprocess.run([*clipcheck_command(), "check", "--output-format", "json", "--exit-zero", "."],
                            cwd=folder, capture_output=True, text=True, timeout=60, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode in (0, 2), result.stderr  # 2: a CC000, which --exit-zero keeps
    assert "Traceback" not in result.stderr, result.stderr
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    return result.returncode, findings


@needs_fifo
def test_cli_with_a_fifo_does_not_hang(tree: Path) -> None:
    os.mkfifo(tree / "pipe.py")
    _, findings = run_check(tree)  # "." is named, so paths are shown as "./train.py"
    assert [f["code"] for f in findings if f["path"] == "./train.py"] == ["CC104"]


@needs_fifo
def test_cli_reports_a_fifo_as_a_note_not_a_finding(tree: Path) -> None:
    os.mkfifo(tree / "pipe.py")
    code, findings = run_check(tree)
    assert [f for f in findings if f["path"] == "./pipe.py"] == [] and code == 0
