"""The ``clipcheck`` command line.

Built on argparse, which is part of every Python's start-up already: a linter that pre-commit
runs on a few files at every commit spends most of its time starting, and the command line's
own imports come before the first file is analysed. Each command imports what it needs when it
runs (output formats, rule pages, the runtime guard, the language server).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from clipcheck import __version__
from clipcheck.cache import FOLDER, Cache
from clipcheck.catalogue import RuleInfo
from clipcheck.config import ConfigError, Overrides, Resolver, rule_named
from clipcheck.output import FORMATS
from clipcheck.sources import STDIN
from clipcheck.suppressions import UNUSED_CODE
from clipcheck.workers import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from clipcheck.engine import Report

INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command Ctrl-C stopped
USAGE = 2  # a usage error, a configuration that cannot be used, or a file that could not be analysed


class CannotRun(Exception):
    """A configuration file or an installation that cannot be used: exit status 2, as for a
    usage error, without the usage text (what to change is not the command line)."""


def _selectors(values: Sequence[str] | None) -> tuple[str, ...]:
    """Comma-separated option values, split (``--select CC101,CC102 --select CC2``)."""
    return tuple(part.strip() for value in values or () for part in value.split(",") if part.strip())


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _seconds(text: str) -> float:
    """A time limit: more than 0 and at most a day (NaN, which passes any range, is refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if math.isnan(value) or not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text} is not more than 0 and at most 86400 seconds")
    return value


def _config_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    return path


