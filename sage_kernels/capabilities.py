"""The one table that decides, per call, which kernel runs, and why not when it can't.

Each `KernelSpec` states what one implementation accepts (device and arch, dtypes, head dim, mask kind). A request
(precision, backend) lists its candidate kernels in order; the first whose constraints all hold runs. When none
does, the plan falls back to PyTorch SDPA with the first failed constraint as its reason (or the caller's
`fallback="error"` raises it). `explain()` in the public API returns this decision without running anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import _triton
from ._triton import HAS_TRITON, IMPORT_ERROR, interpreter_active
from .options import BLOCK_M, BLOCK_N
from .problem import AttentionProblem
from .transforms import padded_head_dim

PRECISIONS = ("auto", "fp4", "int8", "sdpa")
BACKENDS = ("auto", "triton", "reference")
MAX_HEAD_DIM = 256
NATIVE_FP4_ARCHS = (100, 103, 120)  # tcgen05 block-scaled MMA (sm_100/103) and mma.sync block_scale (sm_120)
# Shared memory one block may use (the opt-in maximum), by compute capability * 10. A kernel compiled past it fails
# at launch, so configs.launch_config and the AOT checks keep every launched variant within it.
SMEM_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 103: 232448,
              120: 101376, 121: 101376}
WIDE_HEAD_SMEM = 232448  # head dims above 128 (padded to 256) need this much: the pre-pass's 256x256 rotation alone
# takes 128 KB of operand tiles (measured with the AOT compiler: 196 KB per pre-pass block, 161 KB per attention block)
# The kernels put batch x heads on the second axis of their CUDA grid, whose limit is 65535 (the first allows 2**31).
MAX_BATCH_HEADS = 65535
# ... and index the inputs and their padded operand buffers with 32-bit element offsets: 2**31 elements ran correctly
# on an H100, 2**31 + 2**27 faulted (illegal memory access, which ends the process's CUDA context).
MAX_INDEX = 2 ** 31 - 1


def largest_offset(p: AttentionProblem) -> int:
    """The largest element offset a kernel computes: into q, k, v through their strides (views of a larger tensor
    reach further than their size) or into the padded operand buffers (B, H, L rounded up to 128, padded head dim)."""
    def reach(t: torch.Tensor) -> int:  # 4-D (B, H, L, D) views; torch strides are never negative
        (b, h, l, d), (sb, sh, sl, sd) = t.shape, t.stride()
        return (b - 1) * sb + (h - 1) * sh + (l - 1) * sl + (d - 1) * sd

    dp = padded_head_dim(max(p.head_dim, p.head_dim_v))
    padded = max(p.batch * p.heads_q * -(-p.len_q // BLOCK_M) * BLOCK_M,
                 p.batch * p.heads_kv * -(-p.len_k // BLOCK_N) * BLOCK_N)
    return max(reach(p.q), reach(p.k), reach(p.v), padded * dp - 1)


def smem_limit(arch: int) -> int:
    """Shared memory per block on sm_<arch> (unknown archs: the smallest current value, 99 KB)."""
    return SMEM_LIMIT.get(arch, 101376)


@dataclass(frozen=True)
class Plan:
    precision: str  # what runs: "fp4" | "int8" | "sdpa"
    backend: str  # "triton" | "reference" | "torch"
    kernel: str  # e.g. "triton.int8", "triton.fp4.native", "triton.fp4.emulated", "reference.fp4", "torch.sdpa"
    reason: str = ""  # why this differs from the request ("" when it ran as asked)
    requested: tuple[str, str] = ("auto", "auto")
    note: str = ""  # how precision="auto" was resolved
    pv: str = ""  # int8 plans: the P.V format that runs ("16bit" | "int8" | "fp8", see resolve_pv); else ""

    @property
    def label(self) -> str:
        """The kernel's name, with its P.V format when that is not the default 16-bit one (reports show it)."""
        return f"{self.kernel} (P.V {self.pv})" if self.pv not in ("", "16bit") else self.kernel

    @property
    def fallback(self) -> bool:
        return bool(self.reason)


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" | "cpu" | ...
    arch: int  # compute capability * 10 (90 for sm_90), 0 off CUDA
    sms: int = 0  # streaming multiprocessors (CUDA), 0 when unknown


