"""Settings: ``[tool.clipcheck]`` in the nearest ``pyproject.toml`` (or a ``clipcheck.toml``)
walking up from each checked file, then the command line's flags on top.

Keys (Ruff's spelling): ``select``, ``extend-select``, ``ignore``, ``exclude``,
``extend-exclude``, ``per-file-ignores``. Rules are named by code, kebab name or code prefix
(``CC1``, ``ALL``). Anything unknown is a :class:`ConfigError` naming the key or rule.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pathspec

from clipcheck.catalogue import CATALOGUE, RuleInfo
from clipcheck.static.frameworks.custom import KEYS as VOCABULARY_KEYS
from clipcheck.static.frameworks.custom import NONE as NO_CUSTOM_VOCABULARY
from clipcheck.static.frameworks.custom import Vocabulary

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

KEYS = ("select", "extend-select", "ignore", "exclude", "extend-exclude", "per-file-ignores", "vocabulary")
CONFIG_FILES = ("clipcheck.toml", "pyproject.toml")  # the first found in a folder wins


class ConfigError(Exception):
    """A configuration or a rule selector that cannot be used (exit code 2)."""


def _unknown(selector: str, where: str) -> ConfigError:
    known = ", ".join(f"{r.code} ({r.name})" for r in CATALOGUE)
    return ConfigError(f"unknown rule {selector!r}{where}; known rules: {known}")


def rule_named(identifier: str) -> RuleInfo:
    """The one rule a code or kebab name names (no prefixes: ``explain``, ``rules RULE``)."""
    found = [r for r in CATALOGUE if identifier.upper() == r.code or identifier.lower() == r.name]
    if not found:
        raise _unknown(identifier, "")
    return found[0]


def rules_matching(selector: str, where: str = "") -> list[RuleInfo]:
    """The rules a selector names: a code, a kebab name, a code prefix, or ``ALL``."""
    wanted = selector.strip()
    if wanted.upper() == "ALL":
        return list(CATALOGUE)
    found = [r for r in CATALOGUE if r.name == wanted.lower() or r.code.startswith(wanted.upper())]
    if not found or (wanted.upper().startswith("CC") and len(wanted) < 3):
        raise _unknown(selector, where)
    return found


def codes(selectors: Iterable[str], where: str = "") -> frozenset[str]:
    return frozenset(r.code for s in selectors for r in rules_matching(s, where))


def _holds(test: Callable[[], bool]) -> bool:
    """A file-system test that is false, not an error, inside a folder one may not search."""
    try:
        return test()
    except OSError:
        return False


def _spec(patterns: Sequence[str]) -> pathspec.PathSpec | None:
    """Gitignore-style patterns; ``None`` for none (pathspec is imported only for some)."""
    if not patterns:
        return None
    import pathspec

    return pathspec.PathSpec.from_lines("gitwildmatch", patterns)


def _relative(path: Path, root: Path) -> str | None:
    try:
        return Path(os.path.abspath(path)).relative_to(root).as_posix()
    except ValueError:
        return None


def _matches(spec: pathspec.PathSpec | None, path: Path, root: Path) -> bool:
    """Whether gitignore-style ``spec``, relative to ``root``, matches file or folder ``path``."""
    if spec is None:
        return False  # the common case, asked for every file and folder of the tree
    relative = _relative(path, root)
    if relative is None or relative == ".":
        return False
    return spec.match_file(relative) or (path.is_dir() and spec.match_file(relative + "/"))


@dataclass(frozen=True)
class Overrides:
    """What the command line says; it wins over every configuration file."""

    select: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """The settings in effect for the files under ``root``."""

    root: Path
    source: Path | None  # the configuration file, if any
    selected: frozenset[str]  # rule codes
    exclude: tuple[str, ...] = ()
    per_file_ignores: tuple[tuple[str, frozenset[str]], ...] = ()
    vocabulary: Vocabulary = NO_CUSTOM_VOCABULARY
    _excluded: pathspec.PathSpec | None = field(default=None, compare=False, repr=False)
    _ignores: tuple[tuple[pathspec.PathSpec | None, frozenset[str]], ...] = field(default=(), compare=False,
                                                                          repr=False)

    def _relative(self, path: Path) -> str | None:
        return _relative(path, self.root)

    def excluded(self, path: Path) -> bool:
        return _matches(self._excluded, path, self.root)

    def rules_for(self, path: Path | None) -> list[RuleInfo]:
        """The rules to run on ``path`` (per-file ignores applied)."""
        ignored: set[str] = set()
        relative = self._relative(path) if path is not None else None
        if relative is not None:
            for spec, rule_codes in self._ignores:
                if spec is not None and spec.match_file(relative):
                    ignored |= rule_codes
        return [r for r in CATALOGUE if r.code in self.selected and r.code not in ignored]

    def describe(self) -> str:
        """What ``--show-settings`` prints."""
        lines = [f"configuration file: {self.source or '(none: defaults)'}",
                 f"project root: {self.root}",
                 "rules: " + ", ".join(f"{r.code} ({r.name})" for r in CATALOGUE if r.code in self.selected),
                 "exclude: " + (", ".join(self.exclude) or "(none beyond the built-in folders)")]
        for pattern, rule_codes in self.per_file_ignores:
            lines.append(f"per-file-ignores: {pattern} -> {', '.join(sorted(rule_codes))}")
        for name, kind in self.vocabulary.entries:
            lines.append(f"vocabulary: {name} counts as {kind.value}")
        return "\n".join(lines)


def _strings(table: dict[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"`{key}`{where} must be a list of strings")
    return value


def _table(path: Path) -> dict[str, Any] | None:
    """``[tool.clipcheck]`` of a pyproject.toml (``None`` without one), or a clipcheck.toml."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    if path.name == "pyproject.toml":
        table = data.get("tool", {}).get("clipcheck")
        if table is not None and not isinstance(table, dict):
            raise ConfigError(f"[tool.clipcheck] in {path} must be a table")
        return table
    return data


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def _vocabulary(table: dict[str, Any], where: str) -> Vocabulary:
    """``[tool.clipcheck.vocabulary]``: dotted names of in-house callables, by what they do."""
    section = table.get("vocabulary", {})
    if not isinstance(section, dict):
        raise ConfigError(f"`vocabulary`{where} must be a table")
    unknown = sorted(set(section) - set(VOCABULARY_KEYS))
    if unknown:
        raise ConfigError(f"unknown key `vocabulary.{unknown[0]}`{where}; known keys: "
                          f"{', '.join(VOCABULARY_KEYS)}")
    entries = []
    for key, kind in VOCABULARY_KEYS.items():
        for name in _strings(section, key, where):
            if not _DOTTED.match(name):
                raise ConfigError(f"`vocabulary.{key}`{where}: {name!r} is not a dotted name "
                                  "such as `mylib.Trainer.backward`")
            entries.append((name, kind))
    return Vocabulary(tuple(entries))


