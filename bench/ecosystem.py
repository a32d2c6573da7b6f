"""The ecosystem check: clipcheck over pinned public training repositories, every finding
compared with a committed verdict.

    python bench/ecosystem.py [--mirrors DIR] [--work DIR] [--repo NAME ...] [--write-new] [--prune]

Each repository in ``bench/ecosystem_repos.toml`` is read from a local git snapshot (get one
with the ``fetch`` tool, or ``git clone --mirror``: ``<mirrors>/<owner>+<name>/repo``) and its
Python files at the pinned commit are extracted with ``git archive`` into ``--work`` (outside
this repository; blobs missing from a partial snapshot are left out and counted). clipcheck runs
over each tree and every finding is looked up in ``bench/ecosystem_verdicts.csv`` (one row per
finding: repo, path, line, rule, TRUE or FALSE, a one-line reason).

It prints per-repository counts, the findings still to triage, the verdict rows that no longer
fire, and the precision over triaged findings. A repository without a snapshot is skipped
with a note (its verdict rows are neither reported gone nor pruned) and named again in the
summary. Exit status 0 only when every repository was checked, every finding is triaged and
no verdict row has disappeared. ``--write-new`` appends untriaged findings to the verdicts file
with verdict ``?`` so they can be filled in; ``--prune`` drops the rows of findings that are
gone (say why in the commit: a fixed false alarm, or a lost true finding).
Not part of CI: it needs the snapshots.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tomllib

BENCH = Path(__file__).resolve().parent
REPOS_FILE = BENCH / "ecosystem_repos.toml"
VERDICTS_FILE = BENCH / "ecosystem_verdicts.csv"
FIELDS = ("repo", "path", "line", "rule", "verdict", "reason")
VERDICTS = ("TRUE", "FALSE")


@dataclass(frozen=True)
class Repo:
    name: str       # owner/name
    commit: str
    under: str = ""  # only this folder of the repository

    @property
    def folder(self) -> str:
        return self.name.replace("/", "+")


Key = tuple[str, str, int, str]  # repo, path, line, rule


def load_repos() -> list[Repo]:
    data = tomllib.loads(REPOS_FILE.read_text(encoding="utf-8"))
    return [Repo(r["name"], r["commit"], r.get("under", "")) for r in data["repo"]]


def load_verdicts() -> dict[Key, dict[str, str]]:
    if not VERDICTS_FILE.exists():
        return {}
    with VERDICTS_FILE.open(newline="", encoding="utf-8") as handle:
        return {(r["repo"], r["path"], int(r["line"]), r["rule"]): r for r in csv.DictReader(handle)}


def git(repo_dir: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["git", "--git-dir", str(repo_dir), *args], input=data,
                          capture_output=True, check=True).stdout


def snapshot(repo: Repo, mirrors: Path) -> Path:
    """Where the repository's git snapshot should be (it may be absent)."""
    return mirrors / repo.folder / "repo"


def extract(repo: Repo, git_dir: Path, work: Path) -> tuple[Path, int]:
    """The repository's Python files at its commit under ``work``; the count of missing blobs."""
    target = work / repo.folder
    stamp = target / ".clipcheck-commit"
    if stamp.exists() and stamp.read_text() == repo.commit:
        return target, int((target / ".clipcheck-missing").read_text())
    subprocess.run(["rm", "-rf", str(target)], check=True)
    target.mkdir(parents=True)
    spec = f"{repo.under.rstrip('/')}/" if repo.under else ""
    listing = git(git_dir, "ls-tree", "-r", "-z", repo.commit, "--", spec or ".")
    blobs = {}
    for entry in listing.split(b"\0"):
        if not entry:
            continue
        meta, path = entry.split(b"\t", 1)
        _mode, kind, sha = meta.split()
        if kind == b"blob" and path.endswith(b".py"):
            blobs[sha.decode()] = path.decode()
    checked = git(git_dir, "cat-file", "--batch-check", data="\n".join(blobs).encode() + b"\n")
    missing = [blobs[line.split()[0]] for line in checked.decode().splitlines() if line.endswith("missing")]
    pathspecs = [f":(glob){spec}**/*.py", *(f":(exclude,literal){p}" for p in missing)]
    archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", repo.commit, "--", *pathspecs],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    (target / ".clipcheck-missing").write_text(str(len(missing)))
    stamp.write_text(repo.commit)
    return target, len(missing)


