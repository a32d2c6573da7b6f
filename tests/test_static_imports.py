"""The static pass reads framework code as text: it never imports torch or any framework it
models, so it runs (and finds the same mistakes) where none of them is installed."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, run_json

FRAMEWORKS = ("torch", "accelerate", "deepspeed", "lightning", "pytorch_lightning", "lightning_fabric",
              "transformers", "ignite")

# Runs the CLI in a process where importing any of FRAMEWORKS fails, then prints the JSON
# findings and the framework modules that got imported anyway.
BLOCKED_RUN = f"""
import contextlib, io, json, sys
BLOCKED = {FRAMEWORKS!r}

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed here")
        return None

sys.meta_path.insert(0, Blocker())
from clipcheck.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(["check", "--output-format", "json", "fixtures"])
    except SystemExit:
        pass
print(json.dumps({{"findings": json.loads(out.getvalue()),
                  "imported": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}}))
"""


def test_static_pass_imports_no_framework() -> None:
    result = subprocess.run([sys.executable, "-c", BLOCKED_RUN], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["imported"] == []
    _, installed = run_json("fixtures")
    assert report["findings"] == installed


def test_every_framework_module_is_registered() -> None:
    """A framework's module is imported (and its matchers used) only when it is named in
    ``FRAMEWORKS``; each module there registers one framework, and every other module of the
    package is one the recognizer reads directly."""
    from clipcheck.static import frameworks

    folder = ROOT / "clipcheck" / "static" / "frameworks"
    modules = {path.stem for path in folder.glob("*.py")} - {"__init__"}
    read_directly = {"torch", "naming", "custom"}
    assert modules - read_directly == set(frameworks.FRAMEWORKS)
    registered = frameworks.registered()
    assert len(registered) == len(frameworks.FRAMEWORKS)
    assert sorted(type(f).__module__.rsplit(".", 1)[1] for f in registered) == sorted(frameworks.FRAMEWORKS)
