"""The Hopper fast path written in Gluon: INT8 Q.K^T, 16-bit P.V attention (and the FP4 emulation) with explicit
warp specialisation.

Same math as `attention.attention_kernel` with INT8 Q.K^T and 16-bit P.V (the API's default int8 mode), and with
FP4 (FP4=True) as the FP4 emulation (NVFP4 Q, K decoded to exact bf16 values, V to fp16, K and V in key_slots
order, P quantized to NVFP4 in registers: `attention.fp4_p`, as the other kernels); the torch mirror of both is
reference/quantized.py. Laid out FlashAttention-3's way for sm_90:
  - a producer warp streams K, its row scales (INT8), V and the column bias into a shared-memory ring of STAGES
    stages of SUB key blocks each, with TMA and mbarriers (`k_ready` / `k_empty` per stage: Triton 3.6 puts a
    partition-wide barrier before every mbarrier wait and release of the consumers, so fewer, larger stages sync
    less often; with SPLIT_KV, the FP4 emulation's one block per stage, a stage's V side has its own `v_ready` /
    `v_empty` and its own V_STAGES, and its K side goes back as soon as its scores are made: -4..6% kernel time with
    4 K and 2 V stages);
  - two independent consumer warpgroups of 64 query rows each: asynchronous wgmma for S = Q.K^T (INT8: int32,
    adding the bits of 1.5*2**23 makes int -> float one add and a bitcast; FP4: bf16 values, fp32), the online
    softmax in fp32, then P.V with P in registers. INT8 keeps one reference max per row for a whole tile where a
    bound on its scores allows (`_first_block`): no row max, rescale or wait for them in its loop. The next
    block's Q.K^T is issued before this block's softmax, and being separate partitions, one warpgroup's softmax
    overlaps the other's MMAs;
  - persistent: one program per SM takes 128-row tiles round-robin, the ring running on from tile to tile, so the
    next tile's Q and first key blocks load during this tile's last block and its store (a program per tile
    paid that start-up per tile: the FP4 emulation's kernel -2..3% at 4.6k-16k tokens, INT8 -1% at 4.6k).
Triton 3.6's automatic warp specialisation hangs on this loop (docs/BENCHMARKS.md); Gluon states the partitions and
barriers explicitly. sm_90 only (wgmma, setmaxnreg); configs.launch_config picks it, kernels/run.py launches it.
"""
from __future__ import annotations

import functools

import torch

try:  # Gluon ships with Triton >= 3.5; without it the launcher never picks this kernel
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    HAS_GLUON = True
except Exception:  # pragma: no cover - only on installs without gluon
    HAS_GLUON = False

WS_WARPS = 4  # per consumer partition (one warpgroup); the kernel's num_warps
WS_MAXNREG = 168  # 12 warps (2 consumer warpgroups + the producer's, rounded up) x 168 fill the 64K registers
WS_CONSUMER_REGS = 240  # after setmaxnreg: what the producer's 24 leave to each consumer warpgroup


def gluon_desc(t, block: list[int]):
    """A Gluon TMA descriptor over tensor t (its shape and strides; unit stride last) read `block` at a time, in
    the widest shared-memory swizzle the block allows (1-D blocks: unswizzled)."""
    return GluonDescriptor(t, list(t.shape), list(t.stride()), block, _smem_layout(tuple(block), t.dtype))


@functools.lru_cache(maxsize=64)
def _smem_layout(block: tuple, dtype: torch.dtype):
    """(Cached: building a layout per descriptor per call is measurable host time at Flux's sizes.)"""
    if len(block) == 1:
        return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=dtype.itemsize * 8, rank=1)
    return gl.NVMMASharedLayout.get_default_for(list(block), _GL_DTYPES[dtype])


