"""The ``clipcheck`` command line."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from clipcheck import __version__
from clipcheck.cache import FOLDER, Cache
from clipcheck.catalogue import CATALOGUE, RuleInfo
from clipcheck.config import ConfigError, Overrides, Resolver, rule_named
from clipcheck.docs import rule_doc
from clipcheck.engine import Fixing
from clipcheck.engine import check as check_sources
from clipcheck.output import FORMATS
from clipcheck.output import progress as progress_bar
from clipcheck.output.text import found
from clipcheck.sources import STDIN
from clipcheck.suppressions import UNUSED_CODE
from clipcheck.workers import Limits

INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command Ctrl-C stopped


class _CannotRun(click.ClickException):
    """A configuration file or an installation that cannot be used: exit status 2, as for a
    usage error, without the usage text (what to change is not the command line)."""

    exit_code = 2


def _config_error(error: ConfigError) -> click.ClickException:
    return _CannotRun(str(error)) if error.path is not None else click.UsageError(str(error))


class _Commands(click.Group):
    """clipcheck's commands. Ctrl-C exits 130, not with click's ``Aborted!`` and status 1,
    which is also the status of findings."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("clipcheck: interrupted.", err=True)
            sys.exit(INTERRUPTED)


def _rule_by_id(identifier: str) -> RuleInfo:
    try:
        return rule_named(identifier)
    except ConfigError as error:
        raise click.UsageError(str(error)) from error


def _selectors(values: Sequence[str]) -> tuple[str, ...]:
    """Comma-separated option values, split (``--select CC101,CC102 --select CC2``)."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def _a_number(value: float) -> float:
    if value != value:  # NaN passes any range
        raise click.BadParameter("not a number")
    return value


def _use_color(choice: str) -> bool:
    if choice != "auto":
        return choice == "always"
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clipcheck")
def main() -> None:
    """Find misplaced gradient clipping, zero-grad and optimizer steps in PyTorch training code."""


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--output-format", type=click.Choice(list(FORMATS)), default="text", show_default=True,
              help="text and concise for people; json, json-lines, github and sarif for tools and CI.")
@click.option("--select", multiple=True, metavar="RULES",
              help="Only these rules (codes, names or code prefixes, comma-separated); "
                   "replaces the config's.")
@click.option("--extend-select", multiple=True, metavar="RULES", help="Rules to add to the selection.")
@click.option("--ignore", multiple=True, metavar="RULES", help="Rules to skip (added to the config's).")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Gitignore-style patterns of files and folders to skip (added to the config's).")
@click.option("--force-exclude", is_flag=True,
              help="Apply exclusions to files named on the command line too (for pre-commit).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Use this configuration file instead of the nearest one above each file.")
@click.option("--stdin-filename", metavar="PATH",
              help="The name to report (and to pick settings by) for code read from standard input.")
@click.option("--report-unused-suppressions", is_flag=True,
              help=f"Report suppression comments that suppress nothing ({UNUSED_CODE}).")
@click.option("--statistics", is_flag=True, help="Print how many findings each rule made, instead of them.")
@click.option("--exit-zero", is_flag=True,
              help="Exit 0 even when there are findings (not for unreadable files).")
@click.option("-q", "--quiet", is_flag=True, help="Print findings only: no summary, no notices.")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Colour text output (auto: on a terminal, unless NO_COLOR is set).")
@click.option("--fix", is_flag=True, help="Apply the safe fixes (with --unsafe-fixes, the unsafe ones too).")
@click.option("--unsafe-fixes", is_flag=True, help="Let --fix and --diff make the fixes labelled unsafe.")
@click.option("--diff", is_flag=True, help="Print the fixes as a unified diff instead of writing them.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: the usable cores).")
@click.option("--no-cache", is_flag=True, help=f"Neither read nor write the results cache ({FOLDER}).")
@click.option("--timeout", type=click.FloatRange(min=0, max=86_400, min_open=True), default=Limits.seconds,
              callback=lambda _ctx, _param, value: _a_number(value),
              show_default=True, metavar="SECONDS",
              help="Time one file may take (plus as much again per MiB) before it is reported unanalysable.")
@click.option("--show-settings", is_flag=True,
              help="Print the settings in effect for the first path, and exit.")
def check(paths: tuple[str, ...], output_format: str, select: tuple[str, ...], extend_select: tuple[str, ...],
          ignore: tuple[str, ...], exclude: tuple[str, ...], force_exclude: bool, config_file: Path | None,
          stdin_filename: str | None, report_unused_suppressions: bool, statistics: bool, exit_zero: bool,
          quiet: bool, color: str, fix: bool, unsafe_fixes: bool, diff: bool,
          jobs: int | None, no_cache: bool, timeout: float, show_settings: bool) -> None:
    """Check Python files and notebooks (default: the current directory, recursively; ``-`` reads
    standard input).

    Exit status: 0 no findings, 1 findings, 2 usage error or a file that could not be analysed,
    130 stopped by Ctrl-C.
    """
    overrides = Overrides(_selectors(select), _selectors(extend_select), _selectors(ignore),
                          _selectors(exclude))
    if stdin_filename is not None and not paths:
        paths = (STDIN,)
    try:
        resolver = Resolver(overrides, config_file)
        if show_settings:
            first = Path(paths[0]) if paths and paths[0] != STDIN else Path(stdin_filename or ".")
            click.echo(resolver.for_path(first).describe())
            return
        fixing = Fixing(unsafe=unsafe_fixes, diff=diff) if fix or diff else None
        cache = None if no_cache else Cache(Path.cwd())
        limits = Limits(seconds=timeout, seconds_per_mib=timeout)
        with _progress(progress_bar.wanted(sys.stderr, output_format, quiet)) as progress:
            report = check_sources(list(paths), resolver, force_exclude, report_unused_suppressions,
                                   stdin_filename, fixing, jobs, cache, limits, progress)
    except ConfigError as error:
        raise _config_error(error) from error
    if diff:
        click.echo("".join(report.diffs), nl=False)
        if any(f.unanalysable for f in report.findings):
            sys.exit(2)
        sys.exit(1 if report.diffs else 0)
    if report.fixed and not quiet:
        click.echo(f"clipcheck: fixed {report.fixed} problem{'s' if report.fixed != 1 else ''}.", err=True)
    if statistics:
        counts = Counter((f.code, f.rule) for f in report.findings)
        for (code, rule), count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            click.echo(f"{count:>5}  {code}  {rule}")
        if not counts:
            click.echo(found(report))
    else:
        colored = _use_color(color) and output_format in ("text", "concise")
        output = FORMATS[output_format](report, colored)
        if quiet and output_format in ("text", "concise"):
            output = "\n".join(output.splitlines()[:-1])
        if output:
            click.echo(output, color=colored)
    if not quiet:
        for note in report.notes:
            click.echo(f"clipcheck: {note}", err=True)
    if report.checked == 0 and not quiet:
        click.echo("clipcheck: no Python file or notebook was found to check.", err=True)
    if any(f.unanalysable for f in report.findings):
        sys.exit(2)
    sys.exit(1 if report.findings and not exit_zero else 0)


@contextlib.contextmanager
def _progress(shown: bool) -> Iterator[progress_bar.ProgressBar | None]:
    """A progress bar on standard error while the files are checked (when ``shown``), erased
    however the check ends."""
    if not shown:
        yield None
        return
    bar = progress_bar.ProgressBar(sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


@main.command("rules")
@click.argument("rule", required=False)
@click.option("--output-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def rules_command(rule: str | None, output_format: str) -> None:
    """List the rules (json: for tools), or show one rule's page."""
    if rule is not None:
        click.echo(rule_doc(_rule_by_id(rule)))
        return
    if output_format == "json":
        click.echo(json.dumps([{"code": r.code, "name": r.name, "summary": r.summary,
                                "explanation": rule_doc(r)} for r in CATALOGUE], indent=2))
        return
    for r in CATALOGUE:
        click.echo(f"{r.code}  {r.name:<26} {r.summary}")


