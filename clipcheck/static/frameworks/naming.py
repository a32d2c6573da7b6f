"""What a name says when nothing else does: ``opt_d`` is an optimizer, ``lr_scheduler`` is not."""

from __future__ import annotations

import re

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


def name_tokens(name: str) -> list[str]:
    """``opt_d`` -> ``[opt, d]``; ``optimizerG`` -> ``[optimizer, g]``."""
    return [t.lower() for t in _TOKEN_SPLIT.split(name) if t]


def name_says_optimizer(name: str) -> bool:
    tokens = set(name_tokens(name))
    return bool(tokens & _OPTIMIZER_TOKENS) and not tokens & _NOT_OPTIMIZER_TOKENS


def name_says_scaler(name: str) -> bool:
    return bool(set(name_tokens(name)) & _SCALER_TOKENS)


_SETTING_TOKENS = frozenset(
    {"lr", "learning", "rate", "decay", "wd", "eps", "betas", "momentum", "args", "cfg", "config",
     "opt", "opts", "hparams", "params", "kwargs", "options", "settings"}
)


def name_says_setting(name: str) -> bool:
    """``weight_decay``, ``args``, ``cfg.optim``: a name for settings, never for a module."""
    return bool(set(name_tokens(name)) & _SETTING_TOKENS)


def name_says_engine(name: str) -> bool:
    """``model_engine``, ``engine``: a DeepSpeed engine, when nothing shows what it holds."""
    return "engine" in name_tokens(name)


def name_says_accelerator(name: str) -> bool:
    return bool(set(name_tokens(name)) & _ACCELERATOR_TOKENS)
