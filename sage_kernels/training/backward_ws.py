"""The training backward on Hopper in Gluon: dV, dK and dQ with explicit warp specialisation (sm_90).

The math of backward_kernels.dkdv_kernel and dq_kernel in the default QK mode ("16bit"), without a causal mask
(the other calls run those Triton kernels). Triton 3.6 waits for every wgmma of their loops at once (its
TTGIR has `warp_group_dot_wait {pendings = 0}` after each), so their tensor cores idle through the exponentials
and quantization; here the products are asynchronous and two consumer warpgroups overlap each other's ALU work.

One kernel, three modes. A program owns BR = 128 "rows" (keys for dV and dK, queries for dQ), 64 per consumer
warpgroup; a producer warp streams the "columns" (the queries of every head of the KV group for dV and dK, the
keys for dQ) in steps of SC = 64 (config.DKV_STEP_Q / DQ_STEP_K, the quantization groups) through a
shared-memory ring of STAGES steps, each program once over all of them (not persistent). Per step and warpgroup:
    T  = R . C^T                     16-bit, fp32 accumulation; R: K rows (dV, dK) or Q rows (dQ), C the other
    P  = exp2(T * c + col - m)       dV, dK: P^T (col per row = key, m per column = query); dQ: P
    dP = RD . CD^T                   16-bit (dK: Ṽ rows . dO^T, dQ: dO rows . Ṽ^T), issued before P's exponentials
    G  = P (dV) or P * (dP - D)      INT8 per row over the step
    acc += (G8 . C8) * g_scale[row] * c8_scale[column]     C8: per-channel INT8 dO (dV), Q (dK), smoothed K (dQ)
The next step's products are issued during this step (where: ISSUE_AT). sm_90 only (wgmma, setmaxnreg);
backward.py launches it where `gluon_applies` says so and falls back to the Triton kernels if it cannot be built.
"""
from __future__ import annotations

from .._triton import tl
from .config import DKV_STEP_Q, DQ_STEP_K
from ..kernels.attention_ws import HAS_GLUON, WS_CONSUMER_REGS, WS_MAXNREG, WS_WARPS, gluon_desc

MODES = {"dv": 0, "dk": 1, "dq": 2}
ROWS = 128  # rows per program (two warpgroups of 64)
STEP = DKV_STEP_Q  # columns per step: the quantization group along the streamed side
assert DQ_STEP_K == STEP, "the Gluon backward takes one step size for both sides"
# Launch choices per mode, measured on an H200 at B=1, H=24, L=16k, D=128 (docs/TRAINING.md, "The Gluon backward"):
# - STAGES: ring stages. Steps go in groups of STAGES with static stage indices (a computed index kept ~30 wgmma
#   descriptors in registers), so STAGES must divide the step count, which is even: 1 or 2. Two also measured
#   faster than three or four before (dK and dQ stream ~41 KB per step, dV ~25 KB).
# - ISSUE_AT: where a step issues the next step's products: 0 before waiting for its INT8 product, 1 after it,
#   2 after its dequantization. dV 0; dK and dQ 2 (0 keeps T's and dP's 64 registers live through the
#   dequantization and spills: dK 17.2 ms vs 10.6).
# - A_REGS: bit 0 R, bit 1 RD as the wgmma's A operand from registers instead of shared memory (each warpgroup
#   reads ~72 KB of shared memory per dK/dQ step): dK R (11.4 -> 10.4 ms), dQ RD (10.7 -> 10.1 ms); dV none.
STAGES = {"dv": 2, "dk": 2, "dq": 2}
ISSUE_AT = {"dv": 0, "dk": 2, "dq": 2}
A_REGS = {"dv": 0, "dk": 1, "dq": 2}
MAX_HEAD = 128  # padded head dims up to this (256 would not fit the ring)