def build(root: Path, source: Path | None, table: dict[str, Any], cli: Overrides) -> Settings:
    """Settings from one configuration table (empty for defaults) with the command line on top."""
    where = f" in {source}" if source is not None else ""
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown key `{unknown[0]}`{where}; known keys: {', '.join(KEYS)}")
    select = cli.select or tuple(_strings(table, "select", where)) or ("ALL",)
    selected = codes(select, where) | codes(_strings(table, "extend-select", where), where)
    selected |= codes(cli.extend_select, " (--extend-select)")
    selected -= codes(_strings(table, "ignore", where), where) | codes(cli.ignore, " (--ignore)")
    exclude = (*_strings(table, "exclude", where), *_strings(table, "extend-exclude", where))
    per_file = table.get("per-file-ignores", {})
    if not isinstance(per_file, dict):
        raise ConfigError(f"`per-file-ignores`{where} must be a table of glob = [rules]")
    ignores = tuple((pattern, codes(_strings(per_file, pattern, where), where)) for pattern in per_file)
    return Settings(root, source, selected, exclude, ignores, _vocabulary(table, where), _spec(exclude),
                    tuple((_spec([pattern]), rule_codes) for pattern, rule_codes in ignores))


class Resolver:
    """The settings for each checked path, from the nearest configuration file above it
    (cached per folder)."""

    def __init__(self, cli: Overrides, config_file: Path | None = None) -> None:
        self.cli = cli
        self._forced = None if config_file is None else self._load(config_file)
        self._by_folder: dict[Path, Settings] = {}
        self._default = build(Path.cwd(), None, {}, cli)
        self._cli_excluded = _spec(cli.exclude)  # relative to the current folder, like the paths

    def excluded(self, path: Path) -> bool:
        """Excluded by the command line or by the settings in effect for it."""
        return _matches(self._cli_excluded, path, Path.cwd()) or self.for_path(path).excluded(path)

    def _load(self, path: Path) -> Settings:
        table = _table(path)
        return build(path.resolve().parent, path, table or {}, self.cli)

    def for_path(self, path: Path | None) -> Settings:
        if self._forced is not None:
            return self._forced
        if path is None:
            path = Path.cwd() / "-"
        folder = Path(os.path.abspath(path))
        folder = folder if _holds(folder.is_dir) else folder.parent
        chain: list[Path] = []
        settings = None
        for candidate in (folder, *folder.parents):
            if candidate in self._by_folder:
                settings = self._by_folder[candidate]
                break
            chain.append(candidate)
            settings = self._in(candidate)
            if settings is not None:
                break
        settings = settings or self._default
        for visited in chain:
            self._by_folder[visited] = settings
        return settings

    def _in(self, folder: Path) -> Settings | None:
        for name in CONFIG_FILES:
            path = folder / name
            if _holds(path.is_file):
                table = _table(path)
                if table is not None:
                    return build(folder, path, table, self.cli)
        return None
