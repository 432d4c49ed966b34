"""sm_90's TMA kernel: the attention kernel with every operand read through TMA tensor descriptors.

Same math as `attention.attention_kernel` for INT8 Q.K^T with 16-bit, FP8 or INT8 P.V, and for the FP4 emulation
(NVFP4 decoded to exact 16-bit values; PV_FORMAT=FP4_VALUES then covers Q and K too) (it calls the same
`int8_scores`, `softmax_pv` and `store_output`); the bulk-copy engine replaces the pointer arithmetic and vector
loads of the K, V, scale and column-bias tiles, which frees issue slots in a loop that is ALU-issue bound.
Measured on an H200 (docs/BENCHMARKS.md): +10..21% over the pointer kernel at the same launch config.

Everything the loop reads comes through a descriptor because that is what Triton 3.6's Hopper warp
specialisation (`WARP_SPECIALIZE`, tl.range(..., warp_specialize=True) with 4 warps: one producer warpgroup and
two 64-row consumer warpgroups) requires: a pointer load, even of the row scales before the loop, makes that pass
fail to compile. With it the kernel compiles but hangs or faults on the H200 (as does a plain bf16 attention loop),
so no config enables it; it stays a switch (configs.LaunchConfig.warp_specialize) for a later Triton.

The API default (INT8 Q.K^T, 16-bit P.V) and the FP4 emulation at head dim 128 run attention_ws.attention_ws_kernel
instead (Gluon, warp-specialised), falling back to this kernel if that one cannot be built.
Not handled here (the launcher keeps `attention_kernel` for them): causal masking, fp32 inputs, native FP4, head
dims above 128, and V tensors whose strides TMA cannot describe (16-byte alignment).
"""
from __future__ import annotations

from .._triton import jit, tl
from .attention import int8_scores, softmax_pv, store_output, v_second_level
from .common import column_bias_row, dot16, program_coords
from .key_slots import groups_to_keys, keys_to_groups
from .prepass import C_FP4_VALUES, C_V16


@jit(lengths=("Lq", "t0", "col_rows_b", "col_rows_h", "col_rows_g"))
def attention_tma_kernel(
    q_desc, qs_desc, k_desc, ks_desc, v_desc, vs_desc, col_desc, vmean_desc,
    O, LSE, V_AMAX,
    s_ob, s_oh, s_ol,
    Hq, kv_group, Lq, Lq_pad, Lk_pad, DV, t0, col_rows_b, col_rows_h, col_rows_g, qk_factor,
    BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr, SMOOTH_BLOCK: tl.constexpr,
    PV_FORMAT: tl.constexpr, RETURN_LSE: tl.constexpr, HAS_VMEAN: tl.constexpr, HAS_COL: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Descriptors (all 2-D except V16's): q (B*Hq*Lq_pad, DP) int8 or bf16 (FP4) values [BM, DP]; qs (1, B*Hq*Lq_pad)
    [1, BM]; k (B*Hk*Lk_pad, DP) [BN, DP]; ks (1, B*Hk*Lk_pad) [1, BN]; FP4 values: v (B*Hk*Lk_pad, DP) [BN, DP]
    and the scores' factor qk_factor (sm_scale*log2(e)); v: 16-bit (B, Hk, Lk, DV) [1, 1, BN, DP]
    (the caller's tensor, zero-filled past Lk and DV) or INT8/FP8 (B*Hk*DP, Lk_pad) [DP, BN]; vs (B*Hk*Lk_pad/BN,
    DP) [1, DP]; col: the column-bias table as (rows, Lk_pad) [1, BN], row = b*col_rows_b + h*col_rows_h +
    (block - t0)*col_rows_g (col_rows_g = 0 when one row serves every query block; grid: common.program_coords);
    vmean (B*Hk, DP) [1, DP]; V_AMAX: fp32 (B*Hk,) for FP4's second-level V scale. Unused descriptors may be any
    tensor's. LSE is stored without the smoothing shift
    (the host adds it: a second [1, BM] descriptor load makes Triton 3.6's warp-specialisation pass fail)."""
    pid_bh, pid_m, b, h, hk, bhk, q_row, k_row = program_coords(Hq, kv_group, t0, Lq_pad, Lk_pad, BM, SMOOTH_BLOCK)
    col_row = column_bias_row(b, h, pid_m, t0, col_rows_b, col_rows_h, col_rows_g, BM, SMOOTH_BLOCK)
    q = q_desc.load([q_row, 0])
    if PV_FORMAT != C_FP4_VALUES:
        q_scale = tl.reshape(qs_desc.load([0, q_row]), (BM,))

    acc = tl.zeros((BM, DP), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    for start_n in tl.range(0, Lk_pad, BN, warp_specialize=WARP_SPECIALIZE):
        k = k_desc.load([k_row + start_n, 0])
        if PV_FORMAT == C_FP4_VALUES:  # the FP4 emulation: Q, K and V as exact 16-bit values
            s = dot16(q, tl.trans(k), INTERPRET) * qk_factor  # keys in key_slots order (run._tma_applies)
            if HAS_COL:
                s = s + groups_to_keys(keys_to_groups(col_desc.load([col_row, start_n]), 1, BN, False), 1, BN, True)
            v = v_desc.load([k_row + start_n, 0])
            v_scale = 0.0
        else:
            qk = tl.dot(q, tl.trans(k))
            col = 0.0
            if HAS_COL:
                col = col_desc.load([col_row, start_n])
            s = int8_scores(qk, ks_desc.load([0, k_row + start_n]), q_scale, col, HAS_COL)
            if PV_FORMAT == C_V16:
                v = tl.reshape(v_desc.load([b, hk, start_n, 0]), (BN, DP))
                v_scale = 0.0
            else:
                v = v_desc.load([bhk * DP, start_n])
                v_scale = vs_desc.load([bhk * (Lk_pad // BN) + start_n // BN, 0])
        acc, l_i, m_i = softmax_pv(acc, l_i, m_i, s, v, v_scale, BM, BN, PV_FORMAT, True, INTERPRET)

    offs_m = pid_m * BM + tl.arange(0, BM)
    vmean = 0.0
    if HAS_VMEAN:
        vmean = vmean_desc.load([bhk, 0])
    store_output(acc, l_i, m_i, v_second_level(V_AMAX, bhk, PV_FORMAT), vmean, 0.0, O + b * s_ob + h * s_oh, s_ol,
                 LSE + pid_bh * Lq, offs_m, Lq, DV, DP, HAS_VMEAN, RETURN_LSE)
