"""Ahead-of-time compile check of the native NVFP4 kernels for Blackwell, on any machine (no GPU needed).

    python -m sage_kernels.compile_check --arch sm_100a sm_120a

For each target it compiles the fp4 attention kernel in its native format (e2m1 codes + E4M3 block scales through
`tl.dot_scaled`) and the FP4_CODES pre-pass kernels exactly as kernels/run.py launches them (the launches of a small
problem are recorded, not run), then reads the distinct MMA instructions from the PTX and registers / spills from
`ptxas -v`. An attention kernel passes when every MMA in it is the NVFP4 block-scaled one of that target, nothing
spills and its shared memory fits the target; a pre-pass kernel needs the last two. Exit status 1 unless all pass.

`check(arch)` returns the same results as data. Compiling needs real `triton.jit` kernels: in a process that runs
Triton's interpreter (TRITON_INTERPRET=1, e.g. the test session) `check` runs the CLI in a subprocess instead.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from unittest import mock

import torch

from .capabilities import smem_limit

TARGETS = ("sm_100a", "sm_120a")
HEAD_DIMS = (64, 128)
# The NVFP4 MMA each target must use, as Triton 3.6 prints it (its NVVM intrinsic for sm_100 is
# llvm.nvvm.tcgen05.mma.*.mxf4nvf4.block_scale.block16, which PTX spells scale_vec::4X; E4M3 scales are implied
# by mxf4nvf4 + 4X, the scale type lives in the instruction descriptor).
NVFP4_MMA = {
    10: ("tcgen05.mma", "kind::mxf4nvf4", "block_scale", "scale_vec::4X"),
    12: ("mma.sync", "kind::mxf4nvf4", "block_scale", "scale_vec::4X", "ue4m3"),
}
_MMA_RE = re.compile(r"\b((?:tcgen05\.mma|mma\.sync|wgmma\.mma_async)[\w.:]*)")


@dataclass(frozen=True)
class Result:
    arch: str  # "sm_100a"
    kernel: str  # e.g. "attention d128 causal lse"
    num_warps: int
    num_stages: int
    mma: tuple[str, ...]  # distinct MMA opcodes with their modifiers
    registers: int | None
    shared: int | None  # bytes of shared memory per program
    spill_stores: int | None  # bytes
    spill_loads: int | None
    passed: bool
    reason: str = ""  # why it failed ("" when it passed)


@dataclass(frozen=True)
class Launch:
    """One kernel launch as kernels/run.py issues it, reduced to what `triton.compile` needs."""
    name: str
    module: str
    function: str
    signature: dict
    constexprs: dict
    aligned: tuple[int, ...]  # argument indices specialized as divisible by 16
    num_warps: int
    num_stages: int
    is_attention: bool


def capability(arch: str) -> int:
    """'sm_100a' | 'sm_100' | '100' -> 100."""
    m = re.fullmatch(r"(?:sm_?)?(\d+)a?", arch.strip().lower())
    if not m:
        raise ValueError(f"unknown arch {arch!r} (expected e.g. sm_100a)")
    return int(m.group(1))


# ---------------------------------------------------------------- recording run.py's launches (kernels/aot.py)


def _specialize(fn, args, kwargs):
    """Signature, constexprs and 16-byte-aligned argument indices the JIT would derive from these arguments."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    bound = dict(zip(fn.arg_names, args))
    bound.update(kwargs)
    signature, constexprs, aligned = {}, {}, []
    for i, param in enumerate(fn.params):
        value = bound[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        ty, attr = native_specialize_impl(BaseBackend, value, False, not param.do_not_specialize,
                                          not param.do_not_specialize_on_alignment)
        signature[param.name] = ty
        if ty == "constexpr":
            constexprs[param.name] = value
        elif attr == "D":
            aligned.append(i)
    return signature, constexprs, tuple(aligned), options.get("num_warps", 4), options.get("num_stages", 3)


def _problem(dp: int, causal: bool):
    from .problem import build_problem

    g = torch.Generator().manual_seed(0)
    b, hq, hk, length = 2, 4, 2, 1000  # GQA and padded keys, as a typical call; no size is 1 (no extra specialization)
    q = torch.randn(b, hq, length, dp, generator=g).to(torch.bfloat16)
    k = torch.randn(b, hk, length, dp, generator=g).to(torch.bfloat16)
    v = torch.randn(b, hk, length, dp, generator=g).to(torch.bfloat16)
    return build_problem(q, k, v, is_causal=causal)


def record_launches(cc: int, dps=HEAD_DIMS, native: bool = True) -> list[Launch]:
    """The fp4 launches kernels/run.py issues on a GPU of capability `cc` (attention per head dim, causal or not,
    with or without LSE; the FP4 pre-pass kernels), deduplicated."""
    from .kernels import aot, configs
    from .kernels import run as kernel_run
    from .options import QuantOptions

    launches: dict = {}
    for dp in dps:
        for causal in (False, True):
            for lse in (False, True):
                with contextlib.ExitStack() as stack:  # run.py as on a GPU of capability cc, kernels recorded
                    stack.enter_context(mock.patch.object(kernel_run, "launch_config",
                                                          lambda _arch, *a: configs.launch_config(cc, *a)))
                    stack.enter_context(mock.patch.object(kernel_run, "fp4_key_slots",
                                                          lambda _arch: configs.fp4_key_slots(cc)))
                    stack.enter_context(mock.patch.object(kernel_run, "interpreter_active", lambda: False))
                    calls = stack.enter_context(aot.recording())
                    kernel_run.run(_problem(dp, causal), "fp4", QuantOptions(), lse, native_fp4=native)
                rows_seen = 0
                for call in calls:
                    fn, args, kwargs = call.kernel, call.args, call.kwargs
                    fname = fn.__name__
                    if fname in ("column_bias_kernel", "tile_stats_kernel", "head_stats_kernel"):
                        continue  # not fp4 kernels (bf16/fp32 dots, column sums and maxima)
                    sig, cst, aligned, nw, ns = _specialize(fn, args, kwargs)
                    if fname == "attention_kernel":
                        name = f"attention d{dp}" + (" causal" if causal else "") + (" lse" if lse else "")
                    elif fname == "prep_rows_kernel":
                        name = f"prep_rows {'QK'[min(rows_seen, 1)]} d{dp}" + (" +shift" if cst["WRITE_SHIFT"] else "")
                        rows_seen += 1
                    else:
                        name = f"prep_v d{dp}"
                    launch = Launch(name, fn.fn.__module__, fname, sig, cst, aligned, nw, ns,
                                    fname == "attention_kernel")
                    key = (not launch.is_attention, dp, name, repr(sorted(sig.items())), repr(sorted(cst.items())))
                    launches.setdefault(key, launch)
    return [launches[key] for key in sorted(launches)]  # attention kernels first, then by head dim


# ---------------------------------------------------------------- compiling one launch


@contextlib.contextmanager
def _captured_stderr():
    """MLIR and ptxas report on file descriptor 2; keep it for the failure reason instead of the terminal."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        box = {"text": ""}
        try:
            yield box
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")


def _first_error(text: str, exc: BaseException) -> str:
    """The most specific line of a failed compile: an MLIR error, else a failed assertion, else the exception;
    with the pass that failed when MLIR names it."""
    lines = text.splitlines()
    detail = next((ln.split("error:", 1)[1].strip() for ln in lines
                   if "error:" in ln and "Failures have been detected" not in ln), "")
    if not detail:
        assertion = re.search(r"Assertion `(.+?)' failed", text)
        msg = str(exc).strip().splitlines()
        detail = f"assertion `{assertion.group(1)}` failed" if assertion else \
            f"{type(exc).__name__}: {msg[-1] if msg else ''}".strip()
    failed_pass = re.search(r"Pipeline failed while executing \[`(\w+)`", text)
    return detail + (f" (in {failed_pass.group(1)})" if failed_pass else "")


def _parse_ptxas_log(log: str) -> tuple[int, int, int] | None:
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return (int(regs[-1]), int(spills[-1][0]), int(spills[-1][1])) if regs and spills else None


def ptxas_report(ptx: str, cc: int) -> tuple[int, int, int]:
    """(registers, spill-store bytes, spill-load bytes) from `ptxas -v` of the ptxas Triton uses for `cc`."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([get_ptxas(cc).path, "-lineinfo", "-v", f"--gpu-name={sm_arch_from_capability(cc)}",
                               src, "-o", os.path.join(d, "k.cubin")], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ptxas failed: {proc.stderr.strip().splitlines()[-1:]}")
    report = _parse_ptxas_log(proc.stderr)
    if report is None:
        raise RuntimeError(f"unexpected ptxas -v output: {proc.stderr[-300:]}")
    return report