def _script(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a script")
    return text


def _use_color(choice: str) -> bool:
    if choice != "auto":
        return choice == "always"
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _rule(parser: argparse.ArgumentParser, identifier: str) -> RuleInfo:
    try:
        return rule_named(identifier)
    except ConfigError as error:
        parser.error(str(error))


# -- check ---------------------------------------------------------------------------------------

def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="Files and folders to check (default: the current folder; - reads standard "
                             "input).")
    parser.add_argument("--output-format", choices=FORMATS, default="text",
                        help="text and concise for people; json, json-lines, github and sarif for tools "
                             "and CI (default: text).")
    parser.add_argument("--select", action="append", metavar="RULES",
                        help="Only these rules (codes, names or code prefixes, comma-separated); "
                             "replaces the config's.")
    parser.add_argument("--extend-select", action="append", metavar="RULES",
                        help="Rules to add to the selection.")
    parser.add_argument("--ignore", action="append", metavar="RULES",
                        help="Rules to skip (added to the config's).")
    parser.add_argument("--exclude", action="append", metavar="PATTERN",
                        help="Gitignore-style patterns of files and folders to skip (added to the config's).")
    parser.add_argument("--force-exclude", action="store_true",
                        help="Apply exclusions to files named on the command line too (for pre-commit).")
    parser.add_argument("--config", dest="config_file", type=_config_file, metavar="FILE",
                        help="Use this configuration file instead of the nearest one above each file.")
    parser.add_argument("--stdin-filename", metavar="PATH",
                        help="The name to report (and to pick settings by) for code read from standard "
                             "input.")
    parser.add_argument("--report-unused-suppressions", action="store_true",
                        help=f"Report suppression comments that suppress nothing ({UNUSED_CODE}).")
    parser.add_argument("--statistics", action="store_true",
                        help="Print how many findings each rule made, instead of them.")
    parser.add_argument("--exit-zero", action="store_true",
                        help="Exit 0 even when there are findings (not for unreadable files).")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="Print findings only: no summary, no notices.")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="Colour text output (auto, the default: on a terminal, unless NO_COLOR is set).")
    parser.add_argument("--fix", action="store_true",
                        help="Apply the safe fixes (with --unsafe-fixes, the unsafe ones too).")
    parser.add_argument("--unsafe-fixes", action="store_true",
                        help="Let --fix and --diff make the fixes labelled unsafe.")
    parser.add_argument("--diff", action="store_true",
                        help="Print the fixes as a unified diff instead of writing them.")
    parser.add_argument("-j", "--jobs", type=_at_least_one, metavar="N",
                        help="Worker processes (default: the usable cores).")
    parser.add_argument("--no-cache", action="store_true",
                        help=f"Neither read nor write the results cache ({FOLDER}).")
    parser.add_argument("--timeout", type=_seconds, default=DEFAULT_LIMITS.seconds, metavar="SECONDS",
                        help="Time one file may take (plus as much again per MiB) before it is reported "
                             f"unanalysable (default: {DEFAULT_LIMITS.seconds:g}).")
    parser.add_argument("--show-settings", action="store_true",
                        help="Print the settings in effect for the first path, and exit.")


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Check Python files and notebooks."""
    from clipcheck.engine import Fixing
    from clipcheck.engine import check as check_sources

    overrides = Overrides(_selectors(args.select), _selectors(args.extend_select), _selectors(args.ignore),
                          _selectors(args.exclude))
    paths: list[str] = args.paths
    if args.stdin_filename is not None and not paths:
        paths = [STDIN]
    try:
        resolver = Resolver(overrides, args.config_file)
        if args.show_settings:
            first = Path(paths[0]) if paths and paths[0] != STDIN else Path(args.stdin_filename or ".")
            print(resolver.for_path(first).describe())
            return 0
        fixing = Fixing(unsafe=args.unsafe_fixes, diff=args.diff) if args.fix or args.diff else None
        cache = None if args.no_cache else Cache(Path.cwd())
        limits = Limits(seconds=args.timeout, seconds_per_mib=args.timeout)
        with _progress(args.output_format, args.quiet) as progress:
            report = check_sources(paths, resolver, args.force_exclude, args.report_unused_suppressions,
                                   args.stdin_filename, fixing, args.jobs, cache, limits, progress)
    except ConfigError as error:
        if error.path is None:
            parser.error(str(error))
        raise CannotRun(str(error)) from error
    unanalysable = any(f.unanalysable for f in report.findings)
    if args.diff:
        sys.stdout.write("".join(report.diffs))
        return USAGE if unanalysable else 1 if report.diffs else 0
    if report.fixed and not args.quiet:
        print(f"clipcheck: fixed {report.fixed} problem{'s' if report.fixed != 1 else ''}.", file=sys.stderr)
    _print_report(report, args)
    if not args.quiet:
        for note in report.notes:
            print(f"clipcheck: {note}", file=sys.stderr)
        if report.checked == 0:
            print("clipcheck: no Python file or notebook was found to check.", file=sys.stderr)
    if unanalysable:
        return USAGE
    return 1 if report.findings and not args.exit_zero else 0


def _print_report(report: Report, args: argparse.Namespace) -> None:
    """The findings in the chosen format (or, with ``--statistics``, a count per rule)."""
    from clipcheck.output import emit
    from clipcheck.output.text import found

    if args.statistics:
        counts: dict[tuple[str, str], int] = {}
        for f in report.findings:
            counts[f.code, f.rule] = counts.get((f.code, f.rule), 0) + 1
        for (code, rule), count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            print(f"{count:>5}  {code}  {rule}")
        if not counts:
            print(found(report))
        return
    for_people = args.output_format in ("text", "concise")
    output = emit(args.output_format, report, _use_color(args.color) and for_people)
    if args.quiet and for_people:
        output = "\n".join(output.splitlines()[:-1])
    if output:
        print(output)


@contextmanager
def _progress(output_format: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on standard error while the files are checked (where it is wanted),
    erased however the check ends."""
    from clipcheck.output import progress as progress_bar

    if not progress_bar.wanted(sys.stderr, output_format, quiet):
        yield None
        return
    bar = progress_bar.ProgressBar(sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


# -- rules and explain ---------------------------------------------------------------------------

def _rules_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rule", nargs="?", help="A rule's code or name: show its page.")
    parser.add_argument("--output-format", choices=("text", "json"), default="text",
                        help="text, or json for tools (default: text).")


def _rules(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """List the rules (json: for tools), or show one rule's page."""
    import json

    from clipcheck.catalogue import CATALOGUE
    from clipcheck.docs import rule_doc

    if args.rule is not None:
        print(rule_doc(_rule(parser, args.rule)))
    elif args.output_format == "json":
        print(json.dumps([{"code": r.code, "name": r.name, "summary": r.summary, "explanation": rule_doc(r)}
                          for r in CATALOGUE], indent=2))
    else:
        for r in CATALOGUE:
            print(f"{r.code}  {r.name:<26} {r.summary}")
    return 0


def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rule", help="A rule's code or name.")


def _explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print a rule's page (by code or name): what is wrong, why it matters, how to fix it."""
    from clipcheck.docs import rule_doc

    print(rule_doc(_rule(parser, args.rule)))
    return 0


# -- run -----------------------------------------------------------------------------------------

def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-norm", type=float, default=None,
                        help="Also require every step's gradient norm to be at most this (default: order "
                             "only).")
    parser.add_argument("--check-every", type=int, default=100,
                        help="Steps between reads of the on-device norm check (each read is one sync; "
                             "default: 100).")
    parser.add_argument("script", type=_script, help="The training script.")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="The script's own arguments.")


