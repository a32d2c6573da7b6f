"""Access to the rule pages (``rules/*.md``), shipped in the wheel as ``clipcheck/docs``."""

from __future__ import annotations

from pathlib import Path

from clipcheck.catalogue import RuleInfo

_PACKAGE = Path(__file__).resolve().parent
# In a wheel the pages are copied into the package; in a source checkout they stay at the top.
DOC_DIRS = (_PACKAGE / "docs", _PACKAGE.parent / "rules")


def rule_doc_path(rule: RuleInfo) -> Path:
    for directory in DOC_DIRS:
        page = directory / f"{rule.name}.md"
        if page.is_file():
            return page
    raise FileNotFoundError(f"no documentation page for {rule.code} {rule.name}")


def rule_doc(rule: RuleInfo) -> str:
    return rule_doc_path(rule).read_text(encoding="utf-8")