def mma_instructions(ptx: str) -> tuple[str, ...]:
    return tuple(sorted(set(_MMA_RE.findall(ptx))))


def is_nvfp4_mma(opcode: str, cc: int) -> bool:
    parts = NVFP4_MMA.get(cc // 10)
    return parts is not None and opcode.startswith(parts[0]) and all(p in opcode for p in parts[1:])


def compile_launch(launch: Launch, cc: int) -> Result:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    arch = f"sm_{cc}a"
    fn = getattr(importlib.import_module(launch.module), launch.function)
    attrs = {(i,): [["tt.divisibility", 16]] for i in launch.aligned}
    failed = dict(arch=arch, kernel=launch.name, num_warps=launch.num_warps, num_stages=launch.num_stages, mma=(),
                  registers=None, shared=None, spill_stores=None, spill_loads=None, passed=False)
    log = io.StringIO()
    try:  # Triton runs ptxas -v itself on a fresh compile; with dump_ptxas_log it prints that report
        with _captured_stderr() as err, contextlib.redirect_stdout(log), triton.knobs.nvidia.scope():
            triton.knobs.nvidia.dump_ptxas_log = True
            compiled = triton.compile(ASTSource(fn=fn, signature=launch.signature, constexprs=launch.constexprs,
                                                attrs=attrs),
                                      target=GPUTarget("cuda", cc, 32),
                                      options={"num_warps": launch.num_warps, "num_stages": launch.num_stages})
    except Exception as exc:  # a kernel that cannot compile for this target is a FAIL with its reason
        return Result(**failed, reason=f"compile failed: {_first_error(err['text'], exc)}"[:300])
    ptx = compiled.asm["ptx"]
    mma = mma_instructions(ptx)
    shared = int(compiled.metadata.shared)
    try:
        regs, st, ld = _parse_ptxas_log(log.getvalue()) or ptxas_report(ptx, cc)  # the latter on a cache hit
    except Exception as exc:
        return Result(**{**failed, "mma": mma, "shared": shared}, reason=str(exc)[:300])
    reasons = []
    if launch.is_attention:
        if cc // 10 not in NVFP4_MMA:
            reasons.append(f"sm_{cc} has no NVFP4 block-scaled MMA")
        elif not mma:
            reasons.append("no MMA instruction in the PTX" + (" (kernel reduced to a trap)" if "trap;" in ptx else ""))
        else:
            other = [m for m in mma if not is_nvfp4_mma(m, cc)]
            if other:
                reasons.append(f"MMA other than NVFP4 block-scaled: {', '.join(other)}")
    if st or ld:
        reasons.append(f"spills: {st} B stores, {ld} B loads")
    if shared > smem_limit(cc):
        reasons.append(f"{shared} B of shared memory > {smem_limit(cc)} B available on sm_{cc}")
    return Result(arch, launch.name, launch.num_warps, launch.num_stages, mma, regs, shared, st, ld, not reasons,
                  "; ".join(reasons))


# ---------------------------------------------------------------- driver


def _can_compile_here() -> bool:
    """False under TRITON_INTERPRET: Triton itself was imported in interpreter mode and its kernels cannot compile."""
    from triton.runtime.jit import JITFunction

    from ._triton import interpreter_active
    from .kernels.attention import attention_kernel

    return not interpreter_active() and isinstance(attention_kernel, JITFunction)


def _check_in_subprocess(archs, dps, native: bool, attention_only: bool) -> list[Result]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "sage_kernels.compile_check", "--json", "--arch", *archs,
           "--dp", *map(str, dps), "--format", "codes" if native else "values"] + \
        (["--attention-only"] if attention_only else [])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    try:
        rows = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"compile_check subprocess failed (rc {proc.returncode}): {proc.stderr[-2000:]}") from None
    return [Result(**{**r, "mma": tuple(r["mma"])}) for r in rows]