_CUDA_INFO: dict[int, DeviceInfo] = {}


def _query_cuda(index: int) -> DeviceInfo:
    major, minor = torch.cuda.get_device_capability(index)
    return DeviceInfo("cuda", major * 10 + minor, torch.cuda.get_device_properties(index).multi_processor_count)


if hasattr(torch, "compiler") and hasattr(torch.compiler, "assume_constant_result"):
    # torch.compile cannot trace torch.cuda queries: it calls this once while tracing and keeps the result.
    _query_cuda = torch.compiler.assume_constant_result(_query_cuda)


def _cuda_info(index: int) -> DeviceInfo:
    info = _CUDA_INFO.get(index)
    if info is None:
        info = _CUDA_INFO[index] = _query_cuda(index)
    return info


def device_info(device: torch.device) -> DeviceInfo:
    if device.type == "cuda":
        if getattr(torch.version, "hip", None):  # ROCm builds name AMD GPUs "cuda" and give gfx90a capability (9, 0)
            return DeviceInfo("rocm", 0)
        return _cuda_info(device.index if device.index is not None else 0)
    return DeviceInfo(device.type, 0)


@dataclass(frozen=True)
class KernelSpec:
    name: str
    precision: str
    backend: str
    min_arch: int = 0  # CUDA only; 0 = any device (torch code)
    archs: tuple[int, ...] = ()  # exact archs, when set
    triton: bool = False  # needs Triton (and then runs on CPU tensors only through the interpreter)
    interpretable: bool = True  # can run under TRITON_INTERPRET on CPU tensors
    max_head_dim: int = 1 << 30
    masks: tuple[str, ...] = ("none", "key_padding", "full")
    probe: str = ""  # name of an extra runtime check in _PROBES
    notes: str = field(default="", compare=False)

    def check(self, p: AttentionProblem, dev: DeviceInfo) -> str:
        """'' when this kernel can run the problem, else the first reason it cannot."""
        if self.triton:
            if not HAS_TRITON:
                return f"Triton is not importable ({IMPORT_ERROR})"
            if _triton.TRITON_TOO_OLD:
                return _triton.TRITON_TOO_OLD
            if dev.kind == "cuda":
                if self.archs and dev.arch not in self.archs:
                    return f"{self.name} needs sm_{'/sm_'.join(map(str, self.archs))}, this GPU is sm_{dev.arch}"
                if dev.arch < self.min_arch:
                    return f"{self.name} needs sm_{self.min_arch}+, this GPU is sm_{dev.arch}"
            elif dev.kind == "cpu":
                if not interpreter_active():
                    return "tensors are on the CPU (Triton kernels need a CUDA GPU, or TRITON_INTERPRET=1)"
                if not self.interpretable:
                    return f"{self.name} cannot run in Triton's interpreter"
            elif dev.kind == "rocm":
                return "AMD GPUs (ROCm): these kernels are written and checked for NVIDIA GPUs only"
            else:
                return f"Triton kernels do not run on {dev.kind} tensors"
        if max(p.head_dim, p.head_dim_v) > self.max_head_dim:
            return f"head dim {max(p.head_dim, p.head_dim_v)} > {self.max_head_dim}"
        if self.triton and dev.kind == "cuda" and max(p.head_dim, p.head_dim_v) > 128 \
                and smem_limit(dev.arch) < WIDE_HEAD_SMEM:
            return (f"head dim {max(p.head_dim, p.head_dim_v)} > 128 needs {WIDE_HEAD_SMEM // 1024} KB of shared memory "
                    f"per block (sm_90/sm_100); sm_{dev.arch} has {smem_limit(dev.arch) // 1024} KB")
        reach = largest_offset(p) if self.triton else 0
        if reach > MAX_INDEX:  # past it the kernels fault (H100: illegal address)
            return (f"element offsets up to {reach} need 64-bit indexing; the kernels index in 32 bits "
                    f"(at most 2**31 elements per tensor)")
        if self.triton and p.batch * p.heads_q > MAX_BATCH_HEADS:
            return (f"batch x heads = {p.batch * p.heads_q} > {MAX_BATCH_HEADS} (the kernels' grid axis for them; "
                    f"e.g. temporal attention over every pixel)")
        if p.mask_kind not in self.masks:
            return f"a {p.mask_kind.replace('_', '-')} attn_mask (varies along queries) is not supported by {self.name}"
        if self.probe:
            why = _PROBES[self.probe](p, dev)
            if why:
                return why
        return ""


