"""The native NVFP4 kernels compiled ahead of time for Blackwell on the CPU (sage_kernels.compile_check), the
checker's ability to fail, and the runtime probe that gates the native kernel on a real GPU (native_probe)."""
import json
import subprocess

import pytest
import torch

from sage_kernels import compile_check as cc
from sage_kernels.kernels import native_probe
from sage_kernels.problem import build_problem
from tests.support.compiled_python import compiled_python
SM100_NVFP4 = "tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::4X"
SM120_NVFP4 = "mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale.scale_vec::4X.f32.e2m1.e2m1.f32.ue4m3"
ATTENTION_VARIANTS = {f"attention d{d}{c}{lse}" for d in (64, 128) for c in ("", " causal") for lse in ("", " lse")}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return compiled_python("-m", "sage_kernels.compile_check", *args, timeout=900)


@pytest.fixture(scope="module")
def blackwell():
    """Results for sm_100a and sm_120a (this session runs the interpreter, so the check compiles in a subprocess)."""
    results = cc.check_many(("sm_100a", "sm_120a"))
    return {arch: [r for r in results if r.arch == arch] for arch in ("sm_100a", "sm_120a")}


@pytest.mark.parametrize("arch, opcode", [("sm_100a", SM100_NVFP4), ("sm_120a", SM120_NVFP4)])
def test_attention_uses_only_the_nvfp4_block_scaled_mma(blackwell, arch, opcode):
    attention = {r.kernel: r for r in blackwell[arch] if r.kernel.startswith("attention")}
    assert set(attention) == ATTENTION_VARIANTS
    for r in attention.values():
        assert r.mma == (opcode,), (r.kernel, r.mma)
        assert r.num_warps == 8


@pytest.mark.parametrize("arch", ["sm_100a", "sm_120a"])
def test_every_fp4_kernel_passes_without_spills(blackwell, arch):
    results = blackwell[arch]
    assert not [r for r in results if not r.passed], cc.format_table([r for r in results if not r.passed])
    assert {r.kernel.split(" d")[0] for r in results} == {"attention", "prep_rows Q", "prep_rows K", "prep_v"}
    for r in results:
        assert r.spill_stores == 0 and r.spill_loads == 0 and 0 < r.registers <= 255
        assert 0 < r.shared <= cc.smem_limit(cc.capability(arch))


def test_cli_prints_the_table_and_exits_zero():
    proc = _cli("--arch", "sm_120a", "--dp", "64")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sm_120a: 8/8 PASS" in proc.stdout and SM120_NVFP4 in proc.stdout


def test_emulated_kernel_fails_the_check():
    """Negative control: the bf16 emulation compiles for sm_100a but its MMAs are not block-scaled."""
    proc = _cli("--arch", "sm_100a", "--dp", "64", "--format", "values", "--attention-only", "--json")
    assert proc.returncode == 1
    attention = json.loads(proc.stdout)
    assert {r["kernel"] for r in attention} == {v for v in ATTENTION_VARIANTS if "d64" in v}
    for r in attention:
        assert not r["passed"] and "other than NVFP4" in r["reason"] and "kind::f16" in r["reason"]


@pytest.mark.parametrize("arch", ["sm_90a", "sm_121a"])
def test_no_block_scaled_dot_fails_with_a_reason_not_a_crash(arch):
    """Negative controls: Triton 3.6 cannot compile e4m3-scaled dot_scaled for sm_90a (Hopper) nor for sm_121a (DGX
    Spark's GB10; an assertion in its matmul pass), so the capability table keeps sm_121 off the native kernel and
    fp4 runs the emulation there (tests/test_api.py). When a Triton release compiles sm_121a, this fails: then add
    121 to capabilities.NATIVE_FP4_ARCHS."""
    proc = _cli("--arch", arch, "--dp", "64", "--attention-only", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    attention = [r for r in json.loads(proc.stdout) if r["kernel"].startswith("attention")]
    assert attention and all(not r["passed"] and r["reason"].startswith("compile failed") for r in attention)


def test_instruction_rules():
    assert cc.capability("sm_100a") == 100 and cc.capability("120") == 120 and cc.capability("sm_90") == 90
    ptx = f"\t@%p8 {SM100_NVFP4} [ %r1 + 0 ], %rd1, %rd2, %r2, [ %r3 + 0 ], [ %r4 + 0 ], %p7;\n" \
          "\tmma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1, %f2}, {%r1}, {%r2}, {%f3, %f4};\n"
    assert cc.mma_instructions(ptx) == ("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", SM100_NVFP4)
    assert cc.is_nvfp4_mma(SM100_NVFP4, 100) and cc.is_nvfp4_mma(SM120_NVFP4, 120)
    assert not cc.is_nvfp4_mma(SM100_NVFP4, 120) and not cc.is_nvfp4_mma(SM120_NVFP4, 100)
    assert not cc.is_nvfp4_mma("tcgen05.mma.cta_group::1.kind::f16", 100)
    mxfp4 = "mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale.scale_vec::2X.f32.e2m1.e2m1.f32.ue8m0"
    assert not cc.is_nvfp4_mma(mxfp4, 120)  # MXFP4 (e8m0 scales per 32) is not NVFP4


# ---------------------------------------------------------------- native_probe (kernels replaced by fakes)


def _problem(d=128):
    q = torch.randn(1, 2, 50, d)
    return build_problem(q, q, q)


@pytest.fixture
def fake_kernels(monkeypatch):
    """Runs of kernels.run.run recorded and answered by `outputs[native_fp4]` (a tensor or an exception)."""
    from sage_kernels.kernels import run as kernel_run

    out = torch.randn(1, 2, 200, 128)
    outputs, calls = {True: out, False: out.clone()}, []

    def fake_run(p, precision, opts, return_lse, native_fp4=False):
        calls.append((p.head_dim, native_fp4))
        result = outputs[native_fp4]
        if isinstance(result, Exception):
            raise result
        return result, None

    monkeypatch.setattr(kernel_run, "run", fake_run)
    monkeypatch.setattr(native_probe, "_cache", {})
    return outputs, calls


def test_probe_passes_when_native_matches_emulated_and_caches(fake_kernels):
    outputs, calls = fake_kernels
    assert native_probe.failure_reason(120, _problem(100)) == ""
    assert native_probe.failure_reason(120, _problem(128)) == ""  # same padded head dim: cached
    assert calls == [(128, True), (128, False)]
    native_probe.failure_reason(100, _problem(64))
    assert calls[2:] == [(64, True), (64, False)]


def test_probe_reports_disagreement(fake_kernels):
    outputs, _ = fake_kernels
    outputs[True] = outputs[False] + 0.2 * torch.randn_like(outputs[False])
    reason = native_probe.failure_reason(100, _problem())
    assert "disagrees with the emulated kernel" in reason and "sm_100" in reason


def test_probe_reports_failures_without_raising(fake_kernels):
    outputs, _ = fake_kernels
    outputs[True] = RuntimeError("PassManager::run failed")
    assert "failed to compile or launch: RuntimeError: PassManager::run failed" in native_probe.failure_reason(120, _problem())
    outputs[True] = torch.full_like(outputs[False], float("nan"))
    native_probe._cache.clear()
    assert "non-finite" in native_probe.failure_reason(120, _problem())
    bad = _problem()
    bad.q = None  # a problem the probe cannot even read
    assert native_probe.failure_reason(103, bad).startswith("native NVFP4 probe failed")
