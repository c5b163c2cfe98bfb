"""Multiply-accumulate counts of the real modules, by running them under torch's FLOP counter.

Counting what actually executes (rather than a formula per layer) keeps the figures honest
when the fast path changes the computation, e.g. the masker's folded tail. torch's counter
knows matmuls, convolutions and the CUDA SDPA kernels but not SDPA's CPU kernel; that one
is added here so that attention is never silently left out on CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


CPU_ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def count_macs(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """MACs (= FLOPs / 2, as the counter counts a multiply-add as 2) of one call of `fn`,
    in total and per aten op."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    per_op = {str(op).split(".")[-1]: n // 2 for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return counter.get_total_flops() // 2, per_op