def _native_fp4_probe(p: AttentionProblem, dev: DeviceInfo) -> str:
    from .kernels import native_probe  # compiles the native kernel once per (arch, head dim)

    return native_probe.failure_reason(dev.arch, p)


_PROBES = {"native_fp4": _native_fp4_probe}

KERNELS = {
    s.name: s
    for s in (
        KernelSpec("triton.fp4.native", "fp4", "triton", archs=NATIVE_FP4_ARCHS, triton=True, interpretable=False,
                   max_head_dim=MAX_HEAD_DIM, masks=("none", "key_padding"), probe="native_fp4",
                   notes="NVFP4 tensor cores via tl.dot_scaled (e2m1, e4m3 scales, group 16)"),
        KernelSpec("triton.fp4.emulated", "fp4", "triton", min_arch=80, triton=True, max_head_dim=MAX_HEAD_DIM,
                   masks=("none", "key_padding"), notes="NVFP4 decoded exactly to bf16, bf16 tensor cores"),
        KernelSpec("triton.int8", "int8", "triton", min_arch=80, triton=True, max_head_dim=MAX_HEAD_DIM,
                   masks=("none", "key_padding"), notes="INT8 Q.K^T and INT8 P.V tensor cores"),
        KernelSpec("reference.fp4", "fp4", "reference", notes="torch mirror of the fp4 kernel"),
        KernelSpec("reference.int8", "int8", "reference", notes="torch mirror of the int8 kernel"),
        KernelSpec("torch.sdpa", "sdpa", "torch", notes="torch.nn.functional.scaled_dot_product_attention"),
    )
}
_CANDIDATES = {
    ("fp4", "triton"): ("triton.fp4.native", "triton.fp4.emulated"),
    ("int8", "triton"): ("triton.int8",),
    ("fp4", "reference"): ("reference.fp4",),
    ("int8", "reference"): ("reference.int8",),
}


# Hopper (sm_90): precision="auto" runs int8 only on the calls where the int8 kernel measured faster than cuDNN SDPA
# on every test distribution (H200, 2026-11-28, eager whole calls, docs/BENCHMARKS.md "precision="auto" on
# Hopper"): bf16, head dim 128, not causal, at least HOPPER_INT8_MIN_TOKENS queries and keys. At 32760 tokens
# 1.03-1.19x SDPA (sharp logits .. N(0,1); Wan 480p, HunyuanVideo 544x960x65 and larger videos), at 24576 0.97-1.09x,
# at 16384 0.93-1.08x. Everything else keeps SDPA: causal 0.61x, head dim 64 1.00x, 512 text keys 0.30x, fp16 1.03x
# (N(0,1) only: fp16 scores never keep the kernel's fixed softmax reference), Flux's 4608 tokens 0.83x, and
# training (the int8 fwd+bwd runs at 0.59x of cuDNN's).
HOPPER_INT8_MIN_TOKENS = 30 * 1024


def _hopper_sdpa_reason(p: AttentionProblem) -> str:
    """Why precision="auto" keeps SDPA for this call on Hopper, or "" when the int8 kernel measured faster."""
    if p.needs_grad:
        return "training (the int8 fwd+bwd measured 0.59x cuDNN on Hopper)"
    if p.dtype != torch.bfloat16:
        return f"{str(p.dtype).replace('torch.', '')} inputs (int8 measured faster than cuDNN for bf16 only)"
    if max(p.head_dim, p.head_dim_v) != 128:
        return f"head dim {max(p.head_dim, p.head_dim_v)} (int8 measured faster than cuDNN at head dim 128 only)"
    if p.is_causal:
        return "causal (int8 measured 0.61x cuDNN)"
    if min(p.len_q, p.len_k) < HOPPER_INT8_MIN_TOKENS:
        return (f"{min(p.len_q, p.len_k)} tokens (int8 measured faster than cuDNN on every input distribution from "
                f"{HOPPER_INT8_MIN_TOKENS} queries and keys)")
    return ""


