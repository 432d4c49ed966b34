"""Pre-pass kernels: smoothing, rotation and quantization of Q, K, V, and the column-bias table.

Each kernel reads the caller's tensors once through their strides (HND or NHD, no copies) and writes the padded
operand buffers the attention kernel reads without bounds checks. The math is the reference's
(sage_kernels/reference/quantized.py, `prepare_int8` / `prepare_fp4`); tests compare the two.
"""
from __future__ import annotations

from .._triton import jit, tl
from ..formats.e2m1 import e2m1_codes_jit, nvfp4_block_amax_jit, nvfp4_block_jit, tensor_scale_jit
from ..formats.common import amax_keep_nan, div_or_zero_jit
from ..formats.e4m3 import round_e4m3_jit
from ..formats.int8 import quantize_int8_jit
from .common import dot16, dot16_acc, pack_pairs
from .key_slots import groups_to_keys, keys_to_groups, slot_of_key_jit

# Operand formats: plain ints for host code, constexpr twins (C_*) for use inside kernels, which may only read
# constexpr globals (Triton's interpreter accepts plain ones, the compiler does not).
FMT_INT8 = 0  # int8 codes + fp32 scale per row
FMT_FP4_VALUES = 1  # NVFP4 decoded to exact 16-bit values (Q, K bf16; V fp16 without g): the emulation's operands
FMT_FP4_CODES = 2  # NVFP4 packed codes + E4M3 block scales (+ fp32 second level): the native kernel's operands
FMT_FP8 = 3  # V only: E4M3 values + fp32 scale per channel and key block (FP8 P.V mode)
FMT_V16 = 4  # V only: not quantized; the attention kernel reads the caller's 16-bit V directly
C_INT8 = tl.constexpr(FMT_INT8)
C_FP4_VALUES = tl.constexpr(FMT_FP4_VALUES)
C_FP4_CODES = tl.constexpr(FMT_FP4_CODES)
C_FP8 = tl.constexpr(FMT_FP8)
C_V16 = tl.constexpr(FMT_V16)
# prep_rows_kernel's WRITE_NORM: the INT8 rows' dequantized norms |scale * codes| for sm_90's score bound
# (attention_ws._first_block): none, each head's largest (K: an atomic max per tile into a (B*H,) filled with
# -inf or 0), or every row's (Q: (B*H*L_pad,))
NORM_NONE, NORM_HEAD_MAX, NORM_ROWS = 0, 1, 2
C_NORM_NONE, C_NORM_HEAD_MAX, C_NORM_ROWS = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)


@jit
def load_rows(X, sxl, row0, L, D, BT: tl.constexpr, DP: tl.constexpr):
    """[BT, DP] tile of rows row0.. of one (batch, head), zero outside [L, D]; also returns the row mask.
    The last dim must be contiguous (the host guarantees it): a runtime column stride would defeat vector loads."""
    rows = row0 + tl.arange(0, BT)
    cols = tl.arange(0, DP)
    live = rows < L
    x = tl.load(X + rows[:, None] * sxl + cols[None, :], mask=live[:, None] & (cols[None, :] < D), other=0.0)
    return x, live