def run_clipcheck(tree: Path) -> list[dict[str, object]]:
    result = subprocess.run([sys.executable, "-m", "clipcheck", "check", "--output-format", "json", "."],
                            cwd=tree, capture_output=True, text=True, check=False)
    if result.returncode not in (0, 1, 2):
        raise SystemExit(f"clipcheck failed on {tree}:\n{result.stderr}")
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipcheck-ecosystem"))
    parser.add_argument("--repo", action="append", default=[], help="only these (owner/name)")
    parser.add_argument("--write-new", action="store_true", help="append untriaged findings as '?'")
    parser.add_argument("--prune", action="store_true", help="drop verdict rows of findings that are gone")
    args = parser.parse_args(argv)

    repos = [r for r in load_repos() if not args.repo or r.name in args.repo]
    verdicts = load_verdicts()
    seen: set[Key] = set()
    new: list[tuple[Key, str]] = []
    unanalysable: list[str] = []
    totals = {"TRUE": 0, "FALSE": 0}
    header = ("repository", "files", "findings", "true", "false", "new", "seconds")
    print("{:<36} {:>6} {:>8} {:>5} {:>5} {:>4} {:>8}".format(*header))
    skipped: list[Repo] = []
    for repo in repos:
        git_dir = snapshot(repo, args.mirrors)
        if not git_dir.exists():
            print(f"{repo.name:<36} skipped: no snapshot at {git_dir} (fetch github:{repo.name})")
            skipped.append(repo)
            continue
        tree, missing = extract(repo, git_dir, args.work)
        files = sum(1 for _ in tree.rglob("*.py"))
        started = time.perf_counter()
        findings = run_clipcheck(tree)
        elapsed = time.perf_counter() - started
        counts = {"TRUE": 0, "FALSE": 0, "new": 0}
        for f in findings:
            path = str(f["path"]).removeprefix("./")
            if f["code"] == "CC000":
                unanalysable.append(f"{repo.name}: {path}: {f['message']}")
                continue
            key = (repo.name, path, int(f["line"]), str(f["rule"]))  # type: ignore[call-overload]
            seen.add(key)
            verdict = verdicts.get(key, {}).get("verdict", "")
            if verdict in VERDICTS:
                counts[verdict] += 1
            else:
                counts["new"] += 1
                if key not in verdicts:
                    new.append((key, str(f["message"])))
        for verdict in VERDICTS:
            totals[verdict] += counts[verdict]
        note = f"  ({missing} files missing from the snapshot)" if missing else ""
        print(f"{repo.name:<36} {files:>6} {len(findings):>8} {counts['TRUE']:>5} {counts['FALSE']:>5} "
              f"{counts['new']:>4} {elapsed:>8.1f}{note}")

    checked = {r.name for r in repos if r not in skipped}
    gone = [k for k in verdicts if k[0] in checked and k not in seen]
    untriaged = [k for k in seen if verdicts.get(k, {}).get("verdict") not in VERDICTS]
    for key, message in new:
        print(f"\nNEW {':'.join(map(str, key))}\n    {message}")
    for key in sorted(untriaged):
        if all(key != k for k, _ in new):
            print(f"UNTRIAGED {':'.join(map(str, key))}")
    for key in sorted(gone):
        print(f"GONE {':'.join(map(str, key))} (was {verdicts[key]['verdict']}: {verdicts[key]['reason']})")
    for line in unanalysable:
        print(f"CC000 {line}")
    triaged = totals["TRUE"] + totals["FALSE"]
    precision = f"{totals['TRUE'] / triaged:.0%}" if triaged else "n/a"
    print(f"\n{totals['TRUE']} true, {totals['FALSE']} false, {len(untriaged)} untriaged, "
          f"{len(gone)} gone; precision {precision}")
    if skipped:
        print(f"{len(skipped)} of {len(repos)} repositories skipped (no snapshot): "
              + ", ".join(r.name for r in skipped))
    if args.write_new or args.prune:
        rows = {k: v for k, v in verdicts.items() if not (args.prune and k in gone)}
        if args.write_new:
            rows.update({k: dict(zip(FIELDS, [*map(str, k), "?", ""], strict=True)) for k, _ in new})
        with VERDICTS_FILE.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, FIELDS, quoting=csv.QUOTE_MINIMAL, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows[k] for k in sorted(rows))
    return 0 if not untriaged and not gone and not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
