"""The ``clipcheck`` command line."""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from clipcheck import __version__
from clipcheck.docs import rule_doc
from clipcheck.engine import check_paths
from clipcheck.output import FORMATS
from clipcheck.static.rules import RULES, Rule


def _rule_by_id(identifier: str) -> Rule:
    for rule in RULES:
        if identifier.upper() == rule.code or identifier.lower() == rule.name:
            return rule
    known = ", ".join(f"{r.code} ({r.name})" for r in RULES)
    raise click.BadParameter(f"unknown rule {identifier!r}; known rules: {known}")


def _rule_ids(values: Sequence[str]) -> list[Rule]:
    return [_rule_by_id(part.strip()) for value in values for part in value.split(",") if part.strip()]


@click.group()
@click.version_option(__version__, prog_name="clipcheck")
def main() -> None:
    """Find misplaced gradient clipping, zero-grad and optimizer steps in PyTorch training code."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--output-format", type=click.Choice(sorted(FORMATS)), default="text",
              show_default=True, help="Text for people, JSON for CI.")
@click.option("--select", multiple=True, metavar="RULES",
              help="Only these rules (codes or names, comma-separated).")
@click.option("--ignore", multiple=True, metavar="RULES",
              help="Skip these rules (codes or names, comma-separated).")
def check(paths: tuple[Path, ...], output_format: str, select: tuple[str, ...],
          ignore: tuple[str, ...]) -> None:
    """Check Python files (default: the current directory, recursively).

    Exit status: 0 no findings, 1 findings, 2 usage error or a file that could not be analysed.
    """
    try:
        selected = _rule_ids(select) if select else list(RULES)
        ignored = {r.code for r in _rule_ids(ignore)}
    except click.BadParameter as error:
        raise click.UsageError(error.message) from error
    rules = [r for r in selected if r.code not in ignored]
    report = check_paths(paths or (Path("."),), rules)
    click.echo(FORMATS[output_format](report.findings, report.sources, sys.stdout.isatty()))
    if any(f.unanalysable for f in report.findings):
        sys.exit(2)
    sys.exit(1 if report.findings else 0)


@main.command("rules")
@click.argument("rule", required=False)
def rules_command(rule: str | None) -> None:
    """List the rules, or show one rule's documentation."""
    if rule is not None:
        try:
            click.echo(rule_doc(_rule_by_id(rule)))
        except click.BadParameter as error:
            raise click.UsageError(error.message) from error
        return
    for r in RULES:
        click.echo(f"{r.code}  {r.name:<26} {r.summary}")


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
    try:
        from clipcheck import runtime
    except ImportError as error:
        raise click.UsageError(
            f"clipcheck run needs PyTorch, which cannot be imported here ({error}): install it "
            "with `pip install torch` (or `pip install 'clipcheck[runtime]'`)") from error
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
    except BaseException:
        runtime.uninstall(check=False)
        raise
    if steps == 0:
        click.echo("clipcheck: no optimizer stepped during this run, so nothing was checked.", err=True)
    sys.exit(exit_code)
