"""Host side of the Triton path: allocate padded operand buffers, launch the pre-pass, launch attention.

Extra device memory: the quantized Q, K, V (+ fp32 row scales) and the column-bias table, which is computed in
chunks of consecutive query blocks (across heads) so that it never exceeds the size of the quantized Q.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from .. import transforms as T
from .._triton import UNTESTED_TRITON_NOTE, interpreter_active, next_power_of_2
from ..capabilities import device_info
from ..capture import device_cache
from ..device_guard import on_problem_device
from ..launch import fast
from ..logs import launch_or_fall_back, log_once
from ..options import BLOCK_M, BLOCK_N, QuantOptions
from ..problem import AttentionProblem
from .attention import attention_kernel
from .attention_tma import attention_tma_kernel
from .attention_ws import HAS_GLUON, WS_CONSUMER_REGS, WS_MAXNREG, WS_WARPS, attention_ws_kernel, gluon_desc
from .configs import (PREP_CHUNK_ROWS, PREP_NUM_STAGES, TMA_PV_FORMATS, LaunchConfig, fp4_key_slots, launch_config,
                      prepass_maxnreg, prepass_warps, without_gluon)
from .key_slots import key_of_slot
from .means import kv_stats
from .prepass import (FMT_FP4_CODES, FMT_FP4_VALUES, FMT_FP8, FMT_INT8, FMT_V16, NORM_HEAD_MAX, NORM_NONE, NORM_ROWS,
                      column_bias_kernel, prep_rows_kernel, prep_v_kernel)
from .streams import PrepassFork

_BIAS_ROWS = 64  # query blocks per column-bias program


@dataclass
class Operands:
    q: torch.Tensor
    q_scale: torch.Tensor
    q_sf: torch.Tensor
    k: torch.Tensor
    k_scale: torch.Tensor
    k_sf: torch.Tensor
    v: torch.Tensor
    v_scale: torch.Tensor
    v_sf: torch.Tensor
    v_amax: torch.Tensor  # fp4: fp32 (B*Hk,) |V|'s max, x2 with smooth_v; the kernels take V's scale from it
    v_mean: torch.Tensor | None
    shift: torch.Tensor | None
    q_means: torch.Tensor | None  # (B, Hq, G, DP) fp32 for the column bias, None when Q smoothing is off
    qk_format: int
    pv_format: int
    dp: int
    lq_pad: int
    lk_pad: int
    score_factor: float  # sm_scale * log2(e) / (rotation's dp): what the fp4-values kernel multiplies scores by
    key_slots: bool = False  # FP4 values: K's and V's rows in key_slots order (configs.fp4_key_slots)
    column_slots: bool = False  # FP4 values, rotated: Q's and K's columns in key_slots order (prep_rows_kernel)
    fork: PrepassFork | None = None  # the side stream K's and V's operands are made on until join()
    # The INT8 Gluon kernel's score bound (attention_ws._first_block), INT8 with 16-bit P.V on sm_90 (and in the
    # interpreter, for the tests): fp32 (B*Hk,) each head's largest dequantized K row norm; (B, Hq, Lq_pad) each
    # Q row's; (rows,) each column-bias table row's max (numbered as the table's rows, across heads; sliced per
    # chunk). The maxima are atomic maxima into one buffer filled with -inf.
    k_norm: torch.Tensor | None = None
    q_norm: torch.Tensor | None = None
    table_max: torch.Tensor | None = None
    # The attention launch, decided once here for `prepare` (the score bound) and `run` (kernel_route): the arch's
    # config, and whether attention_tma_kernel / attention_ws_kernel take the call
    launch: LaunchConfig | None = None
    tma: bool = False
    gluon: bool = False

    def join(self) -> None:
        """The current stream waits for K's and V's pre-pass (a no-op once done or without a side stream)."""
        if self.fork is not None:
            self.fork.join()


def _formats(precision: str, opts: QuantOptions, native_fp4: bool) -> tuple[int, int]:
    if precision == "int8":
        return FMT_INT8, {"int8": FMT_INT8, "fp8": FMT_FP8, "16bit": FMT_V16}[opts.pv]
    f = FMT_FP4_CODES if native_fp4 else FMT_FP4_VALUES
    return f, f


def _pad_cols(x: torch.Tensor, dp: int) -> torch.Tensor:
    if x.shape[-1] == dp:
        return x.contiguous()
    return torch.nn.functional.pad(x, (0, dp - x.shape[-1])).contiguous()


@device_cache(maxsize=32)
def _empty(dev, dtype=torch.float32):
    """Placeholder for an argument the launched variant never reads or writes (one per device and dtype: an
    allocation per call costs host time at Flux's sizes). Like every device constant here, cached only when made
    outside CUDA graph capture (capture.device_cache)."""
    return torch.empty(1, dtype=dtype, device=dev)


@device_cache(maxsize=16)
def _rotation(dp: int, dev: torch.device, dtype: torch.dtype, column_slots: bool) -> torch.Tensor:
    """The pre-pass's rotation (transforms.rotation); with column_slots its column s is R's column key_of_slot(s),
    so that x R leaves the tensor cores with each NVFP4 group of 16 columns of the reference's x R in one thread's
    registers (prep_rows_kernel's COL_SLOTS)."""
    r = T.rotation(dp, dev, dtype)
    return r[:, key_of_slot(torch.arange(dp, device=dev))] if column_slots else r


def _unused(dev):
    """Placeholder for a buffer the launched variant never touches (uint8: fp8 pointers do not compile on sm_80)."""
    return _empty(dev, torch.uint8)


def _row_buffers(b, h, l_pad, dp, fmt, dev):
    """(values/codes, fp32 per-row scale, E4M3 block scales) for Q or K in the given format."""
    if fmt == FMT_INT8:
        return (torch.empty(b, h, l_pad, dp, dtype=torch.int8, device=dev),
                torch.empty(b, h, l_pad, dtype=torch.float32, device=dev), _unused(dev))
    if fmt == FMT_FP4_VALUES:
        return torch.empty(b, h, l_pad, dp, dtype=torch.bfloat16, device=dev), _empty(dev), _unused(dev)
    return (torch.empty(b, h, l_pad, dp // 2, dtype=torch.uint8, device=dev),
            torch.empty(b, h, l_pad, dtype=torch.float32, device=dev),
            torch.empty(b, h, l_pad, dp // 16, dtype=torch.float8_e4m3fn, device=dev))


def prepare(p: AttentionProblem, precision: str, opts: QuantOptions, return_lse: bool, native_fp4: bool,
            join: bool = True) -> Operands:
    """The attention kernel's operands. K's and V's pre-pass may run on a side stream (streams.py): with join=False
    the caller must call `ops.join()` before it launches anything that reads them."""
    dev = p.device
    b, hq, hk, lq, lk = p.batch, p.heads_q, p.heads_kv, p.len_q, p.len_k
    lq_pad, lk_pad, dp = p.kernel_sizes
    qk_fmt, pv_fmt = _formats(precision, opts, native_fp4)
    x_fp32 = p.dtype == torch.float32
    rotate = opts.rotate
    arch = device_info(dev).arch
    key_slots = qk_fmt == FMT_FP4_VALUES and fp4_key_slots(arch)
    column_slots = key_slots and rotate
    # ±1 entries are exact in 16 bits; fp32 inputs are split into two bf16 terms in the kernel
    rot = _rotation(dp, dev, torch.float16 if p.dtype == torch.float16 else torch.bfloat16, column_slots) \
        if rotate else _empty(dev)
    score_factor = p.scale * T.LOG2E / (dp if rotate else 1)  # (xR)(yR)^T = dp * x y^T
    row_factor = 1.0 if qk_fmt == FMT_FP4_VALUES else score_factor  # fp4 values: the kernel applies it

    # Q's global mean (Q smoothing per head) by K's mean kernels: torch's mean would take a workspace of Q's size in
    # fp32; taken first, so that its tile sums are freed before the INT8 copies exist (issue #3's memory bar).
    q_mean = q_mean_rot = None
    if opts.smooth_q == "global":
        q_mean, q_mean_rot = kv_stats(p.q, None, True, rotation=rot if rotate else None)[:2]
    # The operand buffers, before the fork: a block this stream freed may still be read by work it queued, which
    # only the fork orders before the side stream's kernels (streams.py). So are the side stream's results that
    # outlive the join (V's statistics), so that they are freed on this stream.
    q_buf, q_scale, q_sf = _row_buffers(b, hq, lq_pad, dp, qk_fmt, dev)
    k_buf, k_scale, k_sf = _row_buffers(b, hk, lk_pad, dp, qk_fmt, dev)
    v_buf, v_scale, v_sf = _v_buffers(p, pv_fmt, dp, lk_pad)
    quantize_v = pv_fmt != FMT_V16
    v_fp4 = pv_fmt in (FMT_FP4_VALUES, FMT_FP4_CODES)
    v_amax = torch.empty(b * hk, dtype=torch.float32, device=dev) if v_fp4 else _empty(dev)
    v_mean = None
    if quantize_v and opts.smooth_v and lk:  # (padded columns stay zero)
        v_mean = (torch.empty if p.head_dim_v == dp else torch.zeros)(b, hk, dp, dtype=torch.float32, device=dev)
    # query-mean groups per head (Q smoothing), so rows of the column-bias table per head
    q_groups = {"block": lq_pad // BLOCK_M, "global": 1}.get(opts.smooth_q, 0)
    launch = launch_config(arch, dp, qk_fmt, pv_fmt, p.v.element_size())
    tma, gluon = kernel_route(p, launch, qk_fmt, pv_fmt, dp, key_slots, lk_pad, v_buf)
    # the INT8 Gluon kernel's score bound (Operands.k_norm), where it runs (and in the interpreter, for the tests):
    # K's and the table rows' maxima in one buffer (one fill launch: host time counts at Flux's sizes)
    bound = (qk_fmt, pv_fmt) == (FMT_INT8, FMT_V16) and (gluon or interpreter_active())
    k_norm = q_norm = table_max = None
    if bound:
        table_rows = b * hq * q_groups
        maxima = torch.full((b * hk + table_rows,), float("-inf"), dtype=torch.float32, device=dev)
        k_norm, table_max = maxima[:b * hk], maxima[b * hk:]
        q_norm = torch.empty(b, hq, lq_pad, dtype=torch.float32, device=dev)
    rows_launch = dict(  # prep_rows_kernel's launch options, Q's and K's alike
        COL_SLOTS=column_slots, SUB=PREP_CHUNK_ROWS, INTERPRET=interpreter_active(),
        num_warps=prepass_warps(dp, qk_fmt), num_stages=PREP_NUM_STAGES,
        maxnreg=prepass_maxnreg(arch, p.q.element_size()))
    # K's and V's chain on a side stream: K's mean (K smoothing; rotated too when Q and K are) and |V|'s max (the
    # FP4 formats' second level of V) in one pass over K and V, then K's and V's pre-pass; Q's chain (Q's pre-pass
    # here, the column bias in `run`) on this stream. A smoothed V spans up to twice |V|'s max.
    with PrepassFork(dev) as fork:  # (joined at once if anything below raises)
        with fork.on_side():
            k_mean, k_mean_r, _ = kv_stats(p.k, p.v if v_fp4 else None, opts.smooth_k, 2.0 if opts.smooth_v else 1.0,
                                           rot if rotate else None, v_amax_out=v_amax if v_fp4 else None)
            if k_mean is None and return_lse:  # the LSE shift's key mean: zeros without K smoothing
                k_mean = torch.zeros(b, hk, 1, p.head_dim, dtype=torch.float32, device=dev)
            kbar = _pad_cols(k_mean.squeeze(2), dp) if k_mean is not None else _empty(dev)
            # (only Q's LSE shift reads K's mean)
            kbar_ready = fork.side_event() if return_lse else None
            # --- K ---
            fast(prep_rows_kernel)[(b * hk * (lk_pad // BLOCK_N),)](
                p.k, *p.k.stride()[:3], kbar,
                *((kbar.stride()[0], kbar.stride()[1], 0) if opts.smooth_k else (0, 0, 0)),
                k_mean_r if k_mean_r is not None else _empty(dev), _empty(dev), 0, 0, _empty(dev), rot, k_buf, k_scale,
                k_sf, k_norm if k_norm is not None else _empty(dev), hk, lk, lk_pad, p.head_dim, 1, 1.0, 1.0,
                BT=BLOCK_N, DP=dp, FORMAT=qk_fmt, MEAN_MODE=1 if opts.smooth_k else 0, ROTATE=rotate,
                WRITE_SHIFT=False, X_FP32=x_fp32, KEY_SLOTS=key_slots, WRITE_NORM=NORM_HEAD_MAX if bound else NORM_NONE,
                **rows_launch,
            )
            # --- V --- (16-bit P.V reads the caller's V as it is: smooth_v has nothing to do without quantization)
            if v_mean is not None:
                torch.mean(p.v, dim=2, dtype=torch.float32, out=v_mean[..., :p.head_dim_v])
            if quantize_v:
                fast(prep_v_kernel)[(lk_pad // BLOCK_N, b * hk)](
                    p.v, *p.v.stride()[:3], v_mean if v_mean is not None else _empty(dev), v_amax, v_buf, v_scale, v_sf,
                    hk, lk, lk_pad, p.head_dim_v,
                    BN=BLOCK_N, DP=dp, FORMAT=pv_fmt, SUB_MEAN=v_mean is not None, KEY_SLOTS=key_slots,
                    num_warps=prepass_warps(dp, pv_fmt),
                )
        # --- Q ---
        shift = torch.empty(b, hq, lq_pad, dtype=torch.float32, device=dev) if return_lse else _empty(dev)
        q_mean_r = _empty(dev)
        if opts.smooth_q == "block":
            q_means = torch.empty(b, hq, q_groups, dp, dtype=torch.float32, device=dev)
            mean_mode = 2
        elif opts.smooth_q == "global":
            q_means = _pad_cols(q_mean, dp)
            mean_mode = 1
            if rotate:
                q_mean_r = q_mean_rot
        else:
            q_means, mean_mode = None, 0
        qm = q_means if q_means is not None else _empty(dev)
        sq = qm.stride() if q_means is not None else (0, 0, 0, 0)
        fork.wait(kbar_ready)
        fast(prep_rows_kernel)[(b * hq * (lq_pad // BLOCK_M),)](
            p.q, *p.q.stride()[:3], qm, sq[0], sq[1], sq[2], q_mean_r, kbar,
            *(kbar.stride()[:2] if kbar.dim() == 3 else (0, 0)), shift, rot, q_buf, q_scale, q_sf,
            q_norm if bound else _empty(dev),
            hq, lq, lq_pad, p.head_dim, hq // hk, row_factor, p.scale,
            BT=BLOCK_M, DP=dp, FORMAT=qk_fmt, MEAN_MODE=mean_mode, ROTATE=rotate, WRITE_SHIFT=return_lse, X_FP32=x_fp32,
            KEY_SLOTS=False, WRITE_NORM=NORM_ROWS if bound else NORM_NONE, **rows_launch,
        )
        ops = Operands(q_buf, q_scale, q_sf, k_buf, k_scale, k_sf, v_buf, v_scale, v_sf, v_amax, v_mean,
                       shift if return_lse else None, q_means, qk_fmt, pv_fmt, dp, lq_pad, lk_pad, score_factor,
                       key_slots, column_slots, fork, k_norm, q_norm, table_max, launch, tma, gluon)
    if join:
        ops.join()
    return ops


def _v_buffers(p: AttentionProblem, pv_fmt: int, dp: int, lk_pad: int):
    """V's operand buffers in the P.V format: (values, per-channel scales, E4M3 block scales); 16-bit P.V reads
    the caller's V."""
    dev = p.device
    b, hk = p.batch, p.heads_kv
    if pv_fmt == FMT_V16:
        return p.v, _empty(dev), _unused(dev)
    if pv_fmt == FMT_INT8:
        v_buf = torch.empty(b, hk, dp, lk_pad, dtype=torch.int8, device=dev)
    elif pv_fmt == FMT_FP8:
        v_buf = torch.empty(b, hk, dp, lk_pad, dtype=torch.float8_e4m3fn, device=dev)
    elif pv_fmt == FMT_FP4_VALUES:  # fp16 without V's second-level scale (prep_v_kernel)
        v_buf = torch.empty(b, hk, lk_pad, dp, dtype=torch.float16, device=dev)
    else:
        v_buf = torch.empty(b, hk, dp, lk_pad // 2, dtype=torch.uint8, device=dev)
    v_scale = torch.empty(b, hk, lk_pad // BLOCK_N, dp, dtype=torch.float32, device=dev) \
        if pv_fmt in (FMT_INT8, FMT_FP8) else _empty(dev)
    v_sf = torch.empty(b, hk, dp, lk_pad // 16, dtype=torch.float8_e4m3fn, device=dev) \
        if pv_fmt == FMT_FP4_CODES else _unused(dev)
    return v_buf, v_scale, v_sf


def broadcast_strides(t: torch.Tensor):
    """Strides of a column-bias table's (batch, head, row) dims, 0 where it broadcasts."""
    return tuple(t.stride(i) if t.shape[i] > 1 else 0 for i in range(3))


@device_cache(maxsize=32)
def _padding_row(lk: int, lk_pad: int, device: torch.device) -> torch.Tensor:
    """(1, 1, 1, Lk_pad): 0 for real keys, -inf for padding (the whole column bias without smoothing or mask)."""
    row = torch.zeros(1, 1, 1, lk_pad, dtype=torch.float32, device=device)
    row[..., lk:] = float("-inf")
    return row


def _key_bias_max(p: AttentionProblem, table: torch.Tensor) -> torch.Tensor:
    """Each row's max of a `_key_bias_table` (one per row, same row numbering): 0 for the padding row."""
    if p.key_bias is None:
        return _zero_max(p.device)
    return table.amax(dim=-1).contiguous()


@device_cache(maxsize=8)
def _zero_max(device: torch.device) -> torch.Tensor:
    return torch.zeros(1, dtype=torch.float32, device=device)


def _key_bias_table(p: AttentionProblem, lk_pad: int) -> torch.Tensor:
    """Column bias without Q smoothing: log2(e) * mask and -inf padding, (B|1, Hq|1, 1, Lk_pad)."""
    if p.key_bias is None:
        return _padding_row(p.len_k, lk_pad, p.device)
    return T.column_bias(None, p.k, p.key_bias, p.scale, lk_pad, p.heads_q)


def chunk_rows(p: AttentionProblem, ops: Operands, n_qblocks: int, slots: int = 0) -> int:
    """Rows of the per-query-block column-bias table (one per query block of every head, numbered across heads)
    per chunk, so that a chunk stays within the size of the quantized Q, or of an INT8 copy of V where V is not
    quantized (16-bit P.V: the chunk takes V's share of issue #3's memory bar, which is larger with more keys than
    queries); each chunk is its own attention launch.

    A chunk may start and end inside a head (common.program_coords), so chunks of consecutive rows read each
    head's K about once (query-block chunks of every head re-read all of K per chunk: 9x at HunyuanVideo's 35k
    tokens), and with `slots` (128-row programs per wave: the SMs for the Gluon kernel) every chunk but the last
    is a whole number of waves: no partial wave per launch (35k tokens: 50 waves against 52 for query-block
    chunks and 60 for chunks of whole heads). Without `slots` (kernels that share an SM between programs:
    rounding to the SM count measured slower at head dim 64) a chunk takes as many rows as fit."""
    total = p.batch * p.heads_q * n_qblocks
    row_bytes = ops.lk_pad * 4
    budget = ops.q.numel() * ops.q.element_size()
    if ops.pv_format == FMT_V16:
        budget = max(budget, p.batch * p.heads_kv * ops.lk_pad * ops.dp)
    if total * row_bytes <= budget:
        return total
    rows = max(1, budget // row_bytes)
    return rows - rows % slots if slots and rows >= slots else rows


def _bias_chunk(p: AttentionProblem, ops: Operands, t0: int, t1: int,
                with_max: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows t0 .. t1 - 1 of the column-bias table (row = (b * Hq + h) * G + g for the G query-mean groups), and
    with_max: each row's max ((t1 - t0,): the INT8 Gluon kernel's score bound), else None."""
    g = ops.q_means.shape[2]
    out = torch.empty(t1 - t0, ops.lk_pad, dtype=torch.float32, device=p.device)
    out_max = ops.table_max[t0:t1] if with_max else None  # (from -inf: Operands.table_max)
    kb = p.key_bias
    kb_strides = (kb.stride(0) if kb.shape[0] > 1 else 0, kb.stride(1) if kb.shape[1] > 1 else 0) if kb is not None else (0, 0)
    qm = ops.q_means
    bg = min(_BIAS_ROWS, max(16, next_power_of_2(min(g, t1 - t0))))  # no all-masked rows when few
    bh0 = t0 // g
    fast(column_bias_kernel)[(ops.lk_pad // BLOCK_N, -(-min(g, t1 - t0) // bg), -(-t1 // g) - bh0)](
        qm, qm.stride(0), qm.stride(1), qm.stride(2), p.k, *p.k.stride()[:3],
        kb if kb is not None else _empty(p.device), *kb_strides, out, out_max if with_max else _empty(p.device),
        p.heads_q, p.heads_q // p.heads_kv, g, t0, t1, bh0, p.len_k, ops.lk_pad, p.head_dim, p.scale * T.LOG2E,
        BG=bg, BN=BLOCK_N, DP=ops.dp, HAS_KB=kb is not None, K_FP32=p.dtype == torch.float32, WRITE_MAX=with_max,
        INTERPRET=interpreter_active(),
    )
    return out, out_max


def _last_dim_contiguous(p: AttentionProblem) -> AttentionProblem:
    """The kernels assume unit stride along the head dim (for vector loads); copy the rare tensor without it."""
    fixed = {n: t.contiguous() for n, t in (("q", p.q), ("k", p.k), ("v", p.v)) if t.stride(3) != 1}
    return dataclasses.replace(p, **fixed) if fixed else p


_triton_noted = False


@on_problem_device
def run(p: AttentionProblem, precision: str, opts: QuantOptions, return_lse: bool, native_fp4: bool = False):
    """Returns (out in the caller's layout, lse (B, Hq, Lq) fp32 or None)."""
    global _triton_noted
    if UNTESTED_TRITON_NOTE and not _triton_noted:
        _triton_noted = log_once("untested triton", UNTESTED_TRITON_NOTE, level=logging.INFO)
    p = _last_dim_contiguous(p)
    out, out_hnd = p.new_output()
    lse = torch.empty(p.batch, p.heads_q, p.len_q, dtype=torch.float32, device=p.device) if return_lse else None
    if p.len_q == 0:
        return out, lse
    ops = prepare(p, precision, opts, return_lse, native_fp4, join=False)  # joined before attention runs
    try:
        cfg, tma, ws = ops.launch, ops.tma, ops.gluon
        n_qblocks = ops.lq_pad // BLOCK_M
        if not ws:
            cfg = without_gluon(cfg)
        bound = ws and ops.k_norm is not None  # the INT8 Gluon kernel's score bound: the table rows' maxima too
        total = p.batch * p.heads_q * n_qblocks  # 128-row query blocks of every head: the launches' grid units
        if ops.q_means is None or ops.q_means.shape[2] == 1:  # one table row serves every query block of a head
            if ops.q_means is None:
                table = _key_bias_table(p, ops.lk_pad)
                table_max = _key_bias_max(p, table) if bound else None
            else:
                table, table_max = _bias_chunk(p, ops, 0, p.batch * p.heads_q, bound)
                table = table.view(p.batch, p.heads_q, 1, ops.lk_pad)
            pieces = [(0, total, (table, table_max),
                       tuple(st // ops.lk_pad for st in broadcast_strides(table)[:2]) + (0,))]
        else:  # one table row per query block, computed in chunks of consecutive rows (chunk_rows)
            # whole waves where a wave is known: the Gluon kernel runs one 128-row program per SM
            rows = chunk_rows(p, ops, n_qblocks, device_info(p.device).sms if ws else 0)
            pieces = [(t0, min(rows, total - t0), None, (p.heads_q * n_qblocks, n_qblocks, 1))
                      for t0 in range(0, total, rows)]
        has_col = not (ops.q_means is None and p.key_bias is None and p.len_k == ops.lk_pad)  # else all zero: skipped
        # col_rows: the table row of (b, h, block) is b*col_rows[0] + h*col_rows[1] + (block - t0)*col_rows[2]
        for t0, count, table, col_rows in pieces:  # (a chunk's table is freed before the next is made)
            table, table_max = table if table is not None else _bias_chunk(p, ops, t0, t0 + count, bound)
            ops.join()  # (the first chunk's column bias, on this stream, ran beside K's and V's pre-pass)
            args = (p, ops, cfg, table, col_rows, has_col, t0, count, out_hnd, lse)
            if ws and not _try_launch_ws(*args, table_max):
                ws, cfg = False, without_gluon(cfg)  # it could not be built: the TMA kernel from here on
                args = (p, ops, cfg) + args[3:]
            if not ws:
                (_launch_tma if tma else _launch_pointer)(*args)
            del args, table, table_max
    finally:
        ops.join()  # also when a launch raised: the side stream's work must end in this stream
    if tma and lse is not None:  # the TMA kernel stores the LSE without the smoothing shift
        lse += ops.shift[:, :, :p.len_q]
    return out, lse


def _launch_pointer(p, ops: Operands, cfg, table, col_rows, has_col, t0, count, out_hnd, lse):
    dummy = _empty(p.device)
    per_head = ops.lq_pad // BLOCK_M
    fast(attention_kernel)[(per_head * (BLOCK_M // cfg.block_m), -(-(t0 + count) // per_head) - t0 // per_head)](
        ops.q, ops.q_scale, ops.q_sf, ops.k, ops.k_scale, ops.k_sf, ops.v, ops.v_scale, ops.v_sf, table,
        out_hnd, lse if lse is not None else dummy, ops.shift if ops.shift is not None else dummy,
        ops.v_mean if ops.v_mean is not None else dummy, ops.v_amax,
        ops.q.stride(0), ops.q.stride(1), ops.q.stride(2),
        ops.k.stride(0), ops.k.stride(1), ops.k.stride(2),
        ops.v.stride(0), ops.v.stride(1), ops.v.stride(2),
        ops.v_sf.stride(2) if ops.pv_format == FMT_FP4_CODES else ops.dp,
        *col_rows,
        *out_hnd.stride()[:3],
        p.heads_q, p.heads_q // p.heads_kv, p.len_q, ops.lq_pad, p.len_k, ops.lk_pad, p.len_k - p.len_q, t0,
        t0 + count, p.head_dim_v, ops.score_factor,
        BM=cfg.block_m, BN=BLOCK_N, DP=ops.dp, SMOOTH_BLOCK=BLOCK_M, QK_FORMAT=ops.qk_format,
        PV_FORMAT=ops.pv_format,
        IS_CAUSAL=p.is_causal, RETURN_LSE=lse is not None, HAS_VMEAN=ops.v_mean is not None,
        HAS_COL=has_col, KEY_SLOTS=ops.key_slots,
        INTERPRET=interpreter_active(),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def _tma_ok(t: torch.Tensor) -> bool:
    """A TMA descriptor needs a 16-byte aligned base and 16-byte multiples for every stride but the last (1)."""
    es = t.element_size()
    return t.data_ptr() % 16 == 0 and t.stride(-1) == 1 and all((st * es) % 16 == 0 for st in t.stride()[:-1])


def _tma_applies(p: AttentionProblem, qk_format: int, pv_format: int, dp: int, key_slots: bool,
                 v: torch.Tensor) -> bool:
    """attention_tma_kernel covers non-causal INT8 Q.K^T with 16-bit/FP8/INT8 P.V, and the FP4 emulation, on
    fp16/bf16 inputs and head dims <= 128 (what was measured; 256 keeps the pointer kernel's shared-memory-bounded
    config). v: V's operand (the caller's V for 16-bit P.V)."""
    if p.is_causal or p.len_k == 0 or dp > 128 or p.dtype == torch.float32:
        return False
    if qk_format == FMT_FP4_VALUES:
        return key_slots  # the TMA kernel's FP4 loop takes K and V in key_slots order only
    if qk_format != FMT_INT8 or pv_format not in TMA_PV_FORMATS:
        return False
    return pv_format != FMT_V16 or _tma_ok(v)


@device_cache(maxsize=8)
def _placeholder_desc(device: torch.device):
    """A valid descriptor for kernel arguments the launched variant never reads."""
    return _row_desc(torch.zeros(1, BLOCK_N, dtype=torch.float32, device=device), BLOCK_N)


def _row_desc(t: torch.Tensor, block: int):
    """A contiguous tensor of per-row values as one (1, N) row, read [1, block] at a time."""
    return TensorDescriptor(t, [1, t.numel()], [t.numel(), 1], [1, block])


def _rows_desc(t: torch.Tensor, width: int, block_rows: int, block_cols: int | None = None):
    """A contiguous tensor seen as (numel / width, width) rows."""
    return TensorDescriptor(t, [t.numel() // width, width], [width, 1], [block_rows, block_cols or width])


def _launch_tma(p, ops: Operands, cfg, table, col_rows, has_col, t0, count, out_hnd, lse):
    bm, dp, lk_pad = cfg.block_m, ops.dp, ops.lk_pad
    fp4 = ops.qk_format == FMT_FP4_VALUES  # no row scales (their buffers are 1-element placeholders)
    unused = _placeholder_desc(p.device)
    if ops.pv_format == FMT_V16:
        v = ops.v
        v_desc = TensorDescriptor(v, list(v.shape), list(v.stride()), [1, 1, BLOCK_N, dp])
        vs_desc = unused
    elif ops.pv_format == FMT_FP4_VALUES:
        v_desc, vs_desc = _rows_desc(ops.v, dp, BLOCK_N), unused
    else:
        v_desc = _rows_desc(ops.v, lk_pad, dp, BLOCK_N)
        vs_desc = _rows_desc(ops.v_scale, dp, 1)
    fast(attention_tma_kernel)[(count * (BLOCK_M // bm),)](
        _rows_desc(ops.q, dp, bm), unused if fp4 else _row_desc(ops.q_scale, bm),
        _rows_desc(ops.k, dp, BLOCK_N), unused if fp4 else _row_desc(ops.k_scale, BLOCK_N), v_desc, vs_desc, _rows_desc(table, lk_pad, 1, BLOCK_N),
        _rows_desc(ops.v_mean, dp, 1) if ops.v_mean is not None else unused,
        out_hnd, lse if lse is not None else _empty(p.device), ops.v_amax,
        *out_hnd.stride()[:3],
        p.heads_q, p.heads_q // p.heads_kv, p.len_q, ops.lq_pad, lk_pad, p.head_dim_v, t0,
        *col_rows, ops.score_factor,
        BM=bm, BN=BLOCK_N, DP=dp, SMOOTH_BLOCK=BLOCK_M, PV_FORMAT=ops.pv_format, RETURN_LSE=lse is not None,
        HAS_VMEAN=ops.v_mean is not None, HAS_COL=has_col,
        WARP_SPECIALIZE=cfg.warp_specialize and not interpreter_active(), INTERPRET=interpreter_active(),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def _ws_applies(qk_format: int, pv_format: int, key_slots: bool, lk_pad: int) -> bool:
    """attention_ws_kernel (Gluon, sm_90): INT8 Q.K^T with 16-bit P.V, or the FP4 emulation (K and V in key_slots
    order), at least two key blocks (it peels the first and the last), within what _tma_applies allows."""
    formats = ((qk_format == FMT_INT8 and pv_format == FMT_V16)
               or (qk_format == FMT_FP4_VALUES and key_slots))
    return (HAS_GLUON and _ws_failure is None and not interpreter_active() and formats
            and lk_pad >= 2 * BLOCK_N)


def kernel_route(p: AttentionProblem, cfg, qk_format: int, pv_format: int, dp: int, key_slots: bool, lk_pad: int,
                 v: torch.Tensor) -> tuple[bool, bool]:
    """(attention_tma_kernel runs, attention_ws_kernel runs) for this problem under its launch config; `prepare`
    decides it once (Operands.tma / gluon): whether to write the Gluon kernel's score bound, and what `run`
    launches."""
    tma = cfg.tma and _tma_applies(p, qk_format, pv_format, dp, key_slots, v)
    return tma, tma and cfg.gluon and _ws_applies(qk_format, pv_format, key_slots, lk_pad)


_ws_failure: str | None = None  # why attention_ws_kernel could not be built here (then the TMA kernel runs)
# Tests: an int32 (2,) tensor to which the INT8 Gluon kernel adds, per 64-row warpgroup tile, whether it kept a fixed
# reference max (attention_ws._first_block) and 1; None (the default) compiles no counting.
fixed_max_count: torch.Tensor | None = None


def _try_launch_ws(*args) -> bool:
    """Launch attention_ws_kernel; if it cannot be built, remember and log why (once) and return False so that the
    caller launches attention_tma_kernel instead."""
    global _ws_failure
    _ws_failure = launch_or_fall_back(_launch_ws, args, "the Gluon sm_90 kernel", "the TMA kernel")
    return _ws_failure is None


@device_cache(maxsize=8)
def _gluon_placeholder(device: torch.device):
    """A valid Gluon descriptor for the row scales the FP4 variant never reads."""
    return gluon_desc(torch.zeros(BLOCK_N, dtype=torch.float32, device=device), [BLOCK_N])


def _launch_ws(p, ops: Operands, cfg, table, col_rows, has_col, t0, count, out_hnd, lse, table_max):
    """table_max: the table rows' maxima, one per row (INT8's score bound)."""
    dp, lk_pad = ops.dp, ops.lk_pad
    fp4 = ops.qk_format == FMT_FP4_VALUES
    if fp4:  # the emulation's values (bf16 Q and K, fp16 V), K's and V's rows in key_slots order
        v_desc, ks_desc = gluon_desc(ops.v.view(-1, dp), [BLOCK_N, dp]), _gluon_placeholder(p.device)
    else:
        v_desc, ks_desc = gluon_desc(ops.v, [1, 1, BLOCK_N, dp]), gluon_desc(ops.k_scale.view(-1), [BLOCK_N])
    sms = device_info(p.device).sms  # persistent: at most one program per SM, each taking tiles round-robin
    fast(attention_ws_kernel)[(min(count, sms) if sms else count,)](
        gluon_desc(ops.q.view(-1, dp), [BLOCK_M, dp]), gluon_desc(ops.k.view(-1, dp), [BLOCK_N, dp]),
        v_desc, ks_desc, gluon_desc(table.view(-1), [BLOCK_N]),
        ops.q_scale, out_hnd, lse if lse is not None else _empty(p.device),
        ops.v_mean if ops.v_mean is not None else _empty(p.device), ops.v_amax,
        ops.k_norm if ops.k_norm is not None else _empty(p.device),
        table_max if table_max is not None else _empty(p.device),
        ops.q_norm if ops.q_norm is not None else _empty(p.device),
        fixed_max_count if fixed_max_count is not None else _empty(p.device, torch.int32),
        *out_hnd.stride()[:3],
        p.heads_q, p.heads_q // p.heads_kv, p.len_q, ops.lq_pad, lk_pad, p.head_dim_v, t0, count,
        *col_rows, ops.score_factor,
        BM=BLOCK_M, BN=BLOCK_N, DP=dp, SMOOTH_BLOCK=BLOCK_M, STAGES=cfg.num_stages, V_STAGES=cfg.v_ring_stages,
        SUB=cfg.blocks_per_stage,
        RETURN_LSE=lse is not None, HAS_COL=has_col, FP4=fp4, HAS_VMEAN=ops.v_mean is not None,
        SPLIT_KV=cfg.split_kv,
        COUNT_FIXED=fixed_max_count is not None,
        CONSUMER_REGS=WS_CONSUMER_REGS, num_warps=WS_WARPS, maxnreg=WS_MAXNREG,
    )