@jit(lengths=("L",))
def prep_rows_kernel(
    X, sxb, sxh, sxl,  # input (B, H, L, D) through strides, D contiguous
    MEAN, smb, smh, smg,  # fp32 means: read (MEAN_MODE 1) or written per tile (MEAN_MODE 2)
    MEAN_R,  # fp32 (B, H, DP): the mean times ROT (MEAN_MODE 1 with ROTATE), same strides as MEAN's
    KBAR, skb, skh,  # fp32 key means (B, Hk, D) for the LSE shift (Q only)
    SHIFT,  # fp32 (B, H, L_pad) out: sm_scale * (x_i - mean) . kbar
    ROT,  # (DP, DP) ±1 rotation, input dtype; its columns in key_slots order when COL_SLOTS
    OUT, OUT_SCALE, OUT_SF,  # operand buffers (see FMT_*), contiguous (B, H, L_pad, ...)
    NORM,  # fp32 out (WRITE_NORM, INT8): (B * H,) each head's largest dequantized row norm, (B * H * L_pad,) each row's
    H, L, L_pad, D, kv_group, row_factor, sm_scale,
    BT: tl.constexpr, DP: tl.constexpr, FORMAT: tl.constexpr, MEAN_MODE: tl.constexpr,
    ROTATE: tl.constexpr, WRITE_SHIFT: tl.constexpr, X_FP32: tl.constexpr, KEY_SLOTS: tl.constexpr,
    COL_SLOTS: tl.constexpr, SUB: tl.constexpr, INTERPRET: tl.constexpr, WRITE_NORM: tl.constexpr,
):
    """Q or K rows, one BT-row tile per program (head-major): subtract the mean (K smoothing / Q smoothing),
    optionally rotate (Hadamard), quantize per row (INT8, or NVFP4 along the head dim with a per-row power-of-two
    second level). KEY_SLOTS: K's FP4 values stored with their rows in key_slots order (the sm_90 emulation's).
    COL_SLOTS (FP4 values, ROTATE): ROT's columns, and so the stored Q and K columns, are in key_slots order: in
    the tensor-core accumulator a group of 16 columns is then one thread's registers (one max and one scale per
    group, no shuffles; the attention's dot products do not depend on the order of the columns).

    The tile goes in chunks of SUB rows (a few values per thread live: more programs per SM, and one chunk's code
    in the instruction cache, not the tile's). With ROTATE the mean's rotation comes for free: with Q smoothing
    per tile, from the tensor cores' sums of the rotated rows (sum_i x_i R = (sum_i x_i) R) in a first pass over
    the chunks; with a mean per head (MEAN_MODE 1), precomputed (MEAN_R).
    WRITE_NORM (INT8 codes; NORM_*): the rows' norms |scale * codes| (times row_factor), from which sm_90's Gluon
    kernel bounds every score of a row before its loop (attention_ws._first_block): K's largest per head (an
    atomic max: NORM starts at -inf or 0), Q's per row."""
    t = tl.program_id(0)
    cols = tl.arange(0, DP)
    tiles_per_head = L_pad // BT
    pid_t = t % tiles_per_head
    pid_bh = t // tiles_per_head
    b = pid_bh // H
    h = pid_bh % H
    row0 = pid_t * BT
    X_head = X + b * sxb + h * sxh
    if ROTATE:
        r = tl.load(ROT + cols[:, None] * DP + cols[None, :])
    mean_r = tl.zeros((DP,), tl.float32)
    if MEAN_MODE == 1:
        mean = tl.load(MEAN + b * smb + h * smh + cols)
        if ROTATE:
            mean_r = tl.load(MEAN_R + b * smb + h * smh + cols)
    elif MEAN_MODE == 2:  # the mean of this tile's real rows: one Q smoothing block
        sums = tl.zeros((SUB, DP), tl.float32)
        sums_r = tl.zeros((SUB, DP), tl.float32)
        for c in range(0, BT, SUB):
            x_raw, _ = load_rows(X_head, sxl, row0 + c, L, D, SUB, DP)
            sums += x_raw.to(tl.float32)
            if ROTATE:
                sums_r = _rotate(x_raw, r, sums_r, X_FP32, INTERPRET)
        # x (1 / n): the division for whole tiles (n = 128), within an ulp of it for a last partial one
        inv_n = tl.math.div_rn(1.0, tl.minimum(tl.maximum(L - row0, 1), BT).to(tl.float32))
        mean = tl.sum(sums, axis=0) * inv_n
        tl.store(MEAN + b * smb + h * smh + pid_t * smg + cols, mean)
        if ROTATE:
            mean_r = tl.sum(sums_r, axis=0) * inv_n
    else:
        mean = tl.zeros((DP,), tl.float32)
    if WRITE_SHIFT:
        kbar = tl.load(KBAR + b * skb + (h // kv_group) * skh + cols)
    norm_max = tl.full((), 0.0, tl.float32)
    for c in range(0, BT, SUB):
        x_raw, live = load_rows(X_head, sxl, row0 + c, L, D, SUB, DP)
        out_rows = pid_bh * L_pad + row0 + c + tl.arange(0, SUB)
        if WRITE_SHIFT or not ROTATE:
            xs = tl.where(live[:, None], x_raw.to(tl.float32) - mean[None, :], 0.0)
        if WRITE_SHIFT:
            tl.store(SHIFT + out_rows, sm_scale * tl.sum(xs * kbar[None, :], axis=1))
        if ROTATE:  # (x - mean) R == x R - mean R: x R is exact from the raw inputs
            xr = _rotate(x_raw, r, tl.zeros((SUB, DP), tl.float32), X_FP32, INTERPRET)
            # padded rows (x = 0) stay 0: one FMA, x R - mean R exactly on real rows (mean R x 1 is exact)
            xs = xr - mean_r[None, :] * live.to(tl.float32)[:, None]
        if FORMAT == C_INT8:
            codes, scale = quantize_int8_jit(xs, 1)
            tl.store(OUT + out_rows[:, None] * DP + cols[None, :], codes)
            tl.store(OUT_SCALE + out_rows, scale * row_factor)
            if WRITE_NORM != C_NORM_NONE:
                cf = codes.to(tl.float32)
                norms = scale * row_factor * tl.sqrt(tl.sum(cf * cf, 1))
                if WRITE_NORM == C_NORM_ROWS:
                    tl.store(NORM + out_rows, norms)
                else:
                    norm_max = tl.maximum(norm_max, tl.max(norms, 0))
        else:  # NVFP4 along the head dim, the row's second level from its groups' maxima
            xg = keys_to_groups(xs, SUB, DP, COL_SLOTS)
            amax = amax_keep_nan(xg, 2)
            g = tensor_scale_jit(tl.max(amax, axis=1))
            g_inv = tl.math.div_rn(tl.full((SUB,), 1.0, tl.float32), g)
            rq, sc = nvfp4_block_amax_jit(xg, amax, g[:, None], g_inv[:, None])
        if FORMAT == C_FP4_VALUES:
            # code value x (scale x g): exact, as (code value x scale) x g (scale x g >= 2**-129: a normal or
            # exact subnormal fp32)
            vals = groups_to_keys(rq * (sc * g[:, None])[:, :, None], SUB, DP, COL_SLOTS)
            if KEY_SLOTS:  # K for the emulation kernel on sm_90: rows in key_slots order
                out_rows = pid_bh * L_pad + row0 + slot_of_key_jit(c + tl.arange(0, SUB))
            tl.store(OUT + out_rows[:, None] * DP + cols[None, :], vals.to(tl.bfloat16))
        elif FORMAT == C_FP4_CODES:  # (natural column order: COL_SLOTS is the emulation's)
            packed = pack_pairs(e2m1_codes_jit(tl.reshape(rq, (SUB, DP))), SUB, DP)
            half = tl.arange(0, DP // 2)
            tl.store(OUT + out_rows[:, None] * (DP // 2) + half[None, :], packed)
            sfc = tl.arange(0, DP // 16)
            tl.store(OUT_SF + out_rows[:, None] * (DP // 16) + sfc[None, :], sc.to(OUT_SF.dtype.element_ty))
            tl.store(OUT_SCALE + out_rows, g * row_factor)
    if WRITE_NORM == C_NORM_HEAD_MAX:
        tl.atomic_max(NORM + pid_bh, norm_max)


@jit
def _rotate(x_raw, r, acc, X_FP32: tl.constexpr, INTERPRET: tl.constexpr):
    """acc + x R on the tensor cores (fp32 accumulation): exact products for 16-bit x and ±1 R; fp32 x as two
    bf16 terms, which carry it to ~2**-17, far below the quantizers' steps."""
    if X_FP32:
        x_hi = x_raw.to(tl.bfloat16)
        acc = dot16_acc(x_hi, r, acc, INTERPRET)
        acc = dot16_acc((x_raw - x_hi.to(tl.float32)).to(tl.bfloat16), r, acc, INTERPRET)
    else:
        acc = dot16_acc(x_raw, r, acc, INTERPRET)
    return acc


@jit(lengths=("L",))
def prep_v_kernel(
    V, svb, svh, svl,  # input (B, Hk, L, Dv) through strides, Dv contiguous
    VMEAN,  # fp32 (B, Hk, DP) channel means, subtracted when SUB_MEAN
    V_AMAX,  # fp32 (B * Hk,) |V|'s max (x2 with SUB_MEAN), whose tensor_scale is the second level (fp4 formats)
    OUT, OUT_SCALE, OUT_SF,
    H, L, L_pad, D,
    BN: tl.constexpr, DP: tl.constexpr, FORMAT: tl.constexpr, SUB_MEAN: tl.constexpr, KEY_SLOTS: tl.constexpr,
):
    """One BN-token block of V: int8/fp8 per channel (scales per block, stored transposed, tokens contiguous) or
    NVFP4 along tokens (values token-major for the emulation, packed codes transposed for the native kernel)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    row0 = pid_n * BN
    if FORMAT == C_FP4_VALUES:
        _prep_v_fp4_values(V + b * svb + h * svh, svl, VMEAN + pid_bh * DP, V_AMAX + pid_bh,
                           OUT + pid_bh * L_pad * DP, row0, L, D, BN, DP, SUB_MEAN, KEY_SLOTS)
        return
    x_raw, live = load_rows(V + b * svb + h * svh, svl, row0, L, D, BN, DP)
    x = x_raw.to(tl.float32)
    cols = tl.arange(0, DP)
    toks = row0 + tl.arange(0, BN)
    if SUB_MEAN:
        x = tl.where(live[:, None], x - tl.load(VMEAN + pid_bh * DP + cols)[None, :], 0.0)
    if FORMAT == C_INT8:
        codes, scale = quantize_int8_jit(x, 0)
        tl.store(OUT + pid_bh * DP * L_pad + cols[None, :] * L_pad + toks[:, None], codes)
        tl.store(OUT_SCALE + (pid_bh * (L_pad // BN) + pid_n) * DP + cols, scale)
    elif FORMAT == C_FP8:
        amax = amax_keep_nan(x, 0)  # NaN stays visible
        inv = div_or_zero_jit(448.0, amax)
        # Rounded arithmetically first: the cast then only stores exact values (Triton's interpreter mis-rounds).
        vals = round_e4m3_jit(x * inv[None, :])
        tl.store(OUT + pid_bh * DP * L_pad + cols[None, :] * L_pad + toks[:, None], vals.to(OUT.dtype.element_ty))
        tl.store(OUT_SCALE + (pid_bh * (L_pad // BN) + pid_n) * DP + cols, amax * (1.0 / 448.0))
    else:  # NVFP4 codes for the native kernel: transposed, tokens packed two per byte
        g = tensor_scale_jit(tl.load(V_AMAX + pid_bh))
        g_inv = tl.math.div_rn(1.0, g)
        xt = tl.reshape(tl.trans(x), (DP, BN // 16, 16))  # channels x key groups of 16
        r, sc = nvfp4_block_jit(xt, g, g_inv)
        packed = pack_pairs(e2m1_codes_jit(tl.reshape(r, (DP, BN))), DP, BN)
        half = row0 // 2 + tl.arange(0, BN // 2)
        tl.store(OUT + pid_bh * DP * (L_pad // 2) + cols[:, None] * (L_pad // 2) + half[None, :], packed)
        grp = row0 // 16 + tl.arange(0, BN // 16)
        tl.store(OUT_SF + pid_bh * DP * (L_pad // 16) + cols[:, None] * (L_pad // 16) + grp[None, :],
                 sc.to(OUT_SF.dtype.element_ty))


@jit
def _prep_v_fp4_values(V, svl, VMEAN, V_AMAX, OUT, row0, L, D, BN: tl.constexpr, DP: tl.constexpr,
                       SUB_MEAN: tl.constexpr, KEY_SLOTS: tl.constexpr):
    """prep_v_kernel's NVFP4 values for the emulation (one head's V, VMEAN, V_AMAX and OUT): fp16 code value x block
    scale, without the second level g, which the attention kernels' epilogue applies (exact in fp16: 2 x 4
    significant bits, 2**-10 ... 2688), token-major, rows in key_slots order when KEY_SLOTS (as K's).

    The tile is indexed [(group, channel), token in group]: the channels are the contiguous axis, so Triton gives
    each thread 8 channels x all 16 tokens of a group, and the group's max, its scale's rounding and reciprocal run
    once per group in registers. (As a [tokens, channels] tile a group spanned 8 threads in 4 warps, each of which
    computed all of its scales: ~40 instructions per value, with shared-memory reductions.)"""
    gc = tl.arange(0, (BN // 16) * DP)
    ch = gc % DP
    tok = row0 + (gc // DP)[:, None] * 16 + tl.arange(0, 16)[None, :]
    live = tok < L
    x = tl.load(V + tok * svl + ch[:, None], mask=live & (ch[:, None] < D), other=0.0).to(tl.float32)
    if SUB_MEAN:
        x = tl.where(live, x - tl.load(VMEAN + ch)[:, None], 0.0)
    g = tensor_scale_jit(tl.load(V_AMAX))
    r, sc = nvfp4_block_jit(tl.reshape(x, ((BN // 16) * DP, 1, 16)), g, tl.math.div_rn(1.0, g))
    vals = tl.reshape(r * sc[:, :, None], ((BN // 16) * DP, 16))
    rows = slot_of_key_jit(tok) if KEY_SLOTS else tok  # (row0 is a multiple of 64, which slot_of_key keeps)
    tl.store(OUT + rows * DP + ch[:, None], vals.to(tl.float16))


@jit(lengths=("G", "t0", "t1", "bh0", "Lk"))
def column_bias_kernel(
    QBAR, sqb, sqh, sqg,  # fp32 query means (B, Hq, G, D)
    K, skb, skh, skl,  # raw keys (B, Hk, Lk, D) through strides, D contiguous
    KB, skbb, skbh,  # fp32 key bias (B|1, Hq|1, Lk), natural log, stride 0 where broadcast
    OUT,  # fp32 (t1 - t0, Lk_pad): table rows t0 .. t1 - 1
    OUT_MAX,  # fp32 (t1 - t0,) from -inf (WRITE_MAX): each row's max, an atomic max per program (attention_ws)
    H, kv_group, G, t0, t1, bh0, Lk, Lk_pad, D, c,
    BG: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr, HAS_KB: tl.constexpr, K_FP32: tl.constexpr,
    WRITE_MAX: tl.constexpr, INTERPRET: tl.constexpr,
):
    """c * (q̄_g . k_j) + log2(e) * bias_j for a [BG, BN] tile, -inf for padded keys.

    Table rows are numbered across heads (row = (b * H + h) * G + g) and a launch writes rows t0 .. t1 - 1, which
    may start and end inside a head: grid (key blocks, row tiles, heads from bh0); each program takes BG rows of
    one head (so one K tile) from the first of that head's rows in the range, and exits if it has none.
    q̄ is fp32; it is split into two terms of k's dtype (hi + lo) so that two 16-bit tensor-core dots give the
    product to fp32 accuracy (16-bit k values are exact; fp32 keys are split as well)."""
    pid_n = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_bh = bh0 + tl.program_id(2)
    head_row = pid_bh * G  # table row of this head's group 0
    g_first = tl.maximum(t0 - head_row, 0) + pid_g * BG
    g_end = tl.minimum(t1 - head_row, G)
    if g_first >= g_end:
        return
    b = pid_bh // H
    h = pid_bh % H
    gs = g_first + tl.arange(0, BG)
    live = gs < g_end
    cols = tl.arange(0, DP)
    qbar = tl.load(QBAR + b * sqb + h * sqh + gs[:, None] * sqg + cols[None, :],
                   mask=live[:, None] & (cols[None, :] < D), other=0.0)
    k, _ = load_rows(K + b * skb + (h // kv_group) * skh, skl, pid_n * BN, Lk, D, BN, DP)
    hi = qbar.to(tl.bfloat16 if K_FP32 else k.dtype)
    lo = (qbar - hi.to(tl.float32)).to(hi.dtype)
    if K_FP32:  # fp32 keys: split them too; lo*lo dropped (~2**-16 of the product, far below INT8's step)
        k_hi = k.to(tl.bfloat16)
        k_lo = (k - k_hi.to(tl.float32)).to(tl.bfloat16)
        acc = (dot16(hi, tl.trans(k_hi), INTERPRET) + dot16(lo, tl.trans(k_hi), INTERPRET)
               + dot16(hi, tl.trans(k_lo), INTERPRET))
    else:
        acc = dot16(hi, tl.trans(k), INTERPRET) + dot16(lo, tl.trans(k), INTERPRET)
    keys = pid_n * BN + tl.arange(0, BN)
    t = c * acc
    if HAS_KB:
        kb = tl.load(KB + b * skbb + h * skbh + keys, mask=keys < Lk, other=0.0)
        t += 1.4426950408889634 * kb[None, :]
    t = tl.where(keys[None, :] < Lk, t, float("-inf"))
    tl.store(OUT + (head_row + gs - t0)[:, None].to(tl.int64) * Lk_pad + keys[None, :], t, mask=live[:, None])
    if WRITE_MAX:
        tl.atomic_max(OUT_MAX + (head_row + gs - t0), tl.max(t, 1), mask=live)
