"""The pre-screen is exact: what it skips has no finding when analysed in full, and what it
reduces has the findings of the whole. Checked over every fixture and over generated
programs that mix training code with code that only looks like it."""

from __future__ import annotations

import ast
import os
import random
import subprocess
import sys
from pathlib import Path

import libcst as cst
import pytest
from libcst.metadata import MetadataWrapper, PositionProvider

from clipcheck import notebooks
from clipcheck.engine import analyse_source
from clipcheck.screen import (
    BACKWARD_WORDS,
    CLIP_WORDS,
    EVENT_WORDS,
    FRAMEWORK_MEMBERS,
    GRAD_METHODS,
    HOOK_WORDS,
    SINGLE_WORDS,
    ZERO_WORDS,
    screen,
)
from clipcheck.static.analysis import analyse_text, parse_trusted, positions
from clipcheck.static.frameworks import accelerate, amp, ddp, lightning
from clipcheck.static.frameworks import torch as vocab
from clipcheck.static.recognizer import FREEZE_METHODS, REQUIRES_GRAD
from clipcheck.static.syntax import children, trivia

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted((ROOT / "fixtures").rglob("*.py")) + sorted((ROOT / "examples").rglob("*.py"))


def _program(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return notebooks.program(text).text if path.suffix == ".ipynb" else text


def _same(text: str) -> None:
    """The screened analysis finds exactly what the full analysis finds."""
    full = analyse_text(text, "x.py")
    screened = analyse_source(text, "x.py")
    assert screened == full
    if screen(text, "x.py").text is None:
        assert not full


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_screen_changes_no_finding_of_a_fixture(path: Path) -> None:
    _same(_program(path))


# Pieces of modules: training loops with and without mistakes, helpers that carry events into
# their callers, classes whose methods resolve calls, and code that only mentions the words.
PIECES = [
    "import torch\nfrom torch import nn\n",
    "MAX_NORM = 0.0\n",
    "def clip(model):\n    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)\n",
    "def update(opt):\n    opt.step()\n",
    "def reset(opt):\n    opt.zero_grad()\n",
    "def helper(x):\n    return x * 2\n",
    "def log(step, loss):\n    print('step', step, 'backward done', loss)\n",
    "def train(model, loader, opt):\n    for x, y in loader:\n        loss = model(x).sum()\n"
    "        loss.backward()\n        update(opt)\n        clip(model)\n",
    "def train2(model, loader, opt):\n    for x in loader:\n        reset(opt)\n"
    "        model(x).sum().backward()\n"
    "        helper(x)\n        opt.step()\n",
    "class Trainer:\n    def __init__(self, model):\n        self.model = model\n"
    "        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
    "    def run_batch(self, x):\n        self.model(x).sum().backward()\n        self.optimizer.step()\n"
    "    def unrelated(self):\n        return helper(3)\n",
    "class Model(nn.Module):\n    def forward(self, x):\n        return helper(x)\n"
    "    def step(self):\n        return 1\n",
    "trainer = Trainer(Model())\n",
    "def fit(loader):\n    for batch in loader:\n        trainer.run_batch(batch)\n"
    "        trainer.optimizer.zero_grad()\n",
    "def dead(opt, loss):\n    return\n    opt.step()\n    loss.backward()\n",
    "if False:\n    opt = torch.optim.Adam([])\n",
    "scaler = torch.amp.GradScaler()\n",
    "def amp_loop(model, loader, opt):\n    for x in loader:\n"
    "        scaler.scale(model(x).sum()).backward()\n"
    "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n        scaler.step(opt)\n",
    "params = model.parameters()\n",
    "opt = torch.optim.AdamW(params)\n",
    "torch.nn.utils.clip_grad_norm_(params, 1.0)\n",
    "for p in model.parameters():\n    p.grad = None\n",
    "def note():\n    '''Call optimizer.step() after loss.backward() and scaler.update().'''\n",
    "model = Model(); opt.step()\n",
    "def backward_only(loss):\n    loss.backward()\n",
    "def report(loss):\n    backward_only(loss)\n    return loss.item()\n",
    "def finish(opt, loss):\n    backward_only(loss)\n    opt.step()\n",
    "class Closure:\n    def __call__(self, loss):\n        loss.backward()\n",
    "def closure_step(opt, loss):\n    Closure()(loss)\n    opt.step()\n",
    "def make(weights):\n    return torch.optim.SGD(weights, lr=0.1)\n",
    "def pair(net):\n    ws = net.parameters()\n    return make(ws), make(ws)\n",
    "def shared(layers):\n    group = (layer.weight for layer in layers)\n"
    "    first = torch.optim.SGD(group, lr=0.1)\n    return first, torch.optim.Adam(group)\n",
    "class Holder:\n    def __init__(self, layers):\n        self.group = [l.weight for l in layers], "
    "(l.bias for l in layers)\n"
    "    def build(self):\n        return torch.optim.SGD(self.group[1]), torch.optim.SGD(self.group[1])\n",
    "def count(layers):\n    return sum(p.numel() for p in layers)\n",
]


@pytest.mark.parametrize("seed", range(300))
def test_the_screen_changes_no_finding_of_a_generated_module(seed: int) -> None:
    chosen = random.Random(seed)
    pieces = chosen.sample(PIECES, chosen.randint(1, len(PIECES)))
    if chosen.random() < 0.7:
        pieces.insert(0, PIECES[0])
    _same("\n\n".join(pieces))


# Modules whose findings (or fixes) depend on what a statement elsewhere defines.
DEPENDENT = {
    "an_import_inside_a_helper": """\
import torch

def setup():
    from torch.cuda.amp import GradScaler as S
    return S

def train(model, opt, data):
    s = S()
    for x in data:
        opt.zero_grad()
        s.scale(model(x)).backward()
        opt.step()
        s.update()
""",
    "an_aliased_optimizer_class": """\
from torch.optim import SGD as O

def build(model):
    ps = model.parameters()
    first = O(ps, lr=0.1)
    second = O(ps, lr=0.01)
    return first, second
""",
    "statements_sharing_a_line": """\
import torch
model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
LABELS = ("a",
          "b"); opt.step()
model(torch.ones(2)).sum().backward()
""",
    "a_scaler_stored_by_init": """\
import torch
class T:
    def __init__(self, model):
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1)
        self.amp = torch.cuda.amp.GradScaler()

    def fit(self, data):
        for x in data:
            self.amp.step(self.opt)
""",
    "a_class_shadowed_in_a_function": """\
import pytorch_lightning as pl
import torch

class Base(pl.LightningModule):
    pass

def make_plain():
    class Base:
        pass
    return Base

class M(Base):
    def training_step(self, batch, i):
        loss = self(batch)
        torch.nn.utils.clip_grad_norm_(self.parameters(), 1.0)
        return loss
""",
    "a_docstring_naming_gradscaler": '''\
"""Training loop; the AMP variant with GradScaler lives elsewhere."""
import torch


def train(model, opt, data):
    for x in data:
        opt.zero_grad()
        loss = model(x)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        loss.backward()
        opt.step()
''',
    "a_generator_stored_by_init": """\
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.trainable = backbone.parameters()
        self.n_params = sum(p.numel() for p in self.trainable)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.trainable, lr=1e-4)
""",
    "a_top_level_statement_that_consumes_a_generator": """\
import torch

net = torch.nn.Linear(8, 2)
trainable = filter(lambda p: p.requires_grad, net.parameters())
total = sum(p.numel() for p in trainable)
print(f"training {total} weights")
optimizer = torch.optim.Adam(trainable, lr=3e-4)
""",
    "a_top_level_call_handed_the_parameters": """\
import torch
from monitoring import record_weights

net = torch.nn.Linear(8, 2)
optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
weights = list(net.parameters())
batch = torch.randn(8)
optimizer.zero_grad()
torch.nn.utils.clip_grad_norm_(weights, 0.5)
net(batch).sum().backward()
record_weights(weights)
optimizer.step()
""",
    "a_generator_stored_for_an_optimizer_whose_name_is_not_a_known_word": """\
from torch.optim import RMSprop


class Trainer:
    def __init__(self, net):
        self.net = net
        self.tuned = filter(lambda p: p.requires_grad, net.parameters())
        self.size = sum(p.numel() for p in self.tuned)

    def build(self):
        return RMSprop(self.tuned, lr=1e-3)
""",
    "an_optimizer_imported_under_one_name_in_two_branches": """\
try:
    from turbo_kernels import Turbo as Fast
except ImportError:
    from torch.optim import SGD as Fast


def make(net):
    group = net.parameters()
    main = Fast(group, lr=1e-3)
    warmup = Fast(group, lr=1e-5)
    return main, warmup
""",    "an_exit_at_the_top_level_that_prunes_a_path": """\
import os
import torch

net = torch.nn.Linear(3, 3)
optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
dry_run = os.environ.get("DRY_RUN") == "1"
net(torch.zeros(3)).sum().backward()
if not dry_run:
    raise SystemExit("nothing to do")
if dry_run:
    optimizer.zero_grad()
optimizer.step()
""",
    "a_top_level_call_handed_an_optimizer_a_helper_built": """\
import torch
from training_utils import make_optimizer, snapshot

net = torch.nn.Linear(3, 1)
optimizer = make_optimizer(net)
batch = torch.zeros(3)
net(batch).sum().backward()
optimizer.step()
snapshot(optimizer)
net(batch).sum().backward()
optimizer.step()
""",
    "an_optimizer_class_imported_from_its_module_by_name": """\
from torch.optim import RMSprop


def pair(net):
    weights = net.parameters()
    fast = RMSprop(weights, lr=1e-2)
    slow = RMSprop(weights, lr=1e-4)
    return fast, slow
""",
    "a_generator_expression_handed_to_two_optimizers": """\
import torch


def build(head, lr):
    weights = (layer.weight for layer in head)
    main = torch.optim.AdamW([{"params": weights}], lr=lr)
    warmup = torch.optim.SGD(weights, lr=lr / 10)
    return main, warmup
""",
    "a_generator_expression_handed_through_prepare": """\
import torch


def build(accelerator, encoder, lr):
    blocks = accelerator.prepare(block.weight for block in encoder.blocks)
    main = torch.optim.AdamW(blocks, lr=lr)
    warmup = torch.optim.SGD(blocks, lr=lr / 10)
    return main, warmup
""",
    "an_optimizer_class_bound_with_an_annotation": """\
import torch

Opt: type = torch.optim.AdamW


def build(net):
    weights = net.parameters()
    return Opt(weights, lr=1e-3), Opt(weights, lr=1e-4)
""",
    "optimizer_classes_bound_in_one_tuple": """\
import torch

Fast, Slow = torch.optim.AdamW, torch.optim.SGD


def build(net):
    weights = net.parameters()
    return Fast(weights, lr=1e-3), Slow(weights, lr=1e-4)
""",
    "a_frozen_module_whose_optimizer_is_built_in_another_method": """\
import torch
import torch.nn.functional as F


def optimizer_for(net, lr=1e-3):
    return torch.optim.Adam(net.parameters(), lr=lr)


class ActorCritic:
    def __init__(self, actor, critic, probe):
        self.actor, self.critic, self.probe = actor, critic, probe
        self.actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-4)
        self.critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)

    def add_probe(self):
        self.probe_opt = optimizer_for(self.probe)

    def learn(self, state, action, target):
        self.actor_opt.zero_grad()
        self.critic_opt.zero_grad()
        self.probe.requires_grad_(False)
        (-self.critic(state, self.actor(state)).mean()).backward()
        self.actor_opt.step()
        F.mse_loss(self.critic(state, action), target).backward()
        self.critic_opt.step()
""",
    "a_frozen_module_whose_optimizer_is_built_at_the_top_level": """\
import torch
import torch.nn.functional as F
from torch import nn


def optimizer_for(net, lr=1e-3):
    return torch.optim.Adam(net.parameters(), lr=lr)


probe = nn.Linear(16, 4)
probe_opt = optimizer_for(probe)


def learn(actor, critic, batches):
    actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-4)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    for state, action, target in batches:
        actor_opt.zero_grad()
        critic_opt.zero_grad()
        probe.requires_grad = False
        (-critic(state, actor(state)).mean()).backward()
        actor_opt.step()
        F.mse_loss(critic(state, action), target).backward()
        critic_opt.step()
""",
    "an_optimizer_class_bound_to_a_shorter_name": """\
import torch

Opt = torch.optim.SGD


def build(net):
    weights = net.parameters()
    first = Opt(weights, lr=0.1)
    second = Opt(weights, lr=0.01)
    return first, second
""",
}


@pytest.mark.parametrize("name", sorted(DEPENDENT))
def test_the_screen_keeps_what_findings_depend_on(name: str) -> None:
    _same(DEPENDENT[name])


def test_the_screen_skips_code_that_only_mentions_training() -> None:
    text = "\n\n".join(PIECES[i] for i in (0, 5, 6, 21))
    assert screen(text, "x.py").text is None


def test_the_screen_leaves_out_definitions_that_cannot_matter() -> None:
    text = "\n\n".join(PIECES[i] for i in (0, 5, 6, 3, 7, 2, 1))
    kept = screen(text, "x.py").text
    assert kept is not None and "def log" not in kept and "def update" in kept and "MAX_NORM = 0.0" in kept
    assert kept.count("\n") == text.count("\n")


def test_the_screen_leaves_out_callers_whose_helpers_cannot_make_a_finding() -> None:
    """A caller is kept for the kinds of event it and its helpers hold together, not for
    calling a helper that holds one: a backward alone makes no finding."""
    text = ("import torch\n\n\ndef backward_only(loss):\n    loss.backward()\n\n\n"
            "def report(loss):\n    backward_only(loss)\n    return loss.item()\n\n\n"
            "def train(opt, loss):\n    backward_only(loss)\n    opt.step()\n")
    kept = screen(text, "x.py").text
    assert kept is not None and "def report" not in kept
    assert "def train" in kept and "def backward_only" in kept


def test_the_screen_reports_syntax_errors_where_cpython_does() -> None:
    found = analyse_source("import os\n\ndef f(:\n    pass\n", "x.py")
    assert [(f.code, f.line, f.column) for f in found] == [("CC000", 3, 7)]


# Texts CPython's parser accepts and its compiler refuses: Python runs none of them.
COMPILER_ERRORS = [
    "import torch\n\nreturn 3\n",
    "for batch in loader:\n    loss.backward()\n    opt.step()\nbreak\n",
    "x = 1\nfrom __future__ import annotations\n",
    "nonlocal total\n",
    "def train(opt):\n    opt.step()\n    global opt\n",
    "await loader.next()\n",
    "async def batches():\n    yield 1\n    return 2\n",
]


@pytest.mark.parametrize("text", COMPILER_ERRORS)
def test_errors_only_the_compiler_finds_are_reported_where_cpython_puts_them(text: str) -> None:
    ast.parse(text)  # the parser accepts it
    with pytest.raises(SyntaxError) as refused:
        compile(text, "x.py", "exec", dont_inherit=True)
    found = analyse_source(text, "x.py")
    assert [(f.code, f.line, f.column, f.message) for f in found] == [
        ("CC000", refused.value.lineno, refused.value.offset, f"syntax error: {refused.value.msg}")]


def test_the_screen_reads_the_names_of_asserts_under_python_o() -> None:
    """``python -O`` drops asserts from compiled code: the screen compiles without that."""
    text = ("import torch\n\n\ndef check(model):\n"
            "    assert torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.0) >= 0\n")
    script = ("from clipcheck.engine import analyse_source\n"
              f"print([f.code for f in analyse_source({text!r}, 'x.py')])\n")
    run = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.stdout.strip() == "['CC301']"


def test_the_words_cover_the_vocabulary() -> None:
    clips = {q.rpartition(".")[2] for q in vocab.CLIP_FUNCTIONS} | set(vocab.CLIP_METHODS_WITH_PARAMETERS)
    assert clips | set(vocab.CLIP_METHODS_ON_MODULE) | {lightning.CLIP_GRADIENTS_METHOD} <= CLIP_WORDS
    assert ddp.ON_MODULE | ddp.ON_ARGUMENT | {accelerate.UNSCALE_METHOD} <= SINGLE_WORDS
    assert lightning.TRAINER_CLIP_KEYWORDS <= SINGLE_WORDS
    assert vocab.BACKWARD_METHODS == BACKWARD_WORDS and "zero_grad" in ZERO_WORDS
    assert {q.rpartition(".")[2] for q in vocab.BACKWARD_FUNCTIONS} <= BACKWARD_WORDS
    assert lightning.PER_BATCH_METHODS | (lightning.PER_BATCH_HOOKS - BACKWARD_WORDS) <= HOOK_WORDS
    assert vocab.HAND_CLIP_METHODS | vocab.HAND_ZERO_METHODS | vocab.HAND_WRITE_METHODS <= GRAD_METHODS
    amp_words = {amp.SCALE_METHOD} | amp.SCALER_METHODS
    assert FREEZE_METHODS | {REQUIRES_GRAD} | amp_words <= EVENT_WORDS | SINGLE_WORDS | {"step"}
    assert lightning.AUTOMATIC_OPTIMIZATION in FRAMEWORK_MEMBERS


SYNTAX = """
from a import (b as c, d)
from e import *
@decorator(x=1)
async def f(p, /, q: int = 2, *args, r, **kwargs) -> None:
    global g
    async with h() as (i, j), k:
        async for m in n:
            await o
    x = f"{p!r}" f"{q:>{r}}" f"{s=}" f"{t:.2f}"
    y = [z for z in w if z] or {u: v for u, v in w} and (lambda a=1: a)(*x, **y)
    match y:
        case [1, *rest] | {"k": _} if rest:
            pass
        case Point(x=0) as p:
            raise ValueError from None
    try:
        del y[1:2, ::3]
    except* (A, B) as e:
        nonlocal_ = yield from e
    finally:
        return (yield)
"""


@pytest.mark.parametrize("path", [*FIXTURES[::7], None], ids=lambda p: p.name if p else "syntax")
def test_children_are_libcsts_own(path: Path | None) -> None:
    stack: list[cst.CSTNode] = [cst.parse_module(_program(path) if path else SYNTAX)]
    while stack:
        node = stack.pop()
        every = list(node.children)
        expected = [child for child in every if not trivia(type(child))]
        found = children(node)
        assert found == expected and all(a is b for a, b in zip(found, expected, strict=True))
        for child in every:  # what is skipped holds nothing but more of the same
            if trivia(type(child)):
                assert all(trivia(type(n)) for n in _descendants(child)), child
        stack.extend(every)


def _descendants(node: cst.CSTNode) -> list[cst.CSTNode]:
    return [d for child in node.children for d in (child, *_descendants(child))]


def test_a_file_without_training_code_never_imports_libcst(tmp_path: Path) -> None:
    plain = tmp_path / "plain.py"
    plain.write_text("import os\n\n\ndef add(a, b):\n    return a + b  # no step, no backward\n")
    script = ("import sys\nfrom clipcheck.cli import main\n"
              f"sys.argv = ['clipcheck', 'check', '--no-cache', '--jobs', '1', {str(plain)!r}]\n"
              "try:\n    main()\nexcept SystemExit as done:\n    assert done.code == 0, done.code\n"
              "assert 'libcst' not in sys.modules, 'the parent imported libcst'\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    worker = ("import sys\nfrom clipcheck.engine import analyse_source\n"
              f"assert analyse_source(open({str(plain)!r}).read(), 'plain.py') == []\n"
              "assert 'libcst' not in sys.modules, 'the analysis imported libcst'\n")
    subprocess.run([sys.executable, "-c", worker], check=True, cwd=tmp_path)


@pytest.mark.parametrize("path", [*FIXTURES[::5], None], ids=lambda p: p.name if p else "syntax")
def test_the_trusted_parse_builds_libcsts_own_tree(path: Path | None) -> None:
    """Nodes built without LibCST's checks are the nodes it builds with them, and the checks
    are back on afterwards."""
    text = _program(path) if path else SYNTAX
    trusted = parse_trusted(text)
    assert trusted.deep_equals(cst.parse_module(text)) and trusted.code == text
    with pytest.raises(cst.CSTValidationError):
        cst.Name("not a name")


@pytest.mark.parametrize("path", [*FIXTURES[::5], None], ids=lambda p: p.name if p else "syntax")
def test_positions_are_libcsts_own(path: Path | None) -> None:
    """The positions computed without LibCST's metadata wrapper are the ones it resolves."""
    module = cst.parse_module(_program(path) if path else SYNTAX)
    resolved = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    assert dict(positions(module)) == dict(resolved)
