"""Settings: ``[tool.clipcheck]`` in the nearest ``pyproject.toml`` (or a ``clipcheck.toml``)
walking up from each checked file, then the command line's flags on top.

Keys (Ruff's spelling): ``select``, ``extend-select``, ``ignore``, ``exclude``,
``extend-exclude``, ``per-file-ignores``. Rules are named by code, kebab name or code prefix
(``CC1``, ``ALL``); CC900 (unused suppressions) only by its own code or name. Anything unknown is
a :class:`ConfigError` naming the key or rule, the file and its line, and the nearest known
spelling.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pathspec

from clipcheck.catalogue import CATALOGUE, RuleInfo
from clipcheck.static.frameworks.custom import KEYS as VOCABULARY_KEYS
from clipcheck.static.frameworks.custom import NONE as NO_CUSTOM_VOCABULARY
from clipcheck.static.frameworks.custom import Vocabulary

# This module's patterns are compiled where first used (re caches them): most runs read no
# configuration, or one without a mistake to point at.
_BARE_KEY = r"[A-Za-z0-9_-]+"

KEYS = ("select", "extend-select", "ignore", "exclude", "extend-exclude", "per-file-ignores", "vocabulary")
CONFIG_FILES = ("clipcheck.toml", "pyproject.toml")  # the first found in a folder wins


class ConfigError(Exception):
    """A configuration or a rule selector that cannot be used (exit code 2). ``key`` is where
    in a configuration table it was found (``None``: on the command line) and ``value`` the
    entry at fault, so that the file's line can be looked up; ``path`` is the file, once known."""

    def __init__(self, message: str, key: tuple[str, ...] | None = None, value: str | None = None,
                 path: Path | None = None) -> None:
        super().__init__(message)
        self.message, self.key, self.value, self.path = message, key, value, path


# Where a rule selector comes from: a command-line flag (``--select``) or a configuration key.
Origin = str | tuple[str, ...]


def _dotted(key: tuple[str, ...]) -> str:
    """A key path as TOML writes it: ``per-file-ignores."tests/*.py"``."""
    return ".".join(part if re.fullmatch(_BARE_KEY, part) else json.dumps(part) for part in key)


def _suggestion(wrong: str, known: Sequence[str], quote: str = "`") -> str:
    """``; did you mean `select`?`` for a near miss (as Ruff and Python itself suggest)."""
    import difflib

    close = difflib.get_close_matches(wrong, known, n=1, cutoff=0.7)
    return f"; did you mean {quote}{close[0]}{quote}?" if close else ""


def _unknown_key(key: tuple[str, ...], known: Sequence[str]) -> ConfigError:
    where = _dotted(key)
    hint = _suggestion(key[-1], known) or f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown key `{where}`{hint}", key)


def _unknown(selector: str, origin: Origin = "", rules: Sequence[RuleInfo] = CATALOGUE) -> ConfigError:
    known = [r.code for r in rules] + [r.name for r in rules]
    spelled = selector.upper() if selector.upper().startswith("CC") else selector.lower()
    hint = _suggestion(spelled, known, "'") or \
        "; known rules: " + ", ".join(f"{r.code} ({r.name})" for r in rules)
    if isinstance(origin, tuple):
        return ConfigError(f"unknown rule {selector!r} in `{_dotted(origin)}`{hint}", origin, selector)
    return ConfigError(f"unknown rule {selector!r}{f' ({origin})' if origin else ''}{hint}")


def rule_named(identifier: str) -> RuleInfo:
    """The one rule a code or kebab name names (no prefixes: ``explain``, ``rules RULE``)."""
    found = [r for r in CATALOGUE if identifier.upper() == r.code or identifier.lower() == r.name]
    if not found:
        raise _unknown(identifier)
    return found[0]


def _matching(selector: str, rules: Sequence[RuleInfo], origin: Origin) -> list[RuleInfo]:
    wanted = selector.strip()
    if wanted.upper() == "ALL":
        return list(CATALOGUE)
    found = [r for r in rules if r.name == wanted.lower() or r.code.startswith(wanted.upper())]
    if not found or (wanted.upper().startswith("CC") and len(wanted) < 3):
        raise _unknown(selector, origin, rules)
    return found


def rules_matching(selector: str, origin: Origin = "") -> list[RuleInfo]:
    """The rules a selector names: a code, a kebab name, a code prefix, or ``ALL``."""
    return _matching(selector, CATALOGUE, origin)


