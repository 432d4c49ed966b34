"""Every kernel variant the host code launches compiles for real GPUs (sm_90 Hopper, sm_80 Ampere).

CI has no GPU and runs kernels in Triton's interpreter, which accepts code the compiler rejects (non-constexpr
globals, mismatched dot operand types, ...). This compiles the recorded launches ahead of time, as a GPU would."""
import os
import subprocess
import sys

import pytest

from sage_kernels._triton import HAS_TRITON
from tests.support.compiled_python import ROOT, compiled_python


@pytest.mark.skipif(not HAS_TRITON, reason="triton not importable")
def test_every_launch_compiles_and_fits_hopper_ampere_ada_rtx50_and_dgx_spark():
    """Also within each GPU's shared memory per block (a kernel past it compiles, then fails at launch)."""
    proc = compiled_python("-m", "sage_kernels.kernels.aot", "--arch", "90", "80", "89", "120", "121", "--quick",
                           timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[-1].endswith(", 0 failures")
    compiled = [line for line in lines if line.startswith("sm_") and " ok " in line]
    kinds = {line.split()[1] for line in compiled}
    assert kinds == {"tile_stats_kernel", "head_stats_kernel", "prep_rows_kernel", "prep_v_kernel", "column_bias_kernel",
                     "attention_kernel", "attention_tma_kernel", "attention_ws_kernel"}
    for arch in ("sm_80", "sm_89", "sm_120", "sm_121"):
        assert any(line.startswith(f"{arch} attention_kernel") for line in compiled), arch
    assert {line.split()[0] for line in compiled if " attention_tma_kernel " in line} == {"sm_90"}
    ws = [line for line in compiled if " attention_ws_kernel " in line]  # the Gluon kernel: sm_90's int8 and fp4
    assert {line.split()[0] for line in ws} == {"sm_90"}
    assert {"'FP4': True" in line for line in ws} == {True, False}
    assert {"'HAS_COL': False" in line for line in ws} == {True, False}
    assert {"'RETURN_LSE': True" in line for line in ws} == {True, False}
    assert {"'SPLIT_KV': True" in line for line in ws} == {True, False}  # K and V sides' own barriers, or one pair
    assert all("wgmma async" in line for line in ws), ws  # ptxas would otherwise wait after every wgmma


@pytest.mark.skipif(not HAS_TRITON, reason="triton not importable")
def test_every_wgmma_serialisation_note_of_ptxas_is_reported():
    """The check above relies on it: ptxas reports serialised wgmma under several codes, and C7512 (registers) was
    once missed by a check that matched C7514/C7515 only."""
    from sage_kernels.kernels.aot import serialisation_reason

    note = "wgmma.mma_async instructions are serialized due to insufficient register resources for the function 'k'"
    log = "\n".join(["ptxas info    : 11 bytes gmem", f"ptxas info    : (C7512) Potential Performance Loss: {note}",
                     "ptxas info    : Used 168 registers, used 3 barriers"])
    assert serialisation_reason(log) == note
    reads = log.replace("C7512", "C7514").replace("insufficient register resources", "non wgmma instructions reading "
                                                  "accumulator registers of a wgmma")
    assert "reading accumulator registers" in serialisation_reason(reads)
    assert serialisation_reason("ptxas info    : Used 168 registers, used 3 barriers") == ""


def test_recorded_fp4_launches_take_each_gpus_key_and_column_order():
    """Launches are recorded with CPU tensors, as on sm_90: the AOT check must compile the FP4 emulation's pre-pass
    with the key and column orders the host code picks on each GPU (slot orders on sm_90 only), and with its
    register cap (sm_90, 16-bit inputs only)."""
    import torch

    from sage_kernels.kernels import aot
    from sage_kernels.options import QuantOptions
    from sage_kernels.problem import build_problem

    q, k, v = (torch.randn(1, 2, 200, 64, dtype=torch.bfloat16) for _ in range(3))
    rows = [x for x in aot.record(build_problem(q, k, v), "fp4", QuantOptions(), False, False)
            if x.name == "prep_rows_kernel"]
    key_slots = {"Q" if x.kwargs["MEAN_MODE"] == 2 else "K": x.kwargs["KEY_SLOTS"] for x in rows}  # Q: block means
    assert [x.kwargs["COL_SLOTS"] for x in rows] == [True, True]  # Q and K
    assert key_slots == {"Q": False, "K": True}  # K's rows only
    for arch, slots in ((90, True), (80, False), (89, False), (120, False)):
        for x in rows:
            launched = aot.as_launched(x, arch).kwargs
            assert launched["COL_SLOTS"] == slots and launched["KEY_SLOTS"] == (slots and x.kwargs["KEY_SLOTS"])
            assert launched["maxnreg"] == (168 if arch == 90 else None)
    q32, k32, v32 = (x.float() for x in (q, k, v))
    rows32 = [x for x in aot.record(build_problem(q32, k32, v32), "fp4", QuantOptions(), False, False)
              if x.name == "prep_rows_kernel"]
    assert [aot.as_launched(x, 90).kwargs["maxnreg"] for x in rows32] == [None, None]


def test_aot_refuses_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "sage_kernels.kernels.aot", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unset TRITON_INTERPRET" in proc.stderr


_SPECIALISATION_CHECK = """
import torch
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend

from sage_kernels.kernels import aot, run
from sage_kernels.options import QuantOptions
from sage_kernels.problem import build_problem

q, k, v = (torch.randn(1, 2, 200, 64, dtype=torch.bfloat16) for _ in range(3))  # one KV head per group
with aot.recording() as launches:
    run.run(build_problem(q, k, v), "int8", QuantOptions(), False)
launch = next(x for x in launches if x.name == "attention_kernel")
src, _ = aot.source_of(launch)
ones = 0
for i, param in enumerate(launch.kernel.params):
    value = launch.args[i] if i < len(launch.args) else launch.kwargs[param.name]
    if param.is_constexpr or not isinstance(value, int) or isinstance(value, bool):
        continue
    ty, _ = native_specialize_impl(BaseBackend, value, False, not param.do_not_specialize, True)
    assert (src.signature[param.name] == "constexpr") == (ty == "constexpr"), (param.name, value)
    ones += value == 1
print("ones", ones)
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton not importable")
def test_offline_compile_specialises_like_the_launcher():
    """Triton's launcher turns an int argument equal to 1 into a constant; the offline source must carry the same
    specialisation (the SASS that docs/ cite is the kernel that runs), argument by argument as Triton's own
    specialisation routine decides. (Compiled kernels only: a subprocess without the interpreter.)"""
    proc = compiled_python("-c", _SPECIALISATION_CHECK)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert int(proc.stdout.split()[-1]) >= 2  # kv_group and the unit strides at least


_LENGTH_CHECK = """
import importlib

import torch
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend

from sage_kernels.kernels import aot
from sage_kernels.options import QuantOptions
from sage_kernels.problem import build_problem
from sage_kernels.training import aot as training_aot


def key(launch):  # aot.launch_key plus the divisibility attributes (what `lengths` changes)
    return aot.launch_key(launch) + (tuple(sorted((k, str(v)) for k, v in aot.source_of(launch)[0].attrs.items())),)


def default_classes(launch):  # what Triton would specialise each int argument to without `lengths`
    return [native_specialize_impl(BaseBackend, a, False, True, True) for a in launch.args
            if isinstance(a, int) and not isinstance(a, bool)]


def same_variants(a, b, label):
    assert {key(x) for x in a} == {key(x) for x in b}, (label, {key(x) for x in a} ^ {key(x) for x in b})
    return sum(default_classes(x) != default_classes(y) for x, y in zip(a, b))


def qkv(lq, lk, d):
    return torch.randn(1, 2, lq, d, dtype=torch.bfloat16), *(torch.randn(1, 2, lk, d, dtype=torch.bfloat16)
                                                             for _ in range(2))


sites = [(mod, names) for mod, names in aot._SITES]
sites += [(importlib.import_module(mod_name), names) for mod_name, names in training_aot._SITES.items()]
for mod, names in sites:  # every declared length names a parameter (Triton ignores unknown names)
    for name in names:
        kernel = getattr(mod, name)
        assert sum(p.do_not_specialize for p in kernel.params) == len(kernel.do_not_specialize), name

seen = set()
differs = 0
# a multiple of 16 and not; long enough that the Q-smoothing table comes in chunks (its budget is the quantized
# Q's size: twice as large for the FP4 emulation's bf16 values); sm_90 runs the Gluon kernel (int8 at head dim
# 128, fp4 at 64 and 128) and the TMA kernel (8-bit P.V)
for precision, sm90, d, lengths, pv in (("int8", False, 64, (2304, 2250), "16bit"),
                                        ("int8", True, 128, (4352, 4300), "16bit"),
                                        ("int8", True, 128, (4352, 4300), "fp8"),
                                        ("fp4", False, 64, (4352, 4300), "16bit"),
                                        ("fp4", True, 64, (4352, 4300), "16bit"),
                                        ("fp4", True, 128, (8448, 8450), "16bit")):  # (bf16 Q: chunks past 8192 keys)
    a, b = (aot.record(build_problem(*qkv(n, n, d)), precision, QuantOptions(pv=pv), True, sm90) for n in lengths)
    names = {x.name for x in a}
    assert "column_bias_kernel" in names and sum(x.name.startswith("attention") for x in a) >= 2, names  # chunked
    differs += same_variants(a, b, (precision, sm90))
    seen |= names
assert {"attention_kernel", "attention_tma_kernel", "attention_ws_kernel", "prep_v_kernel"} <= seen, seen

for qk in ("16bit", "int8"):  # the training path (autograd)
    for causal in (False, True):  # (both lengths padded, so the same padding constexprs)
        a, b = (training_aot.record(build_problem(*(t.requires_grad_() for t in qkv(lq, lk, 64)), is_causal=causal), qk)
                for lq, lk in ((240, 240), (200, 232)))
        differs += same_variants(a, b, (qk, causal))
print("launches whose default specialisation differs", differs)
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton not importable")
def test_a_new_sequence_length_reuses_the_compiled_kernels():
    """Token counts, tile counts and chunk bounds are not specialised (`_triton.jit(lengths=...)`): calls at a token
    count that is a multiple of 16 and one that is not (Q-smoothing table in chunks, so chunk starts too) need
    exactly the same compiled variants of every kernel, int8 and fp4, pointer and sm_90 kernels, and the training
    forward and backward; Triton's default would have split them."""
    proc = compiled_python("-c", _LENGTH_CHECK)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert int(proc.stdout.split()[-1]) >= 8  # without `lengths` most launches would need another variant


_POINTER_CONFIG_CHECK = """
import torch

from sage_kernels.kernels import aot
from sage_kernels.options import QuantOptions
from sage_kernels.problem import build_problem

compiled = []
aot.triton.compile = lambda src, target, options: compiled.append(options)
checked = 0
for precision in ("int8", "fp4"):
    q, k, v = (torch.randn(1, 2, 300, 128, dtype=torch.bfloat16) for _ in range(3))
    for launch in aot.record(build_problem(q, k, v, is_causal=True), precision, QuantOptions(), False, True):
        if launch.name == "attention_kernel":
            aot.compile_launch(launch, 90)
            launched = {"num_warps": launch.kwargs["num_warps"], "num_stages": launch.kwargs["num_stages"]}
            assert compiled[-1] == launched == {"num_warps": 8, "num_stages": 3}, (precision, compiled[-1], launched)
            checked += 1
print("checked", checked)
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton not importable")
def test_offline_compile_uses_the_pointer_kernels_launch_config():
    """On sm_90 the pointer kernel runs what the Gluon kernel does not take (causal, fp32 inputs) with the TMA
    config's warps and stages (configs.without_gluon); the offline compile must check that config, not the Gluon
    kernel's (4 warps)."""
    proc = compiled_python("-c", _POINTER_CONFIG_CHECK)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.split()[-1] == "2"