if HAS_GLUON:
    from .attention import fp4_p, int8_scores_from_bits, v_second_level
    from .common import column_bias_row, magic_bits, tile_coords
    from .key_slots import keys_to_groups
    from .prepass import C_FP4_VALUES, C_V16
    from ..options import FIXED_MAX_BF16, FIXED_MAX_FP16

    # (HEADROOM, LIMIT) of `_first_block`, for P in fp16 and in bf16 (shared with the torch mirror)
    _FIXED_HEADROOM_FP16, _FIXED_LIMIT_FP16 = gl.constexpr(FIXED_MAX_FP16[0]), gl.constexpr(FIXED_MAX_FP16[1])
    _FIXED_HEADROOM_BF16, _FIXED_LIMIT_BF16 = gl.constexpr(FIXED_MAX_BF16[0]), gl.constexpr(FIXED_MAX_BF16[1])
    _GL_DTYPES = {torch.int8: gl.int8, torch.float32: gl.float32, torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}

    @gluon.jit
    def _load_partition(q_desc, k_desc, v_desc, ks_desc, col_desc, q_smem, k_bufs, v_bufs, ks_bufs, col_bufs,
                        q_bar, q_empty, k_ready, k_empty, v_ready, v_empty, Hq, kv_group, t0, Lq_pad, Lk_pad,
                        col_rows_b, col_rows_h, col_rows_g, count, BM: gl.constexpr, BN: gl.constexpr,
                        SMOOTH_BLOCK: gl.constexpr, STAGES: gl.constexpr, V_STAGES: gl.constexpr, SUB: gl.constexpr,
                        HAS_COL: gl.constexpr, FP4: gl.constexpr, SPLIT_KV: gl.constexpr):
        """One warp, for each of this program's tiles: Q (once both consumers are done with the previous tile's),
        then for every stage of SUB key blocks their K side (K, K's scales (INT8), the column bias) and their V
        side into a shared-memory ring (an odd last stage also loads the block past the end: zero-filled or
        another head's rows, never read). A stage goes back once its last P.V is done, or with SPLIT_KV its K and
        V sides have their own barriers and its K side goes back as soon as its scores are made, so the K side of
        a later block loads a block earlier. The ring runs on across tiles, so the next tile's first stages load
        during this tile's last blocks and its store. FP4: V is the emulation's (B*Hk*Lk_pad, DP) rows, K's; else
        the caller's (B, Hk, Lk, DV)."""
        k_bytes: gl.constexpr = SUB * (k_desc.block_type.nbytes + (0 if FP4 else ks_desc.block_type.nbytes)
                                       + (col_desc.block_type.nbytes if HAS_COL else 0))
        v_bytes: gl.constexpr = SUB * v_desc.block_type.nbytes
        n_stages = gl.cdiv(Lk_pad // BN, SUB)
        stage_base = 0  # stages of the ring filled for earlier tiles
        n_done = 0  # earlier tiles of this program
        for tile in range(gl.program_id(0), count, gl.num_programs(0)):
            pid_bh, pid_m, b, h, hk, bhk, q_row, k_row = tile_coords(tile, Hq, kv_group, t0, Lq_pad, Lk_pad, BM,
                                                                     SMOOTH_BLOCK)
            col_off = column_bias_row(b, h, pid_m, t0, col_rows_b, col_rows_h, col_rows_g, BM, SMOOTH_BLOCK) * Lk_pad
            mbarrier.wait(q_empty, (n_done & 1) ^ 1)  # a fresh barrier counts as released
            mbarrier.expect(q_bar, q_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_bar, q_smem)
            for i in range(n_stages):
                g = stage_base + i
                stage = g % STAGES
                phase = ((g // STAGES) & 1) ^ 1
                mbarrier.wait(k_empty.index(stage), phase)
                bar = k_ready.index(stage)
                mbarrier.expect(bar, k_bytes if SPLIT_KV else k_bytes + v_bytes)
                for hh in gl.static_range(SUB):
                    start = (i * SUB + hh) * BN
                    buf = stage * SUB + hh
                    tma.async_copy_global_to_shared(k_desc, [k_row + start, 0], bar, k_bufs.index(buf))
                    if not FP4:
                        tma.async_copy_global_to_shared(ks_desc, [k_row + start], bar, ks_bufs.index(buf))
                    if HAS_COL:
                        tma.async_copy_global_to_shared(col_desc, [col_off + start], bar, col_bufs.index(buf))
                stage_v = g % V_STAGES  # (== stage without SPLIT_KV)
                if SPLIT_KV:
                    mbarrier.wait(v_empty.index(stage_v), ((g // V_STAGES) & 1) ^ 1)
                    bar = v_ready.index(stage_v)
                    mbarrier.expect(bar, v_bytes)
                for hh in gl.static_range(SUB):
                    start = (i * SUB + hh) * BN
                    buf = stage_v * SUB + hh
                    if FP4:
                        tma.async_copy_global_to_shared(v_desc, [k_row + start, 0], bar, v_bufs.index(buf))
                    else:
                        tma.async_copy_global_to_shared(v_desc, [b, hk, start, 0], bar, v_bufs.index(buf))
            stage_base += n_stages
            n_done += 1

    @gluon.jit
    def _qk_issue(q_smem, k_bufs, k_ready, j, unused_acc, STAGES: gl.constexpr, SUB: gl.constexpr):
        """Start S = Q.K^T of key block j (numbered along the ring, across this program's tiles: each tile starts at
        a stage) once its K side has landed, on the tensor cores; returns the token.
        use_acc=False: no instruction may write or read the accumulator's registers while a wgmma is in flight, or
        ptxas serialises every wgmma of the kernel (warning C7514); so no register init, and the magic-number offset
        that makes int -> float a bitcast is one integer add after the wait."""
        if j % SUB == 0:  # the first block of its stage: wait for the stage's tiles
            mbarrier.wait(k_ready.index((j // SUB) % STAGES), ((j // SUB) // STAGES) & 1)
        return warpgroup_mma(q_smem, k_bufs.index(j % (STAGES * SUB)).permute((1, 0)), unused_acc, is_async=True,
                             use_acc=False)

    @gluon.jit
    def _release(empty, j, j_last, STAGES: gl.constexpr, SUB: gl.constexpr):
        """After the last block of its stage (or the tile's last block, j_last) the stage (or with SPLIT_KV one of
        its sides) goes back to the producer."""
        if (j % SUB == SUB - 1) | (j == j_last):
            mbarrier.arrive(empty.index((j // SUB) % STAGES), count=1)

    @gluon.jit
    def _pv(acc, p, alpha, j, j_last, v_bufs, v_ready, v_empty, o_layout: gl.constexpr, BN: gl.constexpr,
            DP: gl.constexpr, STAGES: gl.constexpr, SUB: gl.constexpr, FIRST: gl.constexpr, SPLIT_KV: gl.constexpr,
            RESCALE: gl.constexpr = True):
        """acc = alpha * acc + P.V of key block j on the tensor cores (the FIRST block's P.V starts from zero
        instead: a zero accumulator written while Q.K^T is in flight would serialise the wgmmas; without RESCALE,
        acc + P.V); then block j's stage goes back through v_empty (with SPLIT_KV its V side; otherwise v_empty is
        k_empty, the stage's one barrier, and the V side came with the K side's k_ready).
        (Leaving P.V in flight through the next block's softmax, FlashAttention-3's order, makes ptxas serialise
        every wgmma here: a loop-carried accumulator in flight. Issued with the next Q.K^T and waited before the
        back edge it is not serialised, but 12-16% slower, and ping-pong turns between the warpgroups did not
        help either. In the fixed-reference loop, which never reads acc: with P in registers still serialised
        (C7512/C7514), with P through shared memory 22-40% slower: docs/BENCHMARKS.md.)"""
        if SPLIT_KV:
            if j % SUB == 0:
                mbarrier.wait(v_ready.index((j // SUB) % STAGES), ((j // SUB) // STAGES) & 1)
        v_tile = v_bufs.index(j % (STAGES * SUB)).reshape([BN, DP])  # (INT8: the caller's V, [1, 1, BN, DP])
        if FIRST:
            acc = warpgroup_mma(p, v_tile, acc, is_async=True, use_acc=False)
        else:
            if RESCALE:
                acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
            acc = warpgroup_mma(p, v_tile, acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc, ))
        _release(v_empty, j, j_last, STAGES, SUB)
        return acc

    @gluon.jit
    def _row_max(s):
        """gl.max(s, 1) as a tree, for the latency: gl.max chains 31 dependent FMNMX per row of a 128-key block.
        Each level halves the key columns by their highest bit (register bits of the wgmma layout at BN = 128:
        a thread holds columns 8c + {0, 1}), in independent maxima; gl.max then takes the last 8 (a register pair,
        four lanes). Exact, as any max order: -1.3..2.0% kernel time (H200, docs/BENCHMARKS.md)."""
        BM: gl.constexpr = s.shape[0]
        w: gl.constexpr = s.shape[1]
        x = s
        x = gl.max(gl.reshape(x, [BM, 2, w // 2]), 1)
        x = gl.max(gl.reshape(x, [BM, 2, w // 4]), 1)
        x = gl.max(gl.reshape(x, [BM, 2, w // 8]), 1)
        x = gl.max(gl.reshape(x, [BM, 2, w // 16]), 1)
        return gl.max(x, 1)

    @gluon.jit
    def _key_vectors(j, ks_bufs, col_bufs, s_layout: gl.constexpr, STAGES: gl.constexpr, SUB: gl.constexpr,
                     HAS_COL: gl.constexpr):
        """Key block j's INT8 row scales and column bias ([1, BN] in the scores' column layout; 0.0 without a
        bias), from its ring slot."""
        slot = j % (STAGES * SUB)
        cols: gl.constexpr = gl.SliceLayout(0, s_layout)
        col = 0.0
        if HAS_COL:
            col = col_bufs.index(slot).load(cols)[None, :]
        return ks_bufs.index(slot).load(cols)[None, :], col

    @gluon.jit
    def _int8_scores(qk_bits, q_scale, j, ks_bufs, col_bufs, s_layout: gl.constexpr, STAGES: gl.constexpr,
                     SUB: gl.constexpr, HAS_COL: gl.constexpr):
        """Key block j's scores in log2 units from the int32 q.k plus the magic bits
        (attention.int8_scores_from_bits: two FMAs per score)."""
        ks, col = _key_vectors(j, ks_bufs, col_bufs, s_layout, STAGES, SUB, HAS_COL)
        return int8_scores_from_bits(qk_bits, ks, q_scale, col, HAS_COL)

    @gluon.jit
    def _block(acc, m_i, l_i, qk_bits, q_scale, ks, col, j, j_last, v_bufs, k_empty, v_ready, v_empty,
               s_layout: gl.constexpr, p_layout: gl.constexpr, o_layout: gl.constexpr, BN: gl.constexpr,
               DP: gl.constexpr, STAGES: gl.constexpr, V_STAGES: gl.constexpr, SUB: gl.constexpr,
               HAS_COL: gl.constexpr, SPLIT_KV: gl.constexpr, FIXED: gl.constexpr):
        """INT8 key block j after the tile's first: the online softmax, acc = alpha * acc + P.V, the reference max
        an integer (attention.online_stats). FIXED: the tile keeps its first block's reference m_i (`_first_block`),
        so no row max, no alpha and no rescale, and P.V waits on no reduction: -12..15% kernel time (H200)."""
        s = int8_scores_from_bits(qk_bits, ks, q_scale, col, HAS_COL)  # (ks, col: _key_vectors, loaded by _rest)
        if SPLIT_KV:
            _release(k_empty, j, j_last, STAGES, SUB)  # (its K side is read)
        if FIXED:
            m_new = m_i
            e = gl.exp2(s - m_i[:, None])
            l_i = l_i + gl.sum(e, 1)
            alpha = l_i  # (unused without the rescale)
        else:
            m_new = gl.maximum(m_i, gl.ceil(gl.convert_layout(_row_max(s), m_i.type.layout)))
            m_new_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = gl.exp2(m_i - m_new_safe)
            e = gl.exp2(s - m_new_safe[:, None])
            l_i = l_i * alpha + gl.sum(e, 1)
        p = gl.convert_layout(e.to(v_bufs.dtype), p_layout)
        acc = _pv(acc, p, alpha, j, j_last, v_bufs, v_ready, v_empty, o_layout, BN, DP, V_STAGES, SUB, False,
                  SPLIT_KV, not FIXED)
        return acc, m_new, l_i

    @gluon.jit
    def _first_block(acc, qk_bits, q_scale, bound, j, j_last, v_bufs, ks_bufs, col_bufs, k_empty, v_ready,
                     v_empty, s_layout: gl.constexpr, p_layout: gl.constexpr, o_layout: gl.constexpr,
                     BN: gl.constexpr, DP: gl.constexpr, STAGES: gl.constexpr, V_STAGES: gl.constexpr,
                     SUB: gl.constexpr, HAS_COL: gl.constexpr, SPLIT_KV: gl.constexpr):
        """INT8 key block 0 of a tile, which also decides whether the rest of the tile keeps one reference max per
        row (returned `fixed`, the same for all the warpgroup's rows). `bound` bounds each row's scores over all
        keys (`_score_bound`); m0 is this block's row max. Where bound - m0 <= LIMIT for every row, the reference is
        ceil(max(m0, bound - HEADROOM)), so every later exp2 is <= 2**HEADROOM and each row's largest P >=
        2**-(LIMIT - HEADROOM + 1):
          - bf16 P: HEADROOM 0, so P <= 1 as with the online max (the same overflow margins for l and acc); its
            largest >= 2**-81 loses nothing in bf16 P and fp32 sums: keys below 2**-45 of the largest weight flush
            (2**-126 with the online max), and only V entries below ~2**-45 would underflow in the products with
            the largest P. LIMIT 80, not 64, also fixes the image rows of joint text+image inputs (-9..18% kernel
            time there, H200);
          - fp16 P (5 exponent bits: full precision only down to 2**-14) keeps its largest near 1: LIMIT =
            HEADROOM = 15 (P <= 2**15 < 65504, and fp16 V's products stay far inside fp32).
        Else (a row with no key in this block, logits spread far beyond the bound) the online max. The reference
        is an integer either way, so P's values equal the online max's up to powers of two and so do the outputs,
        up to rounding (the other kernels and reference/quantized.py take the same integer reference)."""
        FP16_P: gl.constexpr = v_bufs.dtype == gl.float16
        HEADROOM: gl.constexpr = _FIXED_HEADROOM_FP16 if FP16_P else _FIXED_HEADROOM_BF16
        LIMIT: gl.constexpr = _FIXED_LIMIT_FP16 if FP16_P else _FIXED_LIMIT_BF16
        s = _int8_scores(qk_bits, q_scale, j, ks_bufs, col_bufs, s_layout, STAGES, SUB, HAS_COL)
        if SPLIT_KV:
            _release(k_empty, j, j_last, STAGES, SUB)
        m0 = gl.convert_layout(_row_max(s), bound.type.layout)
        fixed = gl.max(gl.where(bound - m0 <= LIMIT, 0, 1), 0) == 0  # (NaN or -inf m0: not fixed)
        m_new = gl.ceil(gl.where(fixed, gl.maximum(m0, bound - HEADROOM), m0))
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        e = gl.exp2(s - m_safe[:, None])
        l_i = gl.sum(e, 1)
        p = gl.convert_layout(e.to(v_bufs.dtype), p_layout)
        acc = _pv(acc, p, l_i, j, j_last, v_bufs, v_ready, v_empty, o_layout, BN, DP, V_STAGES, SUB, True,
                  SPLIT_KV)
        return acc, m_new, l_i, fixed

    @gluon.jit
    def _score_bound(QNORM, KNORM, COLMAX, row0, bhk, col_row, BM: gl.constexpr, row_layout: gl.constexpr,
                     HAS_COL: gl.constexpr):
        """An upper bound on each of rows row0 .. row0 + BM's scores (log2 units) over every key of the head, for
        `_first_block`: by Cauchy-Schwarz on the exact integer dot, |q.k| <= |q_scale * codes_q| * max over the
        head's keys of |k_scale * codes_k|, plus the largest column bias of the rows' table row. The pre-pass
        writes the three (prep_rows_kernel's WRITE_NORM for Q's rows and K's head, column_bias_kernel's or the
        host's row maxima); reducing K's maxima per tile here instead cost 3..7% kernel time (H200). The scores'
        fp32 rounding is far inside _first_block's slack."""
        bound = gl.load(QNORM + row0 + gl.arange(0, BM, layout=row_layout)) * gl.load(KNORM + bhk)
        if HAS_COL:
            bound = bound + gl.load(COLMAX + col_row)
        return bound

    @gluon.jit
    def _fp4_block(acc, m_i, l_i, s, j, j_last, v_bufs, k_empty, v_ready, v_empty,
                   p_layout: gl.constexpr, o_layout: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
                   DP: gl.constexpr, STAGES: gl.constexpr, V_STAGES: gl.constexpr, SUB: gl.constexpr,
                   FIRST: gl.constexpr, SPLIT_KV: gl.constexpr):
        """FP4-emulation key block j, as attention.softmax_pv's FP4 branch: s = the scores (_scores_done; columns in
        key_slots order, so a group of 16 keys is one thread's registers), P in
        NVFP4 (level 1 folded into m, level-2 E4M3 scales per 16 keys), acc = alpha * acc + P.V. The FIRST block
        makes m_i and l_i (their layout is the grouped scores' row layout, known only here)."""
        if SPLIT_KV:
            _release(k_empty, j, j_last, STAGES, SUB)  # (its K side, the column bias included, is read)
        sg = keys_to_groups(s, BM, BN, True)
        if FIRST:
            rows: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, sg.type.layout))
            m_i = gl.full([BM], float("-inf"), gl.float32, rows)
            l_i = gl.zeros([BM], gl.float32, rows)
        p, alpha, l_i, m_new = fp4_p(sg, m_i, l_i, BM, BN, True)
        p = gl.convert_layout(p, p_layout)  # fp16, as V
        acc = _pv(acc, p, alpha, j, j_last, v_bufs, v_ready, v_empty, o_layout, BN, DP, V_STAGES, SUB, FIRST,
                  SPLIT_KV)
        return acc, m_new, l_i

    @gluon.jit
    def _step(acc, m_i, l_i, scores, q_scale, ks, col, j, j_last, v_bufs, k_empty, v_ready, v_empty,
              s_layout: gl.constexpr, p_layout: gl.constexpr, o_layout: gl.constexpr, BM: gl.constexpr,
              BN: gl.constexpr, DP: gl.constexpr, STAGES: gl.constexpr, V_STAGES: gl.constexpr, SUB: gl.constexpr,
              HAS_COL: gl.constexpr, FP4: gl.constexpr, SPLIT_KV: gl.constexpr, FIXED: gl.constexpr):
        """Key block j after the tile's first, in the kernel's format (q_scale: INT8's row scales; FP4's scores
        come scaled)."""
        if FP4:
            return _fp4_block(acc, m_i, l_i, scores, j, j_last, v_bufs, k_empty, v_ready, v_empty, p_layout,
                              o_layout, BM, BN, DP, STAGES, V_STAGES, SUB, False, SPLIT_KV)
        else:
            return _block(acc, m_i, l_i, scores, q_scale, ks, col, j, j_last, v_bufs, k_empty, v_ready,
                          v_empty, s_layout, p_layout, o_layout, BN, DP, STAGES, V_STAGES, SUB, HAS_COL, SPLIT_KV,
                          FIXED)

    @gluon.jit
    def _early_key_vectors(j, ks_bufs, col_bufs, s_layout: gl.constexpr, STAGES: gl.constexpr, SUB: gl.constexpr,
                           HAS_COL: gl.constexpr, FP4: gl.constexpr, EARLY: gl.constexpr):
        """INT8 with EARLY: block j's _key_vectors loaded before its Q.K^T is waited for (the ring slot landed
        before that product was issued), so their shared-memory latency overlaps the wait. Measured (H200, bit-
        identical outputs): -2..-6% kernel time at head dim 64, +5..8% at 128 (their registers then live across
        the wait beside the larger accumulator), so EARLY is head dim 64's (_rest)."""
        ks = 0.0
        col = 0.0
        if EARLY and not FP4:  # (static: a function's returns must agree in type)
            ks, col = _key_vectors(j, ks_bufs, col_bufs, s_layout, STAGES, SUB, HAS_COL)
        return ks, col

    @gluon.jit
    def _late_key_vectors(ks, col, j, ks_bufs, col_bufs, s_layout: gl.constexpr, STAGES: gl.constexpr,
                          SUB: gl.constexpr, HAS_COL: gl.constexpr, FP4: gl.constexpr, EARLY: gl.constexpr):
        """_early_key_vectors' counterpart without EARLY: the loads after the next Q.K^T's issue (FP4: none)."""
        if not EARLY and not FP4:
            ks, col = _key_vectors(j, ks_bufs, col_bufs, s_layout, STAGES, SUB, HAS_COL)
        return ks, col

    @gluon.jit
    def _rest(acc, m_i, l_i, qk_next, q_scale, q_smem, k_bufs, k_ready, q_empty, s_unused, j0, j_last, v_bufs,
              ks_bufs, col_bufs, k_empty, v_ready, v_empty, qk_factor, s_layout: gl.constexpr,
              p_layout: gl.constexpr, o_layout: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, DP: gl.constexpr,
              STAGES: gl.constexpr, V_STAGES: gl.constexpr, SUB: gl.constexpr, HAS_COL: gl.constexpr,
              FP4: gl.constexpr, SPLIT_KV: gl.constexpr, FIXED: gl.constexpr):
        """The tile's key blocks after its first (whose Q.K^T, qk_next, is in flight), the next block's Q.K^T
        issued before this block's softmax; the last block peeled so that every issue is unconditional. Q's
        buffer goes back to the producer once the last Q.K^T is done."""
        EARLY: gl.constexpr = DP <= 64  # where the key vectors are loaded: _early_key_vectors
        for j in range(j0 + 1, j_last):
            ks, col = _early_key_vectors(j, ks_bufs, col_bufs, s_layout, STAGES, SUB, HAS_COL, FP4, EARLY)
            qk = _scores_done(qk_next, j, col_bufs, qk_factor, s_layout, BN, STAGES, SUB, HAS_COL, FP4)
            qk_next = _qk_issue(q_smem, k_bufs, k_ready, j + 1, s_unused, STAGES, SUB)
            ks, col = _late_key_vectors(ks, col, j, ks_bufs, col_bufs, s_layout, STAGES, SUB, HAS_COL, FP4,
                                        EARLY)
            acc, m_i, l_i = _step(acc, m_i, l_i, qk, q_scale, ks, col, j, j_last, v_bufs, k_empty,
                                  v_ready, v_empty, s_layout, p_layout, o_layout, BM, BN, DP, STAGES, V_STAGES, SUB,
                                  HAS_COL, FP4, SPLIT_KV, FIXED)
        ks, col = _early_key_vectors(j_last, ks_bufs, col_bufs, s_layout, STAGES, SUB, HAS_COL, FP4, EARLY)
        qk = _scores_done(qk_next, j_last, col_bufs, qk_factor, s_layout, BN, STAGES, SUB, HAS_COL, FP4)
        mbarrier.arrive(q_empty, count=1)  # Q is read by the Q.K^T products only
        ks, col = _late_key_vectors(ks, col, j_last, ks_bufs, col_bufs, s_layout, STAGES, SUB, HAS_COL, FP4,
                                    EARLY)
        return _step(acc, m_i, l_i, qk, q_scale, ks, col, j_last, j_last, v_bufs, k_empty, v_ready,
                     v_empty, s_layout, p_layout, o_layout, BM, BN, DP, STAGES, V_STAGES, SUB, HAS_COL, FP4,
                     SPLIT_KV, FIXED)

    @gluon.jit
    def _scores_done(token, j, col_bufs, qk_factor, s_layout: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
                     SUB: gl.constexpr, HAS_COL: gl.constexpr, FP4: gl.constexpr):
        """Wait for block j's Q.K^T and transform it at once, which frees the accumulator's registers before the
        next issue (else 64 MOVs per block copy them): INT8 adds the magic bits; FP4 makes the scores in log2 units,
        q.k * sm_scale*log2(e) + column bias (the table is in key order: its tile is read in slot order, slot
        8c + 2r + b <- key 16r + 2c + b)."""
        s = warpgroup_mma_wait(0, deps=(token, ))
        if FP4:
            s = s * qk_factor
            if HAS_COL:
                col = col_bufs.index(j % (STAGES * SUB)).reshape([BN // 64, 4, 8, 2]).permute((0, 2, 1, 3))
                s = s + col.reshape([BN]).load(gl.SliceLayout(0, s_layout))[None, :]
            return s
        else:
            return magic_bits(s)

    @gluon.jit
    def _compute_partition(q_smem, k_bufs, v_bufs, ks_bufs, col_bufs, q_bar, q_empty, k_ready, k_empty, v_ready,
                           v_empty, QS, O, LSE, VMEAN, V_AMAX, KNORM, COLMAX, QNORM, FIXED_COUNT, s_ob, s_oh, s_ol, Hq,
                           kv_group, t0, Lq, Lq_pad, Lk_pad, DV, count, col_rows_b, col_rows_h, col_rows_g, qk_factor,
                           ROW0: gl.constexpr, BM: gl.constexpr, TILE_M: gl.constexpr, BN: gl.constexpr,
                           DP: gl.constexpr, SMOOTH_BLOCK: gl.constexpr, STAGES: gl.constexpr,
                           V_STAGES: gl.constexpr, SUB: gl.constexpr, HAS_COL: gl.constexpr,
                           RETURN_LSE: gl.constexpr, FP4: gl.constexpr,
                           HAS_VMEAN: gl.constexpr, SPLIT_KV: gl.constexpr, COUNT_FIXED: gl.constexpr,
                           num_warps: gl.constexpr):
        """One warpgroup: rows ROW0 .. ROW0 + BM of each of this program's TILE_M-row tiles against every key
        block, then their store. Q's buffer goes back to the producer as soon as the tile's last Q.K^T is done, so
        the next tile's Q loads during the last block's softmax and the store."""
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                           instr_shape=[16, BN, 16 if FP4 else 32])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                           instr_shape=[16, DP, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        n_blocks = Lk_pad // BN
        j0 = 0  # the tile's first key block along the ring (each tile starts at a stage)
        n_done = 0
        for tile in range(gl.program_id(0), count, gl.num_programs(0)):
            pid_bh, pid_m, b, h, hk, bhk, q_row, k_row = tile_coords(tile, Hq, kv_group, t0, Lq_pad, Lk_pad,
                                                                     TILE_M, SMOOTH_BLOCK)
            if FP4:
                q_scale = qk_factor
                s_unused = gl.zeros([BM, BN], gl.float32, s_layout)  # accumulators that use_acc=False never reads
            else:
                q_scale = gl.load(QS + q_row + ROW0 + gl.arange(0, BM, layout=row_s))
                s_unused = gl.zeros([BM, BN], gl.int32, s_layout)
            acc = gl.zeros([BM, DP], gl.float32, o_layout)
            m_i = gl.full([BM], float("-inf"), gl.float32, row_s)  # (FP4's first block makes its own)
            l_i = gl.zeros([BM], gl.float32, row_s)
            j_last = j0 + n_blocks - 1
            if not FP4:  # each row's score bound, for _first_block (loaded before Q lands)
                bound = _score_bound(QNORM, KNORM, COLMAX, q_row + ROW0, bhk,
                                     column_bias_row(b, h, pid_m, t0, col_rows_b, col_rows_h, col_rows_g, TILE_M,
                                                     SMOOTH_BLOCK), BM, row_s, HAS_COL)
            mbarrier.wait(q_bar, n_done & 1)
            # The first block is peeled (n_blocks >= 2), so that its P.V needs no zeroed accumulator; INT8 decides
            # there whether the rest keeps a fixed reference max (_first_block).
            qk = _qk_issue(q_smem, k_bufs, k_ready, j0, s_unused, STAGES, SUB)
            qk = _scores_done(qk, j0, col_bufs, qk_factor, s_layout, BN, STAGES, SUB, HAS_COL, FP4)
            qk_next = _qk_issue(q_smem, k_bufs, k_ready, j0 + 1, s_unused, STAGES, SUB)
            if FP4:
                acc, m_i, l_i = _fp4_block(acc, m_i, l_i, qk, j0, j_last, v_bufs, k_empty, v_ready, v_empty,
                                           p_layout, o_layout, BM, BN, DP, STAGES, V_STAGES, SUB, True, SPLIT_KV)
                acc, m_i, l_i = _rest(acc, m_i, l_i, qk_next, q_scale, q_smem, k_bufs, k_ready, q_empty, s_unused,
                                      j0, j_last, v_bufs, ks_bufs, col_bufs, k_empty, v_ready, v_empty, qk_factor,
                                      s_layout, p_layout, o_layout, BM, BN, DP, STAGES, V_STAGES, SUB, HAS_COL,
                                      FP4, SPLIT_KV, False)
            else:
                acc, m_i, l_i, fixed = _first_block(acc, qk, q_scale, bound, j0, j_last, v_bufs, ks_bufs, col_bufs,
                                                    k_empty, v_ready, v_empty, s_layout, p_layout, o_layout, BN, DP,
                                                    STAGES, V_STAGES, SUB, HAS_COL, SPLIT_KV)
                if COUNT_FIXED:  # (tests) FIXED_COUNT[0] += fixed, FIXED_COUNT[1] += 1, once per warpgroup
                    cl: gl.constexpr = gl.BlockedLayout([2], [32], [num_warps], [0])
                    o = gl.arange(0, 2, layout=cl)
                    gl.atomic_add(FIXED_COUNT + o, gl.where(o == 0, fixed.to(gl.int32), 1), mask=o < 2)
                if fixed:
                    acc, m_i, l_i = _rest(acc, m_i, l_i, qk_next, q_scale, q_smem, k_bufs, k_ready, q_empty,
                                          s_unused, j0, j_last, v_bufs, ks_bufs, col_bufs, k_empty, v_ready, v_empty,
                                          qk_factor, s_layout, p_layout, o_layout, BM, BN, DP, STAGES, V_STAGES,
                                          SUB, HAS_COL, FP4, SPLIT_KV, True)
                else:
                    acc, m_i, l_i = _rest(acc, m_i, l_i, qk_next, q_scale, q_smem, k_bufs, k_ready, q_empty,
                                          s_unused, j0, j_last, v_bufs, ks_bufs, col_bufs, k_empty, v_ready, v_empty,
                                          qk_factor, s_layout, p_layout, o_layout, BM, BN, DP, STAGES, V_STAGES,
                                          SUB, HAS_COL, FP4, SPLIT_KV, False)
            g_v = v_second_level(V_AMAX, bhk, C_FP4_VALUES if FP4 else C_V16)
            _store_rows(acc, m_i, l_i, g_v, O, LSE, VMEAN + bhk * DP, s_ob, s_oh, s_ol, b, h, pid_bh,
                        pid_m * TILE_M + ROW0, Lq, DV, s_layout, o_layout, BM, DP, RETURN_LSE, HAS_VMEAN)
            j0 += gl.cdiv(n_blocks, SUB) * SUB
            n_done += 1

    @gluon.jit
    def _store_rows(acc, m_i, l_i, g_v, O, LSE, VMEAN_ROW, s_ob, s_oh, s_ol, b, h, pid_bh, m0, Lq, DV,
                    s_layout: gl.constexpr, o_layout: gl.constexpr, BM: gl.constexpr, DP: gl.constexpr,
                    RETURN_LSE: gl.constexpr, HAS_VMEAN: gl.constexpr):
        """Normalise and store output rows m0 .. m0 + BM (and their LSE), as attention.store_output."""
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        live = l_i != 0  # 0 only when no key was visible; NaN inputs must stay visible
        out = acc * gl.convert_layout(g_v / gl.where(live, l_i, 1.0), row_o)[:, None]
        offs_d = gl.arange(0, DP, layout=gl.SliceLayout(0, o_layout))
        if HAS_VMEAN:
            out = out + gl.load(VMEAN_ROW + offs_d)[None, :]
        out = gl.where(gl.convert_layout(live, row_o)[:, None], out, 0.0)
        if O.dtype.element_ty == gl.float16:  # P rounded to 16 bits can lift a value near 65504 past fp16's range
            out = gl.where(out > 65504.0, 65504.0, gl.where(out < -65504.0, -65504.0, out))
        offs_m = m0 + gl.arange(0, BM, layout=row_o)
        gl.store(O + b * s_ob + h * s_oh + offs_m[:, None] * s_ol + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=(offs_m < Lq)[:, None] & (offs_d < DV)[None, :])
        if RETURN_LSE:  # without the smoothing shift, which the host adds (as for attention_tma_kernel)
            rows = m0 + gl.arange(0, BM, layout=row_s)
            lse = (m_i + gl.log2(gl.where(live, l_i, 1.0))) * 0.6931471805599453
            lse = gl.convert_layout(gl.where(live, lse, float("-inf")), row_s)
            gl.store(LSE + pid_bh * Lq + rows, lse, mask=rows < Lq)

    @gluon.jit(do_not_specialize=("Lq", "t0", "count", "col_rows_b", "col_rows_h", "col_rows_g"))  # see _triton.jit
    def attention_ws_kernel(
        q_desc, k_desc, v_desc, ks_desc, col_desc, QS, O, LSE, VMEAN, V_AMAX, KNORM, COLMAX, QNORM, FIXED_COUNT,
        s_ob, s_oh, s_ol,
        Hq, kv_group, Lq, Lq_pad, Lk_pad, DV, t0, count, col_rows_b, col_rows_h, col_rows_g, qk_factor,
        BM: gl.constexpr, BN: gl.constexpr, DP: gl.constexpr, SMOOTH_BLOCK: gl.constexpr, STAGES: gl.constexpr,
        V_STAGES: gl.constexpr, SUB: gl.constexpr, RETURN_LSE: gl.constexpr, HAS_COL: gl.constexpr, FP4: gl.constexpr,
        HAS_VMEAN: gl.constexpr, SPLIT_KV: gl.constexpr, COUNT_FIXED: gl.constexpr,
        CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr,
    ):
        """Persistent: the launch's `count` BM-row tiles (common.tile_coords: from 128-row block t0 on, numbered
        across heads) are shared round-robin by the programs (one per SM, or fewer).
        INT8 descriptors: q (B*Hq*Lq_pad, DP) int8 [BM, DP]; k (B*Hk*Lk_pad, DP) int8 [BN, DP]; ks
        (B*Hk*Lk_pad,) fp32 [BN]; v: the caller's 16-bit V (B, Hk, Lk, DV) [1, 1, BN, DP], zero-filled past Lk and
        DV. QS: fp32 row scales (B*Hq*Lq_pad).
        FP4 (the emulation's exact values: bf16 Q and K, fp16 V; K and V rows in key_slots order): q (B*Hq*Lq_pad,
        DP) [BM, DP]; k and v (B*Hk*Lk_pad, DP) [BN, DP]; the scores' factor qk_factor (sm_scale*log2(e)); ks and
        QS unused; VMEAN: fp32 (B*Hk, DP), added to the output when HAS_VMEAN (smooth_v); V_AMAX: fp32 (B*Hk,),
        whose tensor_scale (V's second level, left out of its fp16 values) multiplies the output.
        col: the column-bias table flattened (rows*Lk_pad,) [BN], in key order, row = b*col_rows_b + h*col_rows_h
        + (block - t0)*col_rows_g. O: output (B, H, L, D) view. LSE (B, Hq, Lq) fp32 without the smoothing shift.
        KNORM, COLMAX, QNORM (INT8's score bound, `_score_bound`): fp32 (B*Hk,) K's largest row norm per head; the
        table rows' maxima; (B*Hq*Lq_pad,) Q's row norms. FIXED_COUNT (COUNT_FIXED, tests): int32 (2,), see
        run.fixed_max_count.
        num_warps: one consumer warpgroup's (4); the second consumer and the producer are worker partitions."""
        q_smem = gl.allocate_shared_memory(q_desc.dtype, q_desc.block_type.shape, q_desc.layout)
        NBUF: gl.constexpr = STAGES * SUB  # tiles of one key block each; stage i holds tiles i*SUB .. i*SUB+SUB-1
        k_bufs = gl.allocate_shared_memory(k_desc.dtype, [NBUF] + k_desc.block_type.shape, k_desc.layout)
        v_bufs = gl.allocate_shared_memory(v_desc.dtype, [V_STAGES * SUB] + v_desc.block_type.shape, v_desc.layout)
        ks_bufs = gl.allocate_shared_memory(ks_desc.dtype, [1 if FP4 else NBUF] + ks_desc.block_type.shape,
                                            ks_desc.layout)
        col_bufs = gl.allocate_shared_memory(col_desc.dtype, [NBUF if HAS_COL else 1] + col_desc.block_type.shape,
                                             col_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        mbarrier.init(q_empty, count=2)  # both consumer warpgroups are done with Q
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=2)  # both consumer warpgroups release every slot
        if SPLIT_KV:  # the V sides' own barriers
            v_ready = gl.allocate_shared_memory(gl.int64, [V_STAGES, 1], mbarrier.MBarrierLayout())
            v_empty = gl.allocate_shared_memory(gl.int64, [V_STAGES, 1], mbarrier.MBarrierLayout())
            for i in gl.static_range(V_STAGES):
                mbarrier.init(v_ready.index(i), count=1)
                mbarrier.init(v_empty.index(i), count=2)
        else:  # one barrier pair per stage for both sides: V comes with k_ready, the stage goes back after its P.V
            v_ready = k_ready
            v_empty = k_empty

        HALF: gl.constexpr = BM // 2
        gl.warp_specialize([
            (_compute_partition, (q_smem.slice(0, HALF), k_bufs, v_bufs, ks_bufs, col_bufs, q_bar, q_empty, k_ready,
                                  k_empty, v_ready, v_empty, QS, O, LSE, VMEAN, V_AMAX, KNORM, COLMAX, QNORM,
                                  FIXED_COUNT,
                                  s_ob, s_oh, s_ol, Hq, kv_group, t0, Lq, Lq_pad, Lk_pad, DV, count, col_rows_b,
                                  col_rows_h, col_rows_g, qk_factor, 0, HALF, BM, BN, DP, SMOOTH_BLOCK,
                                  STAGES, V_STAGES, SUB, HAS_COL, RETURN_LSE, FP4, HAS_VMEAN, SPLIT_KV,
                                  COUNT_FIXED, num_warps)),
            (_compute_partition, (q_smem.slice(HALF, HALF), k_bufs, v_bufs, ks_bufs, col_bufs, q_bar, q_empty, k_ready,
                                  k_empty, v_ready, v_empty, QS, O, LSE, VMEAN, V_AMAX, KNORM, COLMAX, QNORM,
                                  FIXED_COUNT,
                                  s_ob, s_oh, s_ol, Hq, kv_group, t0, Lq, Lq_pad, Lk_pad, DV, count, col_rows_b,
                                  col_rows_h, col_rows_g, qk_factor, HALF, HALF, BM, BN, DP, SMOOTH_BLOCK,
                                  STAGES, V_STAGES, SUB, HAS_COL, RETURN_LSE, FP4, HAS_VMEAN, SPLIT_KV,
                                  COUNT_FIXED, num_warps)),
            (_load_partition, (q_desc, k_desc, v_desc, ks_desc, col_desc, q_smem, k_bufs, v_bufs, ks_bufs, col_bufs,
                               q_bar, q_empty, k_ready, k_empty, v_ready, v_empty, Hq, kv_group, t0, Lq_pad,
                               Lk_pad, col_rows_b, col_rows_h, col_rows_g, count, BM, BN, SMOOTH_BLOCK, STAGES,
                               V_STAGES, SUB, HAS_COL, FP4, SPLIT_KV)),
        ], [num_warps, 1], [CONSUMER_REGS, 24])
else:  # pragma: no cover
    attention_ws_kernel = None