@main.command()
@click.argument("rule")
def explain(rule: str) -> None:
    """Print a rule's page (by code or name): what is wrong, why it matters, how to fix it."""
    click.echo(rule_doc(_rule_by_id(rule)))


def _print_script_traceback(error: BaseException, script: str) -> None:
    """Print ``error`` as ``python script`` would: its traceback from the script's first frame
    on, without the frames of this runner, runpy and click, which would read as clipcheck
    failing (none at all for a syntax error, which points at the script itself)."""
    import traceback

    trace = error.__traceback__
    while trace is not None and trace.tb_frame.f_code.co_filename != script:
        trace = trace.tb_next
    traceback.print_exception(type(error), error, trace)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--max-norm", type=float, default=None,
              help="Also require every step's gradient norm to be at most this (default: order only).")
@click.option("--check-every", type=int, default=100, show_default=True,
              help="Steps between reads of the on-device norm check (each read is one sync).")
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(max_norm: float | None, check_every: int, script: str, args: tuple[str, ...]) -> None:
    """Run a training script with every optimizer guarded (needs torch: the `runtime` extra).

    Each optimizer is guarded from its first step on; that first step is not checked.
    Exit status: the script's own, or 1 when the guard found a mistake.
    """
    if script.lower().endswith(".ipynb"):
        raise click.UsageError(
            f"{script} is a notebook, and `clipcheck run` runs a Python script. In a notebook, wrap "
            "the training loop in `with clipcheck.runtime.guard(optimizer): ...` (or export it "
            "with `jupyter nbconvert --to script` and run that).")
    try:
        from clipcheck import runtime
    except ImportError as error:
        raise click.UsageError(
            f"clipcheck run needs PyTorch, which cannot be imported here ({error}): install it "
            "with `pip install torch` (or `pip install 'clipcheck[runtime]'`)") from error
    import runpy

    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runtime.install(max_norm=max_norm, check_every=check_every)
    exit_code: str | int | None = None
    try:
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as done:
            if done.code not in (0, None):  # the script failed on its own: nothing to add
                raise
            exit_code = done.code  # a clean exit still gets the final check
        steps = runtime.uninstall(check=True)
    except runtime.GradientOrderError as error:
        runtime.uninstall(check=False)
        click.echo(f"clipcheck: {error}", err=True)
        sys.exit(1)
    except SystemExit:  # the script's own non-zero exit
        runtime.uninstall(check=False)
        raise
    except BaseException as error:
        runtime.uninstall(check=False)
        _print_script_traceback(error, script)
        sys.exit(INTERRUPTED if isinstance(error, KeyboardInterrupt) else 1)
    if steps == 0:
        click.echo("clipcheck: no optimizer stepped during this run, so nothing was checked.", err=True)
    sys.exit(exit_code)


@main.command()
def server() -> None:
    """Run the language server over stdio (needs `pip install clipcheck[lsp]`)."""
    try:
        from clipcheck.server import serve
    except ModuleNotFoundError as error:
        missing = (error.name or "").partition(".")[0]
        if missing not in ("pygls", "lsprotocol") and error.name != "clipcheck.server":
            raise
        raise _CannotRun(f"the language server cannot start: {error.name} is not installed here; "
                         "install the `lsp` extra with `pip install 'clipcheck[lsp]'`") from error
    serve()