if HAS_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

    from ..kernels.common import magic_bits

    _DV = gl.constexpr(0)
    _DK = gl.constexpr(1)
    _DQ = gl.constexpr(2)

    @gluon.jit
    def _max_keep_nan(a, b):
        return gl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)

    @gluon.jit
    def _int8_rows(x):
        """formats.int8.quantize_int8_jit(x, 1): per-row INT8 codes and scales (a NaN-keeping max; the code is
        the low byte of x * (127 / amax) + 1.5 * 2**23)."""
        amax = gl.reduce(gl.abs(x), 1, _max_keep_nan)
        inv = gl.where(amax > 0, gl.div_rn(gl.full_like(amax, 127.0), gl.maximum(amax, 127.0 * 1.1754943508222875e-38)),
                       0.0)
        codes = (x * inv[:, None] + 12582912.0).to(gl.int32, bitcast=True).to(gl.int8)
        return codes, amax * (1.0 / 127.0)

    @gluon.jit
    def _loader(r_desc, rd_desc, c_desc, cd_desc, c8_desc, c8s_desc, m_desc, dd_desc,
                r_smem, rd_smem, c_bufs, cd_bufs, c8_bufs, c8s_bufs, m_bufs, dd_bufs, r_bar, ready, empty,
                r_row, c_row0, c8_row0, c8s0, head_rows, steps_per_head, n_steps,
                SC: gl.constexpr, DP: gl.constexpr, STAGES: gl.constexpr, MODE: gl.constexpr):
        """One warp: the program's row tiles once, then per step its column tiles into ring stage j % STAGES.
        Step j reads columns (j % steps_per_head) * SC of head j // steps_per_head of the streamed side. Steps go
        in groups of STAGES with static stage indices, as the consumers take them."""
        row_bytes: gl.constexpr = r_desc.block_type.nbytes + (0 if MODE == _DV else rd_desc.block_type.nbytes)
        mbarrier.expect(r_bar, row_bytes)
        tma.async_copy_global_to_shared(r_desc, [r_row, 0], r_bar, r_smem)
        if MODE != _DV:
            tma.async_copy_global_to_shared(rd_desc, [r_row, 0], r_bar, rd_smem)
        step_bytes: gl.constexpr = (c_desc.block_type.nbytes + c8_desc.block_type.nbytes + c8s_desc.block_type.nbytes
                                    + (0 if MODE == _DV else cd_desc.block_type.nbytes)
                                    + (0 if MODE == _DQ else m_desc.block_type.nbytes)
                                    + (dd_desc.block_type.nbytes if MODE == _DK else 0))
        for j0 in range(0, n_steps, STAGES):  # (n_steps is a multiple of STAGES: the stage index is static)
            hh = j0 // steps_per_head  # (a group of STAGES steps never spans two heads)
            for S in gl.static_range(STAGES):
                mbarrier.wait(empty.index(S), ((j0 // STAGES) & 1) ^ 1)  # a fresh barrier counts as released
                bar = ready.index(S)
                mbarrier.expect(bar, step_bytes)
                i = j0 + S - hh * steps_per_head
                c_row = c_row0 + hh * head_rows + i * SC
                tma.async_copy_global_to_shared(c_desc, [c_row, 0], bar, c_bufs.index(S))
                if MODE != _DV:
                    tma.async_copy_global_to_shared(cd_desc, [c_row, 0], bar, cd_bufs.index(S))
                tma.async_copy_global_to_shared(c8_desc, [c8_row0 + hh * DP, i * SC], bar, c8_bufs.index(S))
                tma.async_copy_global_to_shared(c8s_desc, [(c8s0 + hh * steps_per_head + i) * DP], bar,
                                                c8s_bufs.index(S))
                if MODE != _DQ:  # the columns are queries: their row statistics (M, D) are indexed like their rows
                    tma.async_copy_global_to_shared(m_desc, [c_row], bar, m_bufs.index(S))
                if MODE == _DK:
                    tma.async_copy_global_to_shared(dd_desc, [c_row], bar, dd_bufs.index(S))

    @gluon.jit
    def _issue(r_tile, rd_tile, c_bufs, cd_bufs, ready, j, t_unused, s: gl.constexpr, STAGES: gl.constexpr,
               MODE: gl.constexpr):
        """Start step j's T (and dK's / dQ's dP) once its stage s (= j % STAGES) has landed; returns their tokens
        (dV: T's twice)."""
        mbarrier.wait(ready.index(s), (j // STAGES) & 1)
        t_tok = warpgroup_mma(r_tile, c_bufs.index(s).permute((1, 0)), t_unused, use_acc=False, is_async=True)
        dp_tok = t_tok
        if MODE != _DV:
            dp_tok = warpgroup_mma(rd_tile, cd_bufs.index(s).permute((1, 0)), t_unused, use_acc=False,
                                   is_async=True)
        return t_tok, dp_tok

    @gluon.jit
    def _step(acc, t_tok, dp_tok, j, head, r_tile, rd_tile, c_bufs, cd_bufs, c8_bufs, c8s_bufs, m_bufs, dd_bufs, ready,
              empty, qk_factor, col_base, col_head, m_row, dd_row, rows, t_unused, prod_unused,
              s_layout: gl.constexpr, o_layout: gl.constexpr, g_layout: gl.constexpr, SC: gl.constexpr,
              s: gl.constexpr, STAGES: gl.constexpr, MODE: gl.constexpr, HAS_COL: gl.constexpr,
              NEXT: gl.constexpr, ISSUE_AT: gl.constexpr):
        """Step j, whose products are in flight (t_tok, dp_tok); returns the accumulator and, with NEXT, step
        j + 1's tokens. Every wait for T and dP is a full one: waited for with a later product still in flight,
        across the loop's back edge, their registers count as in flight for ptxas, which then serialises every
        wgmma of the kernel. s = j % STAGES, static: the wgmma's shared-memory descriptors are then constants (a
        computed stage index kept ~30 descriptors in registers and made the loop spill). head: j's head of the
        streamed side (dK, dV)."""
        col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
        if MODE == _DV:
            t = warpgroup_mma_wait(0, deps=(t_tok, ))
        else:
            t, dp = warpgroup_mma_wait(0, deps=(t_tok, dp_tok))
        if MODE == _DQ:  # rows are queries, columns keys
            sc = t * qk_factor
            if HAS_COL:
                sc = sc + gl.load(col_base + j * SC + gl.arange(0, SC, layout=col_s))[None, :]
            p = gl.exp2(sc - m_row[:, None])
        else:  # rows are keys, columns the queries of head j // steps_per_head
            sc = t * qk_factor
            if HAS_COL:
                sc = sc + gl.load(col_base + head * col_head + rows)[:, None]
            p = gl.exp2(sc - m_bufs.index(s).load(col_s)[None, :])
        if MODE == _DV:
            g = p
        elif MODE == _DQ:
            g = p * (dp - dd_row[:, None])
        else:
            g = p * (dp - dd_bufs.index(s).load(col_s)[None, :])
        g8, g_scale = _int8_rows(g)
        prod_tok = warpgroup_mma(gl.convert_layout(g8, g_layout), c8_bufs.index(s).permute((1, 0)), prod_unused,
                                 use_acc=False, is_async=True)
        c8_scale = c8s_bufs.index(s).load(gl.SliceLayout(0, o_layout))  # (loaded while the product runs)
        if NEXT and ISSUE_AT == 0:  # the next step's products run through this one's dequantization
            t_tok, dp_tok = _issue(r_tile, rd_tile, c_bufs, cd_bufs, ready, j + 1, t_unused, (s + 1) % STAGES,
                                   STAGES, MODE)
            prod = warpgroup_mma_wait(1 if MODE == _DV else 2, deps=(prod_tok, ))
        else:
            prod = warpgroup_mma_wait(0, deps=(prod_tok, ))
        if NEXT and ISSUE_AT == 1:
            t_tok, dp_tok = _issue(r_tile, rd_tile, c_bufs, cd_bufs, ready, j + 1, t_unused, (s + 1) % STAGES,
                                   STAGES, MODE)
        mbarrier.arrive(empty.index(s), count=1)  # every read of stage s is done
        # acc + prod * g_scale * c8_scale in three instructions (kernels.common.add_int32_scaled)
        gs = gl.convert_layout(g_scale, gl.SliceLayout(1, o_layout))[:, None]
        x = gl.fma(magic_bits(prod).to(gl.float32, bitcast=True), gs, -12582912.0 * gs)
        acc = gl.fma(x, c8_scale[None, :], acc)
        if NEXT and ISSUE_AT == 2:
            t_tok, dp_tok = _issue(r_tile, rd_tile, c_bufs, cd_bufs, ready, j + 1, t_unused, (s + 1) % STAGES,
                                   STAGES, MODE)
        return acc, t_tok, dp_tok

    @gluon.jit
    def _consumer(r_smem, rd_smem, c_bufs, cd_bufs, c8_bufs, c8s_bufs, m_bufs, dd_bufs, r_bar, ready, empty,
                  QS, M, DD, col_base, col_head, KBAR, DLSE, OUT, s_ob, s_oh, s_ol, out_b, out_h, stats_base,
                  kbar_base, dlse_base, row0, n_rows, d_out, out_scale, steps_per_head, n_steps,
                  ROW0: gl.constexpr, BM: gl.constexpr, SC: gl.constexpr, DP: gl.constexpr, STAGES: gl.constexpr,
                  MODE: gl.constexpr, HAS_COL: gl.constexpr, HAS_DLSE: gl.constexpr, ISSUE_AT: gl.constexpr,
                  A_REGS: gl.constexpr, num_warps: gl.constexpr):
        """One warpgroup: rows row0 + ROW0 .. + BM against every step, then their gradient rows' store."""
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                           instr_shape=[16, SC, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                           instr_shape=[16, DP, 32])
        g_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        rows = row0 + ROW0 + gl.arange(0, BM, layout=row_s)
        qk_factor = gl.load(QS)
        m_row = qk_factor  # (dQ only: the rows' statistics)
        dd_row = qk_factor
        if MODE == _DQ:
            m_row = gl.load(M + stats_base + rows)
            dd_row = gl.load(DD + stats_base + rows)
        t_unused = gl.zeros([BM, SC], gl.float32, s_layout)  # accumulators that use_acc=False never reads
        prod_unused = gl.zeros([BM, DP], gl.int32, o_layout)
        acc = gl.zeros([BM, DP], gl.float32, o_layout)
        r_tile = r_smem.slice(ROW0, BM)
        rd_tile = rd_smem.slice(ROW0, BM)
        mbarrier.wait(r_bar, 0)
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
        if A_REGS % 2 == 1:  # R as the wgmma's A operand from registers (fewer shared-memory reads per step)
            r_tile = r_tile.load(a_layout)
        if A_REGS // 2 == 1 and MODE != _DV:
            rd_tile = rd_tile.load(a_layout)
        t_tok, dp_tok = _issue(r_tile, rd_tile, c_bufs, cd_bufs, ready, 0, t_unused, 0, STAGES, MODE)
        for j0 in range(0, n_steps - STAGES, STAGES):  # (n_steps is a multiple of STAGES)
            head = j0 // steps_per_head
            for S in gl.static_range(STAGES):
                acc, t_tok, dp_tok = _step(acc, t_tok, dp_tok, j0 + S, head, r_tile, rd_tile, c_bufs, cd_bufs, c8_bufs,
                                           c8s_bufs, m_bufs, dd_bufs, ready, empty, qk_factor, col_base, col_head,
                                           m_row, dd_row, rows, t_unused, prod_unused, s_layout, o_layout,
                                           g_layout, SC, S, STAGES, MODE, HAS_COL, True, ISSUE_AT)
        j0 = n_steps - STAGES  # the last group: no step after its last
        head = j0 // steps_per_head
        for S in gl.static_range(STAGES):
            acc, t_tok, dp_tok = _step(acc, t_tok, dp_tok, j0 + S, head, r_tile, rd_tile, c_bufs, cd_bufs, c8_bufs,
                                       c8s_bufs, m_bufs, dd_bufs, ready, empty, qk_factor, col_base, col_head, m_row,
                                       dd_row, rows, t_unused, prod_unused, s_layout, o_layout, g_layout, SC, S,
                                       STAGES, MODE, HAS_COL, S < STAGES - 1, ISSUE_AT)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        offs_m = row0 + ROW0 + gl.arange(0, BM, layout=row_o)
        offs_d = gl.arange(0, DP, layout=gl.SliceLayout(0, o_layout))
        if HAS_DLSE:  # dQ's exact smooth-K term (dq_kernel)
            dlse = gl.load(DLSE + dlse_base + offs_m, mask=offs_m < n_rows, other=0.0)
            acc += dlse[:, None] * gl.load(KBAR + kbar_base + offs_d)[None, :]
        if MODE != _DV:
            acc = acc * out_scale
        gl.store(OUT + out_b * s_ob + out_h * s_oh + offs_m[:, None] * s_ol + offs_d[None, :],
                 acc.to(OUT.dtype.element_ty), mask=(offs_m < n_rows)[:, None] & (offs_d < d_out)[None, :])

    @gluon.jit(do_not_specialize=("Lq", "Lq_pad", "Lk", "Lk_pad"))  # see _triton.jit
    def grad_ws_kernel(
        r_desc, rd_desc, c_desc, cd_desc, c8_desc, c8s_desc, m_desc, dd_desc,
        QS, M, DD, COL, s_cb, s_ch, KBAR, DLSE, OUT, s_ob, s_oh, s_ol,
        Hq, kv_group, Lq, Lq_pad, Lk, Lk_pad, d_out, out_scale,
        MODE: gl.constexpr, HAS_COL: gl.constexpr, HAS_DLSE: gl.constexpr, STAGES: gl.constexpr,
        BR: gl.constexpr, SC: gl.constexpr, DP: gl.constexpr, CONSUMER_REGS: gl.constexpr, ISSUE_AT: gl.constexpr,
        A_REGS: gl.constexpr, num_warps: gl.constexpr,
    ):
        """Grid (row blocks of BR, batch * heads of the rows: KV heads for dV/dK, query heads for dQ).
        Descriptors over contiguous buffers seen as 2-D rows (1-D for scales and statistics):
          dV / dK: r = K (B*Hk*Lk_pad, DP) [BR, DP]; rd = Ṽ, like r (dK); c = Q (B*Hq*Lq_pad, DP) [SC, DP];
                   cd = dO, like c (dK); c8 = per-channel INT8 dO (dV) or Q (dK) (B*Hq*DP, Lq_pad) [DP, SC];
                   c8s its scales (B*Hq*Lq_pad/SC*DP,) [DP]; m, dd = M, DD (B*Hq*Lq_pad,) [SC].
          dQ:      r = Q [BR, DP]; rd = dO [BR, DP]; c = K [SC, DP]; cd = Ṽ [SC, DP]; c8 = per-channel INT8
                   smoothed K (B*Hk*DP, Lk_pad) [DP, SC]; c8s its scales; M, DD read as pointers.
        QS: [sm_scale * log2(e)] fp32; COL (B|1, Hq|1, 1, Lk_pad) log2 column bias (HAS_COL); KBAR fp32 (B*Hk, DP),
        DLSE fp32 (B, Hq, Lq) (dQ, HAS_DLSE); OUT: the gradient (B, H, L, D) view, unit stride along D.
        num_warps: one consumer warpgroup's (4); the second consumer and the producer are worker partitions."""
        pid = gl.program_id(0)
        bhr = gl.program_id(1)
        row0 = pid * BR
        if MODE == _DQ:
            b = bhr // Hq
            h = bhr % Hq
            bhk = b * (Hq // kv_group) + h // kv_group
            r_row = bhr * Lq_pad + row0
            c_row0 = bhk * Lk_pad
            c8_row0 = bhk * DP
            steps_per_head = Lk_pad // SC
            c8s0 = bhk * steps_per_head
            n_steps = steps_per_head
            head_rows = 0
            col_base = COL + b * s_cb + h * s_ch
            out_h = h
            n_rows = Lq
        else:
            b = bhr // (Hq // kv_group)
            hk = bhr % (Hq // kv_group)
            bhk = bhr
            bh0 = b * Hq + hk * kv_group  # the group's first query head
            r_row = bhr * Lk_pad + row0
            c_row0 = bh0 * Lq_pad
            c8_row0 = bh0 * DP
            steps_per_head = Lq_pad // SC
            c8s0 = bh0 * steps_per_head
            n_steps = kv_group * steps_per_head
            head_rows = Lq_pad
            col_base = COL + b * s_cb + hk * kv_group * s_ch
            out_h = hk
            n_rows = Lk
        r_smem = gl.allocate_shared_memory(r_desc.dtype, r_desc.block_type.shape, r_desc.layout)
        c_bufs = gl.allocate_shared_memory(c_desc.dtype, [STAGES] + c_desc.block_type.shape, c_desc.layout)
        c8_bufs = gl.allocate_shared_memory(c8_desc.dtype, [STAGES] + c8_desc.block_type.shape, c8_desc.layout)
        c8s_bufs = gl.allocate_shared_memory(c8s_desc.dtype, [STAGES] + c8s_desc.block_type.shape, c8s_desc.layout)
        if MODE == _DV:
            rd_smem = r_smem  # (unused)
            cd_bufs = c_bufs
        else:
            rd_smem = gl.allocate_shared_memory(rd_desc.dtype, rd_desc.block_type.shape, rd_desc.layout)
            cd_bufs = gl.allocate_shared_memory(cd_desc.dtype, [STAGES] + cd_desc.block_type.shape, cd_desc.layout)
        if MODE == _DQ:
            m_bufs = c8s_bufs  # (unused: the rows' statistics are registers)
        else:
            m_bufs = gl.allocate_shared_memory(m_desc.dtype, [STAGES] + m_desc.block_type.shape, m_desc.layout)
        if MODE == _DK:
            dd_bufs = gl.allocate_shared_memory(dd_desc.dtype, [STAGES] + dd_desc.block_type.shape, dd_desc.layout)
        else:
            dd_bufs = m_bufs  # (unused)
        r_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(r_bar, count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=2)  # both consumer warpgroups release every stage
        HALF: gl.constexpr = BR // 2
        gl.warp_specialize([
            (_consumer, (r_smem, rd_smem, c_bufs, cd_bufs, c8_bufs, c8s_bufs, m_bufs, dd_bufs, r_bar, ready, empty,
                         QS, M, DD, col_base, s_ch, KBAR, DLSE, OUT, s_ob, s_oh, s_ol, b, out_h, bhr * Lq_pad,
                         bhk * DP, bhr * Lq, row0, n_rows, d_out, out_scale, steps_per_head, n_steps,
                         0, HALF, SC, DP, STAGES, MODE, HAS_COL, HAS_DLSE, ISSUE_AT, A_REGS, num_warps)),
            (_consumer, (r_smem, rd_smem, c_bufs, cd_bufs, c8_bufs, c8s_bufs, m_bufs, dd_bufs, r_bar, ready, empty,
                         QS, M, DD, col_base, s_ch, KBAR, DLSE, OUT, s_ob, s_oh, s_ol, b, out_h, bhr * Lq_pad,
                         bhk * DP, bhr * Lq, row0, n_rows, d_out, out_scale, steps_per_head, n_steps,
                         HALF, HALF, SC, DP, STAGES, MODE, HAS_COL, HAS_DLSE, ISSUE_AT, A_REGS, num_warps)),
            (_loader, (r_desc, rd_desc, c_desc, cd_desc, c8_desc, c8s_desc, m_desc, dd_desc, r_smem, rd_smem, c_bufs,
                       cd_bufs, c8_bufs, c8s_bufs, m_bufs, dd_bufs, r_bar, ready, empty, r_row, c_row0, c8_row0,
                       c8s0, head_rows, steps_per_head, n_steps, SC, DP, STAGES, MODE)),
        ], [num_warps, 1], [CONSUMER_REGS, 24])
else:  # pragma: no cover
    grad_ws_kernel = None

__all__ = ["grad_ws_kernel", "gluon_desc", "MODES", "ROWS", "STEP", "STAGES", "ISSUE_AT", "A_REGS", "MAX_HEAD",
           "HAS_GLUON", "WS_CONSUMER_REGS", "WS_MAXNREG", "WS_WARPS"]