def _unused_suppression() -> RuleInfo:
    """CC900, which reports suppression comments rather than code: selected only by name or
    code (``ALL`` means the analysis rules). Imported here, since suppressions reads this
    module's selectors."""
    from clipcheck.suppressions import UNUSED_CODE, UNUSED_NAME

    return RuleInfo(UNUSED_CODE, UNUSED_NAME, "a suppression comment that suppresses nothing")


def codes(selectors: Iterable[str], origin: Origin = "") -> frozenset[str]:
    """The codes the selectors name, CC900 included where one names it."""
    selectable = (*CATALOGUE, _unused_suppression())
    return frozenset(r.code for s in selectors for r in _matching(s, selectable, origin))


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


class Overrides(NamedTuple):
    """What the command line says; it wins over every configuration file."""

    select: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(eq=False)
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

    def _ignored(self, path: Path | None) -> frozenset[str]:
        """The codes ``per-file-ignores`` turns off for ``path``."""
        if not self._ignores:
            return frozenset()  # the common case, asked for every file
        relative = self._relative(path) if path is not None else None
        if relative is None:
            return frozenset()
        return frozenset(code for spec, rule_codes in self._ignores
                         if spec is not None and spec.match_file(relative) for code in rule_codes)

    def rules_for(self, path: Path | None) -> list[RuleInfo]:
        """The rules to run on ``path`` (per-file ignores applied)."""
        ignored = self._ignored(path)
        return [r for r in CATALOGUE if r.code in self.selected and r.code not in ignored]

    def reports_unused(self, path: Path | None) -> bool:
        """Whether CC900 (unused suppression comments) is selected for ``path``."""
        code = _unused_suppression().code
        return code in self.selected and code not in self._ignored(path)

    def describe(self) -> str:
        """What ``--show-settings`` prints."""
        rules = (*CATALOGUE, _unused_suppression())
        lines = [f"configuration file: {self.source or '(none: defaults)'}",
                 f"project root: {self.root}",
                 "rules: " + ", ".join(f"{r.code} ({r.name})" for r in rules if r.code in self.selected),
                 "exclude: " + (", ".join(self.exclude) or "(none beyond the built-in folders)")]
        for pattern, rule_codes in self.per_file_ignores:
            lines.append(f"per-file-ignores: {pattern} -> {', '.join(sorted(rule_codes))}")
        for name, kind in self.vocabulary.entries:
            lines.append(f"vocabulary: {name} counts as {kind.value}")
        return "\n".join(lines)