def check_many(archs=TARGETS, dps=HEAD_DIMS, native: bool = True, attention_only: bool = False,
               jobs: int | None = None) -> list[Result]:
    if not _can_compile_here():
        return _check_in_subprocess(list(archs), list(dps), native, attention_only)
    work = []
    for arch in archs:
        cc = capability(arch)
        work += [(launch, cc) for launch in record_launches(cc, dps, native)
                 if launch.is_attention or not attention_only]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    if jobs == 1:
        return [compile_launch(launch, cc) for launch, cc in work]
    import multiprocessing

    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        return list(pool.map(compile_launch, *zip(*work)))


def check(arch: str, dps=HEAD_DIMS, native: bool = True, attention_only: bool = False) -> list[Result]:
    """Results for one target ('sm_100a', 'sm_120a', ...): native fp4 attention kernels and FP4 pre-pass kernels."""
    return check_many((arch,), dps, native, attention_only)


def format_table(results: list[Result]) -> str:
    lines = []
    for arch in dict.fromkeys(r.arch for r in results):
        rows = [r for r in results if r.arch == arch]
        lines.append(f"{arch}: {sum(r.passed for r in rows)}/{len(rows)} PASS")
        header = ("kernel", "warps", "stages", "regs", "spill st/ld B", "smem KB", "MMA instructions", "result")
        table = [header] + [(r.kernel, str(r.num_warps), str(r.num_stages), "-" if r.registers is None else str(r.registers),
                             "-" if r.spill_stores is None else f"{r.spill_stores}/{r.spill_loads}",
                             "-" if r.shared is None else f"{r.shared / 1024:.1f}",
                             ", ".join(r.mma) or "-", "PASS" if r.passed else f"FAIL: {r.reason}") for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
        for row in table:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=list(TARGETS), help="targets, e.g. sm_100a sm_120a (sm_90a: negative)")
    ap.add_argument("--dp", nargs="+", type=int, default=list(HEAD_DIMS), help="padded head dims (64, 128, 256)")
    ap.add_argument("--format", choices=("codes", "values"), default="codes",
                    help="codes: the native kernel (default); values: the bf16 emulation (a negative control)")
    ap.add_argument("--attention-only", action="store_true", help="skip the pre-pass kernels")
    ap.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPU count)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    results = check_many(args.arch, args.dp, args.format == "codes", args.attention_only, args.jobs)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in results]))
    else:
        print(format_table(results))
    return 0 if results and all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