def _print_script_traceback(error: BaseException, script: str) -> None:
    """Print ``error`` as ``python script`` would: its traceback from the script's first frame
    on, without the frames of this runner and runpy, which would read as clipcheck failing
    (none at all for a syntax error, which points at the script itself)."""
    import traceback

    trace = error.__traceback__
    while trace is not None and trace.tb_frame.f_code.co_filename != script:
        trace = trace.tb_next
    traceback.print_exception(type(error), error, trace)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int | str | None:
    """Run a training script with every optimizer guarded (needs torch: the `runtime` extra).

    Each optimizer is guarded from its first step on; that first step is not checked.
    Exit status: the script's own, or 1 when the guard found a mistake.
    """
    script: str = args.script
    if script.lower().endswith(".ipynb"):
        parser.error(
            f"{script} is a notebook, and `clipcheck run` runs a Python script. In a notebook, wrap "
            "the training loop in `with clipcheck.runtime.guard(optimizer): ...` (or export it "
            "with `jupyter nbconvert --to script` and run that).")
    try:
        from clipcheck import runtime
    except ImportError as error:
        parser.error(f"clipcheck run needs PyTorch, which cannot be imported here ({error}): install it "
                    "with `pip install torch` (or `pip install 'clipcheck[runtime]'`)")
    import runpy

    sys.argv = [script, *args.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runtime.install(max_norm=args.max_norm, check_every=args.check_every)
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
        print(f"clipcheck: {error}", file=sys.stderr)
        return 1
    except SystemExit:  # the script's own non-zero exit
        runtime.uninstall(check=False)
        raise
    except BaseException as error:
        runtime.uninstall(check=False)
        _print_script_traceback(error, script)
        return INTERRUPTED if isinstance(error, KeyboardInterrupt) else 1
    if steps == 0:
        print("clipcheck: no optimizer stepped during this run, so nothing was checked.", file=sys.stderr)
    return exit_code


# -- server --------------------------------------------------------------------------------------

def _server(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the language server over stdio (needs `pip install clipcheck[lsp]`)."""
    try:
        from clipcheck.server import serve
    except ModuleNotFoundError as error:
        missing = (error.name or "").partition(".")[0]
        if missing not in ("pygls", "lsprotocol") and error.name != "clipcheck.server":
            raise
        raise CannotRun(f"the language server cannot start: {error.name} is not installed here; "
                        "install the `lsp` extra with `pip install 'clipcheck[lsp]'`") from error
    serve()
    return 0


# -- the command ---------------------------------------------------------------------------------

Command = Callable[[argparse.Namespace, argparse.ArgumentParser], "int | str | None"]
COMMANDS: tuple[tuple[str, Command, Callable[[argparse.ArgumentParser], None] | None, str], ...] = (
    ("check", _check, _check_arguments,
     "Exit status: 0 no findings, 1 findings, 2 usage error or a file that could not be analysed, "
     "130 stopped by Ctrl-C."),
    ("rules", _rules, _rules_arguments, ""),
    ("explain", _explain, _explain_arguments, ""),
    ("run", _run, _run_arguments, ""),
    ("server", _server, None, ""),
)


def _unmeasured(formatter: type[argparse.HelpFormatter]) -> Callable[..., argparse.HelpFormatter]:
    """``formatter`` at a fixed width. argparse makes a help formatter for every option it adds,
    only to check the option's arguments, and one of the terminal's width imports shutil (with
    its compression modules) to measure it: a parser is built with these, and measures the
    terminal only when it prints help or a usage error."""
    return functools.partial(formatter, width=80)


def _parser(wanted: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser. Where ``wanted`` names a command, the other commands' parsers
    are left out: argparse looks each parser's labels up in the locale's translation files, on
    disk, and a check run at every commit should not pay that for four commands it does not run.
    Without a known command (``--help``, a typo) all are built, to be listed."""
    known = any(name == wanted for name, *_ in COMMANDS)
    parser = argparse.ArgumentParser(
        prog="clipcheck", allow_abbrev=False, formatter_class=_unmeasured(argparse.HelpFormatter),
        description="Find misplaced gradient clipping, zero-grad and optimizer steps in PyTorch "
                    "training code.")
    parser.add_argument("--version", action="version", version=f"clipcheck, version {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    subparsers = []
    for name, command, arguments, epilog in COMMANDS:
        if known and name != wanted:
            continue
        summary = (command.__doc__ or "").strip().splitlines()[0]
        sub = commands.add_parser(name, help=summary, description=(command.__doc__ or "").strip(),
                                  epilog=epilog or None,
                                  formatter_class=_unmeasured(argparse.RawDescriptionHelpFormatter),
                                  allow_abbrev=False)  # ``--fi`` is no ``--fix``: a typo must not write files
        if arguments is not None:
            arguments(sub)
        sub.set_defaults(command=command, parser=sub)
        subparsers.append(sub)
    parser.formatter_class = argparse.HelpFormatter
    for sub in subparsers:
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


# ``run``'s options that take a value (``--max-norm 1.0``), to find its script after them.
_RUN_VALUED = frozenset({"--max-norm", "--check-every"})


def _command_at(argv: Sequence[str]) -> int | None:
    """Where the command's name is in ``argv``: its first word that is not an option (the
    command line's own options, ``--help`` and ``--version``, take no value)."""
    return next((i for i, word in enumerate(argv) if not word.startswith("-")), None)


def _script_at(argv: Sequence[str], command: int | None) -> int | None:
    """Where ``run``'s script is in ``argv`` (``None``: no ``run``, or no script)."""
    if command is None or argv[command] != "run":
        return None
    at = command + 1
    while at < len(argv):
        word = argv[at]
        if word == "--":
            return at + 1 if at + 1 < len(argv) else None
        if not word.startswith("-"):
            return at
        at += 2 if word in _RUN_VALUED else 1
    return None


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line: a check's paths may come anywhere among its options, and every word
    after ``run``'s script is the script's own, ``--`` included, untouched."""
    command = _command_at(argv)
    script = _script_at(argv, command)
    parser = _parser(argv[0] if command == 0 else None)  # ``-h check`` lists every command
    args, extra = parser.parse_known_args(argv if script is None else argv[:script + 1])
    if extra:
        if args.command is not _check or any(word.startswith("-") and word != STDIN for word in extra):
            args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.paths = [*args.paths, *extra]
    if script is not None:
        args.args = list(argv[script + 1:])
    return args


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """``clipcheck``: parse the command line, run the command and exit with its status."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        code = args.command(args, args.parser)
    except KeyboardInterrupt:
        print("clipcheck: interrupted.", file=sys.stderr)
        code = INTERRUPTED
    except CannotRun as error:
        print(f"Error: {error}", file=sys.stderr)
        code = USAGE
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as ``cat`` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush there
        code = 1
    sys.exit(code)
