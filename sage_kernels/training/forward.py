"""Host side of the training forward: operands, then one launch of forward_kernel (always with the LSE)."""
from __future__ import annotations

import torch

from .._triton import interpreter_active
from ..device_guard import on_problem_device
from ..problem import AttentionProblem
from .config import FWD_BLOCK_K
from .forward_kernel import forward_kernel
from ..kernels.run import broadcast_strides
from .launch import launch
from .operands import ScoreOperands, score_operands


def launch_forward(p: AttentionProblem, ops: ScoreOperands):
    """Returns (out in p.out_layout, lse (B, Hq, Lq) fp32 natural log, -inf on rows that see no key)."""
    out, out_hnd = p.new_output()
    lse = torch.empty(p.batch, p.heads_q, p.len_q, dtype=torch.float32, device=p.device)
    sc = broadcast_strides(ops.col)[:2]
    launch("forward", forward_kernel, lambda block: (ops.lq_pad // block, p.batch * p.heads_q), (
        ops.q, ops.q_scale, ops.k, ops.k_scale, ops.v, ops.v_scale, ops.col, *sc,
        out_hnd, *out_hnd.stride(), lse, ops.shift,
        p.heads_q, p.heads_q // p.heads_kv, p.len_q, ops.lq_pad, ops.lk_pad, p.len_k - p.len_q, p.head_dim_v,
    ), dict(BN=FWD_BLOCK_K, DP=ops.dp, QK16=ops.qk == "16bit", IS_CAUSAL=p.is_causal, HAS_COL=ops.has_col,
            INTERPRET=interpreter_active()), p.device)
    return out, lse


@on_problem_device
def training_forward(p: AttentionProblem, qk: str):
    return launch_forward(p, score_operands(p, qk))
