"""Hugging Face accelerate: what marks the micro-batch on which a prepared optimizer really steps."""

from __future__ import annotations

# ``accelerator.sync_gradients`` (and ``GradientState.sync_gradients``): true only on the
# micro-batch that ends an accumulation window, where prepared optimizers step and zero.
SYNC_FLAGS = frozenset({"sync_gradients"})

# ``accelerator.prepare(model, optimizer, loader, scheduler)`` returns its arguments, wrapped,
# in the same order: each position keeps its kind.
PREPARE_METHODS = frozenset({"prepare"})