def _strings(table: dict[str, Any], key: tuple[str, ...]) -> list[str]:
    """The list of strings at ``key`` (the last part) in ``table`` (at the rest of the path)."""
    value = table.get(key[-1], [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"`{_dotted(key)}` must be a list of strings", key)
    return value


_TOML_PLACE = r" \(at line (\d+), column (\d+)\)$"


def _shown(path: Path) -> str:
    """A configuration file as messages name it: relative to the current folder when inside it."""
    relative = _relative(path, Path.cwd())
    return relative if relative is not None else str(path)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{_shown(path)}: cannot read it: {error}", path=path) from None


def _names_us(text: str) -> bool:
    """Whether a pyproject.toml's text can set a key of ``tool.clipcheck``, read without a TOML
    parser: most projects' files are never parsed (nor the parser imported), those that name
    clipcheck only as a dependency or a script included.

    Each line of the top level (outside a multi-line array or an inline table) opens a table or
    sets a dotted key in the current one; clipcheck's table can only come of one whose whole
    path starts ``tool.clipcheck``, or of ``tool = {...}``. A line that is neither (nor blank,
    nor a comment) is not understood, and the file is parsed; so is a file with a multi-line
    string, which could hide such a line or forge one, or with a ``\\u`` escape, with which a
    quoted key can spell a letter (any other escape spells no letter: a key holding one is
    neither ``tool`` nor ``clipcheck``)."""
    if "\\u" in text or "\\U" in text:
        return True
    if "clipcheck" not in text:
        return False
    if '"""' in text or "'''" in text:
        return True
    table: tuple[str, ...] = ()
    depth = 0  # how deep in arrays and inline tables a line starts
    for line in text.split("\n"):  # TOML's only line break (``splitlines`` breaks inside strings too)
        # Of the top level's lines, a key's names clipcheck's table only in the root table or
        # in ``[tool]``; every table header is read.
        if depth == 0 and (table in _PREFIXES or line.lstrip().startswith("[")):
            try:
                named = _named(line, table)
            except ValueError:  # a quoted key with an escape JSON does not know
                return True
            if named is None:
                stripped = line.strip()
                if stripped and not stripped.startswith("#"):
                    return True
            else:
                path, is_header = named
                if path[:2] == _OURS or (path == _OURS[:1] and not is_header):
                    return True
                table = path if is_header else table
        for opening, closing in re.findall(_BRACKETS, line):
            depth += bool(opening) - bool(closing)
    return False


_OURS = ("tool", "clipcheck")
_PREFIXES = ((), _OURS[:1])  # the tables whose keys can start clipcheck's
# A one-line string or a comment (whose brackets count for nothing), or a bracket or brace.
_BRACKETS = r"""(?:"(?:[^"\\]|\\.)*"|'[^']*'|#.*)|([\[{])|([\]}])"""


def _tomllib() -> Any:
    """The TOML parser, imported where a file needs it."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib
    return tomllib


def _toml(path: Path, text: str) -> dict[str, Any]:
    """A configuration file's TOML."""
    tomllib = _tomllib()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        reason = str(error)
        place = re.search(_TOML_PLACE, reason)
        where = f"{place[1]}:{place[2]}:" if place else ""
        raise ConfigError(f"{_shown(path)}:{where} not valid TOML: {re.sub(_TOML_PLACE, '', reason)}",
                          path=path) from None


def _table(data: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """``[tool.clipcheck]`` of a pyproject.toml (``None`` without one), or a clipcheck.toml."""
    if path.name == "pyproject.toml":
        table = data.get("tool", {}).get("clipcheck")
        if table is not None and not isinstance(table, dict):
            raise ConfigError("[tool.clipcheck] must be a table", ())
        return table
    return data


# A TOML line that opens a table (``[tool.clipcheck]``, ``[[x]]``) or sets a (dotted) key.
_HEADER = r"\s*\[\[?([^\[\]]+)\]\]?\s*(?:#.*)?"
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_ASSIGNMENT = rf"\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*="


def _parts(dotted: str) -> tuple[str, ...]:
    """``tool."clipcheck"`` as ``("tool", "clipcheck")``."""
    return tuple(_quoted(p) if p[0] == '"' else p.strip("'") for p in re.findall(_KEY_PART, dotted))


def _quoted(key: str) -> str:
    """A quoted key's name: JSON reads every escape of TOML's but ``\\U`` (eight digits), for
    which TOML's parser reads it. Raises ``ValueError`` for a key TOML does not allow."""
    try:
        return str(json.loads(key))
    except ValueError:
        return str(_tomllib().loads(f"k = {key}")["k"])


def _named(line: str, table: tuple[str, ...]) -> tuple[tuple[str, ...], bool] | None:
    """The full key path a line opens (a table header) or sets (an assignment in ``table``),
    and whether it is a header; ``None`` for other lines (an array's next line, a comment)."""
    header = re.fullmatch(_HEADER, line)
    if header is not None:
        return _parts(header[1]), True
    assignment = re.match(_ASSIGNMENT, line)
    return (table + _parts(assignment[1]), False) if assignment is not None else None


def _line_of(text: str, key: tuple[str, ...], value: str | None) -> int | None:
    """The line that holds ``value`` in ``key``'s value (an array may span lines), or else that
    sets ``key`` (its full dotted path), or else the nearest table or key above it that the file
    names. tomllib gives no line for what it parsed, so the text is read for it."""
    table: tuple[str, ...] = ()
    found, depth = None, -1  # the line naming most of ``key``, and how much of it
    inside = False  # in ``key``'s value, which may hold ``value``
    quoted = (json.dumps(value), f"'{value}'") if value is not None else ()
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            named = _named(line, table)
        except ValueError:  # a key TOML does not allow: a line inside a multi-line string
            continue
        if named is not None:
            if inside:
                break
            path, is_header = named
            table = path if is_header else table
            if key[:len(path)] == path and len(path) > depth:
                found, depth = number, len(path)
                inside = not is_header and bool(quoted)  # an inline table holds it on its line
        if inside and any(q in line for q in quoted):
            return number
    return found


def _located(error: ConfigError, path: Path, text: str) -> ConfigError:
    """``error``, found in the file at ``path``, with the file and line in front."""
    line = _line_of(text, _prefix(path) + (error.key or ()), error.value)
    return ConfigError(f"{_shown(path)}:{f'{line}:' if line else ''} {error.message}", error.key, error.value,
                       path)


def _prefix(path: Path) -> tuple[str, ...]:
    """Where clipcheck's table is in the file: ``[tool.clipcheck]`` or the top."""
    return _OURS if path.name == "pyproject.toml" else ()


_DOTTED = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+"


def _vocabulary(table: dict[str, Any]) -> Vocabulary:
    """``[tool.clipcheck.vocabulary]``: dotted names of in-house callables, by what they do."""
    section = table.get("vocabulary", {})
    if not isinstance(section, dict):
        raise ConfigError("`vocabulary` must be a table", ("vocabulary",))
    unknown = sorted(set(section) - set(VOCABULARY_KEYS))
    if unknown:
        raise _unknown_key(("vocabulary", unknown[0]), list(VOCABULARY_KEYS))
    entries = []
    for key, kind in VOCABULARY_KEYS.items():
        for name in _strings(section, ("vocabulary", key)):
            if not re.fullmatch(_DOTTED, name):
                raise ConfigError(f"`vocabulary.{key}`: {name!r} is not a dotted name "
                                  "such as `mylib.Trainer.backward`", ("vocabulary", key), name)
            entries.append((name, kind))
    return Vocabulary(tuple(entries))


def _selected(table: dict[str, Any], cli: Overrides) -> frozenset[str]:
    """The rules selected: the command line's ``--select`` or the table's (``ALL`` without
    either), extended, less the ignored."""
    if cli.select:
        selected = codes(cli.select, "--select")
    else:
        selected = codes(_strings(table, ("select",)) or ["ALL"], ("select",))
    selected |= codes(_strings(table, ("extend-select",)), ("extend-select",))
    selected |= codes(cli.extend_select, "--extend-select")
    return selected - codes(_strings(table, ("ignore",)), ("ignore",)) - codes(cli.ignore, "--ignore")


def build(root: Path, source: Path | None, table: dict[str, Any], cli: Overrides) -> Settings:
    """Settings from one configuration table (empty for defaults) with the command line on top."""
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise _unknown_key((unknown[0],), KEYS)
    selected = _selected(table, cli)
    exclude = (*_strings(table, ("exclude",)), *_strings(table, ("extend-exclude",)))
    per_file = table.get("per-file-ignores", {})
    if not isinstance(per_file, dict):
        raise ConfigError("`per-file-ignores` must be a table of glob = [rules]", ("per-file-ignores",))
    ignores = tuple((pattern, codes(_strings(per_file, ("per-file-ignores", pattern)),
                                    ("per-file-ignores", pattern))) for pattern in per_file)
    return Settings(root, source, selected, exclude, ignores, _vocabulary(table), _spec(exclude),
                    tuple((_spec([pattern]), rule_codes) for pattern, rule_codes in ignores))


class Resolver:
    """The settings for each checked path, from the nearest configuration file above it
    (cached per folder)."""

    def __init__(self, cli: Overrides, config_file: Path | None = None) -> None:
        self.cli = cli
        self._default = build(Path.cwd(), None, {}, cli)  # first: a bad flag is the flag's error
        self._forced = None if config_file is None else self._settings(config_file.resolve().parent,
                                                                            config_file, True)
        self._by_folder: dict[Path, Settings] = {}
        self._by_folder_name: dict[str, Settings] = {}
        self._cli_excluded = _spec(cli.exclude)  # relative to the current folder, like the paths

    def excluded(self, path: Path) -> bool:
        """Excluded by the command line or by the settings in effect for it."""
        cli = self._cli_excluded is not None and _matches(self._cli_excluded, path, Path.cwd())
        return cli or self.for_path(path).excluded(path)

    def _settings(self, folder: Path, path: Path, forced: bool = False) -> Settings | None:
        """The settings the file at ``path`` makes for ``folder`` (``None``: a pyproject.toml
        without ``[tool.clipcheck]``, unless ``forced`` by ``--config``); its errors name the
        file and line."""
        text = _text(path)
        if path.name == "pyproject.toml" and not forced and not _names_us(text):
            return None
        data = _toml(path, text)
        try:
            table = _table(data, path)
            if table is None and not forced:
                return None
            return build(folder, path, table or {}, self.cli)
        except ConfigError as error:
            if error.key is None:
                raise
            raise _located(error, path, text) from None

    def for_path(self, path: Path | None) -> Settings:
        if self._forced is not None:
            return self._forced
        if path is None:
            path = Path.cwd() / "-"
        absolute = os.path.abspath(path)
        # Asked twice for every file of a tree: its folder's answer is looked up by its name
        # first (``Path`` objects cost more to build and hash than the rest of the run's walk).
        name = absolute if os.path.isdir(absolute) else os.path.dirname(absolute)
        known = self._by_folder_name.get(name)
        if known is not None:
            return known
        known = self._by_folder_name[name] = self._for_folder(Path(name))
        return known

    def _for_folder(self, folder: Path) -> Settings:
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
            settings = self._settings(folder, path) if _holds(path.is_file) else None
            if settings is not None:
                return settings
        return None
