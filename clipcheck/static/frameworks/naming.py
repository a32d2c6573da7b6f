"""What a name says when nothing else does: ``opt_d`` is an optimizer, ``lr_scheduler`` is not."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

_OPTIMIZER_TOKENS = frozenset(
    {"opt", "optim", "optimizer", "optimiser", "optimizers", "optimisers", "opts", "optims"}
)
_NOT_OPTIMIZER_TOKENS = frozenset(
    {"sched", "scheduler", "schedulers", "lr", "env", "envs", "progress", "pbar", "warmup",
     "ema", "swa", "option", "options", "args", "cfg", "config"}
)
_SCALER_TOKENS = frozenset({"scaler", "grad_scaler", "gradscaler"})
_ACCELERATOR_TOKENS = frozenset({"accelerator"})
_TOKEN_SPLIT = re.compile(r"[_\d]+|(?<=[a-z])(?=[A-Z])")


# Names repeat across a file and a run: each is split once (the cache is bounded).
@functools.lru_cache(maxsize=1 << 16)
def name_tokens(name: str) -> frozenset[str]:
    """``opt_d`` -> ``{opt, d}``; ``optimizerG`` -> ``{optimizer, g}``."""
    return frozenset(t.lower() for t in _TOKEN_SPLIT.split(name) if t)


def name_says_optimizer(name: str) -> bool:
    tokens = name_tokens(name)
    return bool(tokens & _OPTIMIZER_TOKENS) and not tokens & _NOT_OPTIMIZER_TOKENS


def name_says_scaler(name: str) -> bool:
    return bool(name_tokens(name) & _SCALER_TOKENS)


def any_says_scaler(names: Iterable[str]) -> bool:
    """Whether one of ``names`` says scaler. Every scaler word contains "scaler", so one
    substring test rules out nearly every name of a file before it is split into words."""
    return any(name_says_scaler(n) for n in names if "scaler" in n.lower())


_SETTING_TOKENS = frozenset(
    {"lr", "learning", "rate", "decay", "wd", "eps", "betas", "momentum", "args", "cfg", "config",
     "opt", "opts", "hparams", "params", "kwargs", "options", "settings"}
)


def name_says_setting(name: str) -> bool:
    """``weight_decay``, ``args``, ``cfg.optim``: a name for settings, never for a module."""
    return bool(name_tokens(name) & _SETTING_TOKENS)


def name_says_engine(name: str) -> bool:
    """``model_engine``, ``engine``: a DeepSpeed engine, when nothing shows what it holds."""
    return "engine" in name_tokens(name)


def name_says_accelerator(name: str) -> bool:
    return bool(name_tokens(name) & _ACCELERATOR_TOKENS)


# Words of class names that make an optimizer (``ScheduleFreeAdamW``, ``FusedLamb``,
# ``OptimWrapper``) or a scheduler (``CosineAnnealingLR``, ``ReduceOnPlateauMomentum``, a
# pipeline ``ScheduleGPipe``). An optimizer word wins: a name that merely contains "schedule"
# is not enough, and neither is a package path.
OPTIMIZER_WORDS = frozenset({
    "adam", "adamw", "adamax", "nadam", "radam", "sgd", "asgd", "adagrad", "adadelta", "rmsprop",
    "rprop", "lbfgs", "lamb", "lars", "lion", "adafactor", "adan", "sophia", "prodigy", "muon",
    "shampoo", "novograd", "ranger", "lookahead", "optimizer", "optimiser", "optim",
})
_SCHEDULER_WORDS = frozenset({
    "scheduler", "schedule", "lr", "swalr", "momentum", "warmup", "plateau", "annealing",
})
_CLASS_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|_|$)|[A-Z]?[a-z]+|\d+")


@functools.lru_cache(maxsize=1 << 16)
def class_words(name: str) -> frozenset[str]:
    """``ScheduleFreeAdamW`` -> schedule, free, adam, w; ``SWALR`` -> swalr."""
    return frozenset(w.lower() for w in _CLASS_WORDS.findall(name))


def is_optimizer_class(qualified: str) -> bool:
    """``torch.optim.AdamW``, ``bitsandbytes.optim.AdamW8bit``, ``apex.optimizers.FusedAdam``,
    ``schedulefree.AdamWScheduleFree``; not ``torch.optim.lr_scheduler.StepLR``."""
    parts = qualified.split(".")
    name = parts[-1]
    if not name[:1].isupper() or name in {"Optimizer", "AveragedModel"}:
        return False
    words = class_words(name)
    if words & OPTIMIZER_WORDS:
        return True
    if is_scheduler_class(qualified):
        return False
    return len(parts) >= 2 and any(p in {"optim", "optimizers", "optimizer"} for p in parts[:-1])


def is_scheduler_class(qualified: str) -> bool:
    parts = qualified.split(".")
    words = class_words(parts[-1])
    if words & OPTIMIZER_WORDS:
        return False
    return bool(words & _SCHEDULER_WORDS) or any("schedul" in p for p in parts[:-1])


def is_scaler_class(qualified: str) -> bool:
    return qualified.split(".")[-1] in {"GradScaler", "ShardedGradScaler"}
