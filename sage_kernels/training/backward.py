"""Host side of the training backward: pre-pass (row statistics, per-channel INT8 of dO, Q and smoothed K, the
forward's V as 16-bit values), then the dV, dK and dQ kernels: Gluon on Hopper where backward_ws applies
(`gluon_applies`), else the Triton dK/dV and dQ kernels. Recomputes the forward's operands instead of saving them
(only q, k, v, out, lse are kept between the passes, as FlashAttention does)."""
from __future__ import annotations

import torch

from .._triton import interpreter_active
from ..capabilities import device_info
from ..device_guard import on_problem_device
from ..logs import launch_or_fall_back
from ..problem import AttentionProblem
from .config import DKV_STEP_Q, DQ_STEP_K, FWD_BLOCK_K, FWD_BLOCK_Q, compute_dtype, dkdv_split
from .launch import dkdv_launch_name, launch
from .backward_kernels import dkdv_kernel, dq_kernel
from . import backward_ws as ws
from ..kernels.means import key_mean
from ..kernels.run import broadcast_strides
from ..launch import fast
from .operands import quantize, score_operands
from .prepass import dequant_v_kernel, row_stats_kernel


def _hnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "HND" else x.transpose(1, 2)


def _grad_like(x_hnd: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient buffer shaped like the caller's tensor, whose (B, H, L, D) view is x_hnd; that buffer's view)."""
    buf = torch.empty(_hnd(x_hnd, layout).shape, dtype=x_hnd.dtype, device=x_hnd.device)
    return buf, _hnd(buf, layout)


@on_problem_device
def training_backward(p: AttentionProblem, qk: str, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
                      dlse: torch.Tensor | None):
    """out, dout in p.out_layout; lse (B, Hq, Lq) fp32; dlse the same or None.
    Returns dq, dk, dv shaped like the caller's q, k, v (p.layout), in their dtype."""
    ops = score_operands(p, qk)
    b, hq, hk, lq, lk = p.batch, p.heads_q, p.heads_kv, p.len_q, p.len_k
    dp, lq_pad, lk_pad = ops.dp, ops.lq_pad, ops.lk_pad
    interp = interpreter_active()
    out_h, dout_h = _hnd(out, p.out_layout), _hnd(dout.to(compute_dtype(p.dtype)), p.out_layout)

    m_rows = torch.empty(b, hq, lq_pad, dtype=torch.float32, device=p.device)
    d_rows = torch.empty_like(m_rows)
    dlse_c = dlse.to(torch.float32).contiguous() if dlse is not None else m_rows
    fast(row_stats_kernel)[(lq_pad // FWD_BLOCK_Q, b * hq)](
        out_h, *out_h.stride(), dout_h, *dout_h.stride(), lse.contiguous(), ops.shift, dlse_c, m_rows, d_rows,
        hq, lq, lq_pad, p.head_dim_v, BT=FWD_BLOCK_Q, DP=dp, HAS_DLSE=dlse is not None,
    )
    do8, do_scale, _ = quantize(dout_h, lq_pad, dp, DKV_STEP_Q, per_channel=True)
    qc, qc_scale, _ = quantize(p.q, lq_pad, dp, DKV_STEP_Q, per_channel=True)
    kbar = ops.kbar if ops.kbar is not None else key_mean(p.k, True).squeeze(2)  # int8 QK: taken once, in ops
    kc, kc_scale, _ = quantize(p.k, lk_pad, dp, DQ_STEP_K, per_channel=True, mean=kbar)
    kbar_pad = torch.nn.functional.pad(kbar, (0, dp - p.head_dim)).contiguous()
    vt = torch.empty(b, hk, lk_pad, dp, dtype=compute_dtype(p.dtype), device=p.device)
    fast(dequant_v_kernel)[(lk_pad // FWD_BLOCK_K, b * hk)](ops.v, ops.v_scale, vt, lk_pad, BT=FWD_BLOCK_K,
                                                             BLOCK_V=FWD_BLOCK_K, DP=dp, INTERPRET=interp)

    dq, dq_h = _grad_like(p.q, p.layout)
    dk, dk_h = _grad_like(p.k, p.layout)
    dv, dv_h = _grad_like(p.v, p.layout)
    sc = broadcast_strides(ops.col)[:2]
    if gluon_applies(p, qk, dp) and _try_gluon(p, ops, vt, m_rows, d_rows, dout_h, (do8, do_scale), (qc, qc_scale),
                                               (kc, kc_scale), kbar_pad, dlse_c, dlse is not None, sc,
                                               (dq_h, dk_h, dv_h)):
        return dq, dk, dv
    common = dict(DP=dp, QK16=qk == "16bit", IS_CAUSAL=p.is_causal, INTERPRET=interp)
    dkdv_args = (
        ops.q, ops.q_scale, ops.k, ops.k_scale, vt, ops.col, m_rows, d_rows,
        dout_h, *dout_h.stride(), do8, do_scale, qc, qc_scale,
        dk_h, *dk_h.stride(), dv_h, *dv_h.stride(), sc[0], sc[1],
        hq, hq // hk, lq, lq_pad, lk, lk_pad, lk - lq, p.head_dim, p.head_dim_v, p.scale,
    )
    parts = ((True, False), (False, True)) if dkdv_split(p.device) else ((True, True),)
    for want_dk, want_dv in parts:
        launch(dkdv_launch_name(want_dk, want_dv), dkdv_kernel, lambda block: (lk_pad // block, b * hk), dkdv_args,
               dict(SQ=DKV_STEP_Q, WANT_DK=want_dk, WANT_DV=want_dv, **common), p.device)
    launch("dq", dq_kernel, lambda block: (lq_pad // block, b * hq), (
        ops.q, ops.q_scale, ops.k, ops.k_scale, vt, ops.col, m_rows, d_rows,
        dout_h, *dout_h.stride(), kc, kc_scale, kbar_pad, dlse_c,
        dq_h, *dq_h.stride(), sc[0], sc[1],
        hq, hq // hk, lq, lq_pad, lk_pad, lk - lq, p.head_dim, p.head_dim_v, p.scale,
    ), dict(SK=DQ_STEP_K, HAS_DLSE=dlse is not None, **common), p.device)
    return dq, dk, dv


_gluon_failure: str | None = None  # why backward_ws could not be built here (then the Triton kernels run)


def gluon_applies(p: AttentionProblem, qk: str, dp: int, arch: int | None = None) -> bool:
    """Whether backward_ws computes this call's gradients: Hopper, the default "16bit" QK mode, no causal mask,
    padded head dims up to backward_ws.MAX_HEAD, a Gluon that has built it (else the Triton kernels).
    arch: the GPU's (default: p.device's; aot.py records sm_90's launches on the CPU)."""
    arch = device_info(p.device).arch if arch is None else arch
    return (ws.HAS_GLUON and _gluon_failure is None and not interpreter_active() and qk == "16bit"
            and not p.is_causal and dp <= ws.MAX_HEAD and arch == 90)


def _try_gluon(*args) -> bool:
    """Run backward_ws; if it cannot be built, remember and log why (once) and return False so that the caller runs
    the Triton kernels (which write every gradient again)."""
    global _gluon_failure
    _gluon_failure = launch_or_fall_back(_launch_gluon, args, "the Gluon sm_90 training backward",
                                         "the Triton kernels")
    return _gluon_failure is None


def _launch_gluon(p: AttentionProblem, ops, vt, m_rows, d_rows, dout_h, do8, qc, kc, kbar_pad, dlse_c,
                  has_dlse: bool, col_strides, grads) -> None:
    """dV, dK, dQ by backward_ws.grad_ws_kernel (its docstring lists the operands). do8, qc, kc: (codes, scales)."""
    b, hq, hk, lq, lk = p.batch, p.heads_q, p.heads_kv, p.len_q, p.len_k
    dp, lq_pad, lk_pad = ops.dp, ops.lq_pad, ops.lk_pad
    # dO as 16-bit rows like Q's (zero padded): a TMA operand of dK's dP and dQ's
    do16 = torch.nn.functional.pad(dout_h, (0, dp - p.head_dim_v, 0, lq_pad - lq)).contiguous()

    def rows(t, n):  # 16-bit (rows, DP), n rows at a time
        return ws.gluon_desc(t, [n, dp])

    def channels(codes, l_pad):  # per-channel INT8 (B, H, DP, L_pad) as (B*H*DP, L_pad), one step of columns
        return ws.gluon_desc(codes.view(-1, l_pad), [dp, ws.STEP])

    def flat(t, n):
        return ws.gluon_desc(t.view(-1), [n])

    k16, q16, vt16, do16 = (t.view(-1, dp) for t in (ops.k, ops.q, vt, do16))
    k_rows, k_step, q_rows, q_step = rows(k16, ws.ROWS), rows(k16, ws.STEP), rows(q16, ws.ROWS), rows(q16, ws.STEP)
    m_desc, dd_desc = flat(m_rows, ws.STEP), flat(d_rows, ws.STEP)
    common = (ops.q_scale, m_rows, d_rows, ops.col, *col_strides, kbar_pad, dlse_c)
    sizes = (hq, hq // hk, lq, lq_pad, lk, lk_pad)
    dq_h, dk_h, dv_h = grads
    launches = (  # mode, grid, descriptors r, rd, c, cd, c8, c8s (dV: rd and cd unused), the gradient, its width
        ("dv", (lk_pad // ws.ROWS, b * hk), (k_rows, k_rows, q_step, q_step, channels(do8[0], lq_pad),
                                             flat(do8[1], dp)), dv_h, p.head_dim_v),
        ("dk", (lk_pad // ws.ROWS, b * hk), (k_rows, rows(vt16, ws.ROWS), q_step, rows(do16, ws.STEP),
                                             channels(qc[0], lq_pad), flat(qc[1], dp)), dk_h, p.head_dim),
        ("dq", (lq_pad // ws.ROWS, b * hq), (q_rows, rows(do16, ws.ROWS), k_step, rows(vt16, ws.STEP),
                                             channels(kc[0], lk_pad), flat(kc[1], dp)), dq_h, p.head_dim),
    )
    for mode, grid, descs, grad, width in launches:
        assert grad.stride(3) == 1
        fast(ws.grad_ws_kernel)[grid](
            *descs, m_desc, dd_desc, *common, grad, *grad.stride()[:3], *sizes, width, p.scale,
            MODE=ws.MODES[mode], HAS_COL=ops.has_col, HAS_DLSE=has_dlse and mode == "dq", STAGES=ws.STAGES[mode],
            BR=ws.ROWS, SC=ws.STEP, DP=dp, CONSUMER_REGS=ws.WS_CONSUMER_REGS, ISSUE_AT=ws.ISSUE_AT[mode],
            A_REGS=ws.A_REGS[mode], num_warps=ws.WS_WARPS, maxnreg=ws.WS_MAXNREG,
        )
