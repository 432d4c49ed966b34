"""Training forward: the inference attention kernel launched on `score_operands`, always returning the LSE."""
from __future__ import annotations

import torch

from .. import transforms as T
from .._triton import interpreter_active
from ..capabilities import device_info
from ..kernels.attention import attention_kernel
from ..kernels.configs import launch_config
from ..kernels.prepass import FMT_INT8
from ..problem import AttentionProblem
from .config import FWD_BLOCK_K, FWD_BLOCK_Q
from .operands import ScoreOperands, broadcast_strides, score_operands


def launch_forward(p: AttentionProblem, ops: ScoreOperands):
    """Returns (out in p.out_layout, lse (B, Hq, Lq) fp32 natural log, -inf on rows that see no key)."""
    out, out_hnd = p.new_output()
    lse = torch.empty(p.batch, p.heads_q, p.len_q, dtype=torch.float32, device=p.device)
    dummy = torch.empty(1, dtype=torch.float32, device=p.device)
    cfg = launch_config(device_info(p.device).arch, ops.dp, ops.qk_format, FMT_INT8)
    sc = broadcast_strides(ops.col)
    attention_kernel[(ops.lq_pad // FWD_BLOCK_Q, p.batch * p.heads_q)](
        ops.q, ops.q_scale, dummy, ops.k, ops.k_scale, dummy, ops.v, ops.v_scale, dummy, ops.col,
        out_hnd, lse, ops.shift, dummy, dummy,
        ops.q.stride(0), ops.q.stride(1), ops.q.stride(2),
        ops.k.stride(0), ops.k.stride(1), ops.k.stride(2),
        ops.v.stride(0), ops.v.stride(1), ops.v.stride(2), ops.dp,
        sc[0], sc[1], 0,
        *out_hnd.stride(),
        p.heads_q, p.heads_q // p.heads_kv, p.len_q, ops.lq_pad, ops.lk_pad, p.len_k - p.len_q, 0, p.head_dim_v,
        p.scale * T.LOG2E,
        BM=FWD_BLOCK_Q, BN=FWD_BLOCK_K, DP=ops.dp, QK_FORMAT=ops.qk_format, PV_FORMAT=FMT_INT8,
        IS_CAUSAL=p.is_causal, RETURN_LSE=True, HAS_VMEAN=False, INTERPRET=interpreter_active(),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse


def training_forward(p: AttentionProblem, qk: str):
    return launch_forward(p, score_operands(p, qk))
