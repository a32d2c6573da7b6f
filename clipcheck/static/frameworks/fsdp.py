"""FSDP: a model wrapped in ``FullyShardedDataParallel`` (FSDP1) holds flat, sharded
parameters; ``torch.nn.utils.clip_grad_norm_`` on them computes each rank's local norm only,
so ranks clip by different factors. FSDP1's own ``model.clip_grad_norm_`` reduces the norm
across ranks. FSDP2's ``fully_shard`` uses DTensors, on which the torch function is right.
"""

from __future__ import annotations

import libcst as cst

from clipcheck.static.frameworks import Framework, register
from clipcheck.static.names import ModuleNames

FSDP1_CLASSES = frozenset({
    "torch.distributed.fsdp.FullyShardedDataParallel",
    "torch.distributed.fsdp.fully_sharded_data_parallel.FullyShardedDataParallel",
})
WRAPPER = "fsdp1"
# A sharding strategy that keeps whole parameters on every rank: the local norm is the norm.
UNSHARDED = "NO_SHARD"


@register
class Fsdp(Framework):
    def wrapper(self, names: ModuleNames, value: cst.BaseExpression) -> str:
        if not (isinstance(value, cst.Call) and names.is_imported(value.func)
                and names.qualify(value.func) in FSDP1_CLASSES):
            return ""
        unsharded = any(isinstance(a.value, (cst.Attribute, cst.Name)) and (
            (a.value.attr if isinstance(a.value, cst.Attribute) else a.value).value == UNSHARDED)
            for a in value.args)
        return "" if unsharded else WRAPPER