# Below this much attention work (4 * B * Hq * Lq * Lk * D flops) precision="auto" runs SDPA. The quantized path
# costs ~0.5 ms of host time per call whatever the size (H200 host, 2026-11-27: 507-554 us at 1k-4.6k tokens, SDPA
# 18-25 us; docs/BENCHMARKS.md) and three or more extra kernels. Below 2**34 flops SDPA itself needs ~0.1 ms on an
# RTX 5090-class GPU (~0.3 ms on an RTX 3090), so even a 2x faster kernel would save less than the host time it
# adds; users see sage slower than FlashAttention below ~2k tokens even with CUDA kernels' smaller overhead
# (thu-ml/SageAttention issues 343 and 70). SDPA: cross-attention to 77 text tokens, SDXL's 1024-token layers
# (20 heads x 64: 5.4e9); the quantized path: SDXL's 4096-token layers (4.3e10), Flux from 512^2 (2.9e10), video.
AUTO_MIN_FLOPS = 1 << 34


# GPUs where pv="auto" (the faster P.V) is INT8: their 16-bit tensor cores run at a quarter of the INT8 rate when
# accumulating in fp32, as the kernels must (dense, NVIDIA's architecture whitepapers: RTX 3090 71 vs 284 TOPS,
# RTX 4090 165 vs 661, RTX 5090 210 vs 838; the workstation parts of these generations: half), and each SM has 128
# fp32 lanes for the extra dequantisation work. Elsewhere 16-bit P.V is also the faster one: on A100, H100/H200 and
# B200 the ratio is 1:2 and the loop is bound by its ALU work, which INT8 P.V adds to (measured on an H200:
# even with mma.sync, as A100 runs it; docs/BENCHMARKS.md). The default stays 16-bit everywhere: INT8 P.V doubles
# the error and misses the int8 path's cos >= 0.9995 bar on sharp attention at 4608 tokens (0.99948).
INT8_PV_ARCHS = (86, 89, 120)


def resolve_pv(pv: str, dev: DeviceInfo) -> str:
    """The int8 path's P.V format for the API's `pv` argument: "auto" -> "int8" on INT8_PV_ARCHS GPUs, else
    "16bit" (also off the GPU, so the reference backend on CPU tensors mirrors what Hopper runs); other values as
    they are."""
    if pv != "auto":
        return pv
    return "int8" if dev.kind == "cuda" and dev.arch in INT8_PV_ARCHS else "16bit"


