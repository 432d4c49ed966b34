"""The training kernels compile for real GPUs, and some launch config of each fits the GPU's shared memory:
Hopper (sm_90, 227 KB per block) and consumer Ada (sm_89, 99 KB, like sm_86 and sm_120). The interpreter accepts
code the compiler rejects, and shared memory is only known after compilation (sage_kernels/training/aot.py)."""
import pytest

from sage_kernels._triton import HAS_TRITON
from tests.support.compiled_python import compiled_python


@pytest.mark.skipif(not HAS_TRITON, reason="triton not importable")
def test_training_kernels_compile_and_fit_hopper_and_consumer_gpus():
    proc = compiled_python("-m", "sage_kernels.training.aot", "--arch", "90", "89", "--quick", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[-1].endswith(", 0 failures")
    compiled = {tuple(line.split()[:2]) for line in lines if " ok " in line}
    for arch in ("sm_90", "sm_89"):
        for kernel in ("quantize_kernel", "forward_kernel", "row_stats_kernel", "dkdv_kernel", "dq_kernel"):
            assert (arch, kernel) in compiled, (arch, kernel)
    # dK/dV as each GPU launches it (config.dkdv_split): two one-gradient programs on sm_90, one program on sm_89
    dkdv = {(line.split()[0], "'WANT_DK': True" in line, "'WANT_DV': True" in line)
            for line in lines if " ok " in line and line.split()[1] == "dkdv_kernel"}
    assert {forms[1:] for forms in dkdv if forms[0] == "sm_90"} == {(True, False), (False, True)}
    assert {forms[1:] for forms in dkdv if forms[0] == "sm_89"} == {(True, True)}
    # the Gluon backward (sm_90 only): dV, dK and dQ, with and without column bias, each with asynchronous wgmma
    # (a serialised one would compile and run, several times slower)
    gluon = [line for line in lines if line.split()[1:2] == ["grad_ws_kernel"]]
    assert gluon, lines
    for line in gluon:
        assert line.startswith("sm_90 ") and " ok " in line and "wgmma async" in line, line
    assert {(f"'MODE': {m}", f"'HAS_COL': {c}") for m in range(3) for c in (True, False)} <= {
        tuple(part for part in line.split(", ") if part.startswith(("'MODE'", "'HAS_COL'")))
        for line in (x.split("{", 1)[1] for x in gluon)}
