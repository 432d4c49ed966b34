"""INT8 / 16-bit operands of the training kernels, built the same way for the forward and for the backward's
recomputation (so the backward's P = exp(S - LSE) is the forward's normalised P, bit for bit)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import transforms as T
from .._triton import interpreter_active
from ..kernels.means import key_mean
from ..launch import fast
from ..problem import AttentionProblem
from .config import FWD_BLOCK_K, FWD_BLOCK_Q, compute_dtype, rotates
from .prepass import quantize_kernel


@dataclass
class ScoreOperands:
    qk: str  # "int8" | "16bit"
    q: torch.Tensor  # int8 codes or input-dtype values, (B, Hq, Lq_pad, DP), zero padded
    q_scale: torch.Tensor  # int8: fp32 (B, Hq, Lq_pad) incl. sm_scale*log2(e)/DP (rotation); 16bit: [sm_scale*log2(e)]
    k: torch.Tensor  # (B, Hk, Lk_pad, DP) like q (int8: smoothed and rotated K)
    k_scale: torch.Tensor  # int8: fp32 (B, Hk, Lk_pad); 16bit: unused (= q_scale)
    v: torch.Tensor  # int8 codes (B, Hk, DP, Lk_pad), per channel within FWD_BLOCK_K keys
    v_scale: torch.Tensor  # fp32 (B, Hk, Lk_pad / FWD_BLOCK_K, DP)
    shift: torch.Tensor  # fp32 (B, Hq, Lq_pad): natural-log row offset the K smoothing removed (0 for 16bit)
    col: torch.Tensor  # fp32 (B|1, Hq|1, 1, Lk_pad): log2(e)*mask, -inf on padded keys
    has_col: bool  # False when col is all zero (no mask, no padded key)
    dp: int
    lq_pad: int
    lk_pad: int
    kbar: torch.Tensor | None = None  # int8: the fp32 key means (B, Hk, D) K was smoothed with (the backward's too)


def quantize(x: torch.Tensor, l_pad: int, dp: int, block: int, *, per_channel: bool, mean=None, rotation=None,
             row_factor: float = 1.0, shift_keys=None, kv_group: int = 1, sm_scale: float = 1.0):
    """INT8 of x (B, H, L, D) (minus `mean` (B, H|1, D) fp32, then times `rotation`), per row or per channel within
    blocks of `block` rows. Returns (codes, scales, shift): shift (B, H, L_pad) = sm_scale * x . k̄ when
    `shift_keys` (the key means (B, Hk, D), head h reading h // kv_group) is given, else None."""
    b, h, l, d = x.shape
    dev = x.device
    x = x if x.stride(3) == 1 else x.contiguous()  # the shared tile loader needs unit stride along D
    if per_channel:
        codes = torch.empty(b, h, dp, l_pad, dtype=torch.int8, device=dev)
        scale = torch.empty(b, h, l_pad // block, dp, dtype=torch.float32, device=dev)
    else:
        codes = torch.empty(b, h, l_pad, dp, dtype=torch.int8, device=dev)
        scale = torch.empty(b, h, l_pad, dtype=torch.float32, device=dev)
    pad = lambda t: torch.nn.functional.pad(t.to(torch.float32), (0, dp - d)).contiguous()  # noqa: E731
    mean_buf = pad(mean) if mean is not None else scale
    m_strides = (mean_buf.stride(0), mean_buf.stride(1) if mean_buf.shape[1] > 1 else 0) if mean is not None else (0, 0)
    kbar = pad(shift_keys) if shift_keys is not None else scale
    shift = torch.empty(b, h, l_pad, dtype=torch.float32, device=dev) if shift_keys is not None else None
    fast(quantize_kernel)[(l_pad // block, b * h)](
        x, *x.stride()[:3], mean_buf, *m_strides, rotation if rotation is not None else scale,
        kbar, *((kbar.stride(0), kbar.stride(1)) if shift_keys is not None else (0, 0)),
        shift if shift is not None else scale, codes, scale,
        h, l, l_pad, d, kv_group, sm_scale, row_factor,
        BT=block, DP=dp, PER_CHANNEL=per_channel, SUB_MEAN=mean is not None, ROTATE=rotation is not None,
        WRITE_SHIFT=shift_keys is not None, INTERPRET=interpreter_active(),
    )
    return codes, scale, shift


def _pad16(x: torch.Tensor, rows: int, dp: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, dp - x.shape[-1], 0, rows - x.shape[-2])).contiguous()


def score_operands(p: AttentionProblem, qk: str) -> ScoreOperands:
    dp = T.padded_head_dim(max(p.head_dim, p.head_dim_v))
    lq_pad = -(-max(p.len_q, 1) // FWD_BLOCK_Q) * FWD_BLOCK_Q
    lk_pad = -(-max(p.len_k, 1) // FWD_BLOCK_K) * FWD_BLOCK_K
    col = T.column_bias(None, p.k, p.key_bias, p.scale, lk_pad, p.heads_q)
    has_col = p.key_bias is not None or p.len_k != lk_pad
    v, v_scale, _ = quantize(p.v, lk_pad, dp, FWD_BLOCK_K, per_channel=True)
    c = p.scale * T.LOG2E
    if qk == "16bit":
        # (a fill, not a host-to-device copy: the training step stays capturable in a CUDA graph)
        q_scale = torch.full((1,), c, dtype=torch.float32, device=p.device)
        shift = torch.zeros(p.batch, p.heads_q, lq_pad, dtype=torch.float32, device=p.device)
        cdt = compute_dtype(p.dtype)
        return ScoreOperands(qk, _pad16(p.q.to(cdt), lq_pad, dp), q_scale, _pad16(p.k.to(cdt), lk_pad, dp), q_scale,
                             v, v_scale,
                             shift, col, has_col, dp, lq_pad, lk_pad)
    # int8: K smoothing, Hadamard rotation (x R with R R^T = DP I, undone by 1/DP in Q's scale), per-token INT8
    rot = T.rotation(dp, p.device, compute_dtype(p.dtype)) if rotates(dp) else None
    kbar = key_mean(p.k, True).squeeze(2)  # (B, Hk, D)
    q8, q_scale, shift = quantize(p.q, lq_pad, dp, FWD_BLOCK_Q, per_channel=False, rotation=rot,
                                  row_factor=c / dp if rot is not None else c,
                                  shift_keys=kbar, kv_group=p.heads_q // p.heads_kv, sm_scale=p.scale)
    k8, k_scale, _ = quantize(p.k, lk_pad, dp, FWD_BLOCK_K, per_channel=False, rotation=rot, mean=kbar)
    return ScoreOperands(qk, q8, q_scale, k8, k_scale, v, v_scale, shift, col, has_col, dp, lq_pad, lk_pad, kbar)