def resolve_smooth_q(p: AttentionProblem, smooth_q: str, pv: str) -> tuple[str, str]:
    """(the int8 path's Q smoothing for this call, why it differs from `smooth_q` or "").

    Per-block Q smoothing needs a column-bias table: an fp32 row of the padded keys per 128-query block of every
    query head. With 16-bit P.V, V is not copied, so the table takes INT8 V's share of issue #3's memory bar
    (kernels.run.chunk_rows splits it into chunks of that size). With more query rows than key rows (Hq*Lq > Hk*Lk:
    cross-attention, GQA) a table larger than that share would either exceed the bar or run in many small chunks,
    each a column-bias and an attention launch (Wan's text cross-attention: 9 chunks, 1.1 -> 2.7 ms per eager
    call). There one query mean per head ("global") is used instead: no per-block table, and as accurate as per
    block on every test distribution (docs/BENCHMARKS.md, "Q-smoothing modes"). A quantized V (pv int8/fp8) keeps
    per-block smoothing: its table already comes on top of the three INT8 copies (documented)."""
    if smooth_q != "block" or pv != "16bit":
        return smooth_q, ""
    lq_pad, lk_pad, dp = p.kernel_sizes
    table = p.heads_q * (lq_pad // BLOCK_M) * lk_pad * 4  # bytes per batch entry, as INT8 V's share below
    v_share = p.heads_kv * lk_pad * dp
    if table <= v_share or p.heads_q * lq_pad <= p.heads_kv * lk_pad:
        return smooth_q, ""
    return "global", (f"int8: Q smoothing per head instead of per block for {p.heads_q} x {p.len_q} queries against "
                      f"{p.heads_kv} x {p.len_k} keys: the per-block column-bias table ({table * p.batch / 2**20:.1f} "
                      f"MiB) would exceed INT8 V's share of the memory bar ({v_share * p.batch / 2**20:.1f} MiB)")


def attention_flops(p: AttentionProblem) -> int:
    """Multiply-adds x 2 of Q.K^T and P.V: 4 * B * Hq * Lq * Lk * D (D: the larger head dim)."""
    return 4 * p.batch * p.heads_q * p.len_q * p.len_k * max(p.head_dim, p.head_dim_v)


def resolve_auto_precision(p: AttentionProblem, dev: DeviceInfo) -> tuple[str, str]:
    """precision="auto" -> (precision, note): fp4 on Blackwell when its native kernel compiles; int8 on other
    sm_80+ GPUs, on Hopper only where it measured faster than cuDNN (_hopper_sdpa_reason); SDPA off the GPU and for
    small problems (AUTO_MIN_FLOPS), where quantization buys no speed."""
    if dev.kind != "cuda":
        return "sdpa", f"auto: {dev.kind} tensors run SDPA"
    flops = attention_flops(p)
    if flops < AUTO_MIN_FLOPS:
        return "sdpa", (f"auto: small problem ({flops:.2g} flops < {AUTO_MIN_FLOPS:.2g}): the quantized path's "
                        "fixed cost exceeds what it could save")
    if dev.arch in NATIVE_FP4_ARCHS and not KERNELS["triton.fp4.native"].check(p, dev):
        return "fp4", "auto: native NVFP4 kernel available"
    if dev.arch == 90:
        why = _hopper_sdpa_reason(p)
        if why:
            return "sdpa", f"auto: SDPA on Hopper for {why}; precision='int8' runs it anyway"
        return "int8", (f"auto: int8 on Hopper (bf16, head dim 128, >= {HOPPER_INT8_MIN_TOKENS} tokens: measured "
                        "faster than cuDNN)")
    if dev.arch >= 80:
        return "int8", f"auto: int8 on sm_{dev.arch}"
    return "sdpa", f"auto: quantized kernels need sm_80+, this GPU is sm_{dev.arch}"


def decide(p: AttentionProblem, precision: str = "auto", backend: str = "auto") -> Plan:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    dev = device_info(p.device)
    requested = (precision, backend)
    note = ""
    if precision == "auto":
        precision, note = resolve_auto_precision(p, dev)
    if precision == "sdpa":
        return Plan("sdpa", "torch", "torch.sdpa", "", requested, note)
    kernel_backend = "triton" if backend == "auto" else backend
    reasons = []
    for name in _CANDIDATES[(precision, kernel_backend)]:
        why = KERNELS[name].check(p, dev)
        if not why:
            spec = KERNELS[name]
            return Plan(spec.precision, spec.backend, spec.name, "", requested, note)
        reasons.append(why)
    return Plan("sdpa", "torch", "torch.sdpa", f"{precision}/{kernel_backend} unavailable: {reasons[-1]}", requested,
                note)


def table() -> list[dict]:
    """The capability table as data (README and diagnostics print it)."""
    return [
        {"kernel": s.name, "precision": s.precision, "backend": s.backend,
         "gpus": ("sm_" + "/sm_".join(map(str, s.archs))) if s.archs else (f"sm_{s.min_arch}+" if s.min_arch else "any"),
         "interpreter": s.triton and s.interpretable, "max_head_dim": min(s.max_head_dim, 10 ** 9),
         "masks": s.masks, "notes": s.notes}
        for s in KERNELS.values()
    ]
