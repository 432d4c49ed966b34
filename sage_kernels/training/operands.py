"""The forward's score and V operands, built the same way for the forward launch and for the backward's
recomputation (bit-identical, so the backward's P = exp(S - LSE) is exactly normalised)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import transforms as T
from ..kernels import run as kernel_run
from ..kernels.prepass import FMT_FP4_VALUES, FMT_INT8, prep_v_kernel
from ..problem import AttentionProblem
from .config import FWD_BLOCK_K, FWD_BLOCK_Q, INT8_FORWARD


@dataclass
class ScoreOperands:
    qk: str  # "int8" | "16bit"
    q: torch.Tensor  # int8 codes or input-dtype values, (B, Hq, Lq_pad, DP), zero padded
    q_scale: torch.Tensor  # int8: fp32 (B, Hq, Lq_pad), includes sm_scale*log2(e)/rotation; 16bit: (1,) sm_scale*log2(e)
    k: torch.Tensor  # (B, Hk, Lk_pad, DP), like q (int8: smoothed K)
    k_scale: torch.Tensor  # int8: fp32 (B, Hk, Lk_pad); 16bit: unused
    v: torch.Tensor  # int8 codes (B, Hk, DP, Lk_pad), per channel within FWD_BLOCK_K keys
    v_scale: torch.Tensor  # fp32 (B, Hk, Lk_pad / FWD_BLOCK_K, DP)
    shift: torch.Tensor  # fp32 (B, Hq, Lq_pad): natural-log row offset the K smoothing removed (0 for 16bit)
    col: torch.Tensor  # fp32 (B|1, Hq|1, 1, Lk_pad): log2(e)*mask, -inf on padded keys
    dp: int
    lq_pad: int
    lk_pad: int

    @property
    def qk_format(self) -> int:
        # The inference kernel's "bf16 values" QK path is a plain 16-bit dot times a scalar: exactly 16bit mode.
        return FMT_INT8 if self.qk == "int8" else FMT_FP4_VALUES


def _pad(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, cols - x.shape[-1], 0, rows - x.shape[-2])).contiguous()


def quantize_channels(x: torch.Tensor, l_pad: int, dp: int, block: int, mean: torch.Tensor | None = None):
    """INT8 per channel within blocks of `block` rows of x (B, H, L, D) (minus `mean` (B, H, D) fp32 when given).
    Returns codes (B, H, DP, L_pad) with rows contiguous and scales (B, H, L_pad / block, DP)."""
    b, h, l, d = x.shape
    codes = torch.empty(b, h, dp, l_pad, dtype=torch.int8, device=x.device)
    scale = torch.empty(b, h, l_pad // block, dp, dtype=torch.float32, device=x.device)
    mean_buf = torch.nn.functional.pad(mean, (0, dp - d)).contiguous() if mean is not None else scale
    prep_v_kernel[(l_pad // block, b * h)](
        x, *x.stride(), mean_buf, scale, codes, scale, scale, h, l, l_pad, d,
        BN=block, DP=dp, FORMAT=FMT_INT8, SUB_MEAN=mean is not None,
    )
    return codes, scale


def score_operands(p: AttentionProblem, qk: str) -> ScoreOperands:
    dp = T.padded_head_dim(max(p.head_dim, p.head_dim_v))
    lq_pad = -(-max(p.len_q, 1) // FWD_BLOCK_Q) * FWD_BLOCK_Q
    lk_pad = -(-max(p.len_k, 1) // FWD_BLOCK_K) * FWD_BLOCK_K
    col = T.column_bias(None, p.k, p.key_bias, p.scale, lk_pad, p.heads_q)
    if qk == "int8":
        ops = kernel_run.prepare(p, "int8", INT8_FORWARD, True, False)
        return ScoreOperands(qk, ops.q, ops.q_scale, ops.k, ops.k_scale, ops.v, ops.v_scale, ops.shift, col,
                             dp, lq_pad, lk_pad)
    v, v_scale = quantize_channels(p.v, lk_pad, dp, FWD_BLOCK_K)
    q_scale = torch.tensor([p.scale * T.LOG2E], dtype=torch.float32, device=p.device)
    shift = torch.zeros(p.batch, p.heads_q, lq_pad, dtype=torch.float32, device=p.device)
    return ScoreOperands(qk, _pad(p.q, lq_pad, dp), q_scale, _pad(p.k, lk_pad, dp), q_scale, v, v_scale, shift, col,
                         dp, lq_pad, lk_pad)


def broadcast_strides(col: torch.Tensor) -> tuple[int, int]:
    """(batch, head) strides of the column table, 0 where it broadcasts."""
    return tuple(col.stride(i) if col.shape[i] > 1 else 0 for i in range(2))

