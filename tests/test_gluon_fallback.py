"""If sm_90's Gluon kernel cannot be built (a Triton whose Gluon API differs), the launcher logs the reason once
and runs the TMA kernel instead: never a failed call."""
import logging

from sage_kernels import logs
from sage_kernels.kernels import run


def test_failed_gluon_build_falls_back_once(monkeypatch, caplog):
    logs.reset()
    calls = []

    def broken(*args):
        calls.append(args)
        raise RuntimeError("gluon: unsupported layout\nno such op")

    monkeypatch.setattr(run, "_launch_ws", broken)
    monkeypatch.setattr(run, "_ws_failure", None)
    monkeypatch.setattr(run, "HAS_GLUON", True)
    with caplog.at_level(logging.WARNING):
        assert run._try_launch_ws(1, 2) is False
        assert run._try_launch_ws(1, 2) is False
    assert len(calls) == 2
    assert run._ws_failure == "RuntimeError: no such op"
    messages = [r.getMessage() for r in caplog.records if "Gluon sm_90 kernel failed" in r.getMessage()]
    assert len(messages) == 1 and "using the TMA kernel" in messages[0]

    int8, fp4, v16, two_blocks = run.FMT_INT8, run.FMT_FP4_VALUES, run.FMT_V16, 2 * run.BLOCK_N
    monkeypatch.setattr(run, "interpreter_active", lambda: False)
    assert not run._ws_applies(int8, v16, False, two_blocks)  # a problem the Gluon kernel would otherwise take
    monkeypatch.setattr(run, "_ws_failure", None)
    assert run._ws_applies(int8, v16, False, two_blocks)
    # one key block: the kernel peels the first and the last, so it needs two
    assert not run._ws_applies(int8, v16, False, run.BLOCK_N)
    # the FP4 emulation: its Gluon variant reads K and V in key_slots order only
    assert run._ws_applies(fp4, fp4, True, two_blocks)
    assert not run._ws_applies(fp4, fp4, False, two_blocks)
    assert not run._ws_applies(int8, run.FMT_FP8, False, two_blocks)  # 8-bit P.V: the TMA kernel's


def test_fallback_config_is_the_tma_kernels_measured_one():
    """Without the Gluon kernel, 16-bit P.V at head dims 64 and 128 on sm_90 runs the TMA kernel's 8-warp config,
    the FP4 emulation at head dim 64 the TMA kernel's 4-warp one (what each measured fastest)."""
    from sage_kernels.kernels import configs

    cfg = configs.launch_config(90, 128, run.FMT_INT8, run.FMT_V16)
    assert cfg.gluon
    assert configs.without_gluon(cfg) == configs.LaunchConfig(8, 3, 128, tma=True)
    int8_64 = configs.launch_config(90, 64, run.FMT_INT8, run.FMT_V16)
    assert int8_64.gluon and configs.without_gluon(int8_64) == configs.LaunchConfig(8, 3, 128, tma=True)
    other = configs.launch_config(90, 64, run.FMT_INT8, run.FMT_FP8)  # 8-bit P.V: the TMA kernel only
    assert not other.gluon and configs.without_gluon(other) is other
    fp4 = configs.launch_config(90, 128, run.FMT_FP4_VALUES, run.FMT_FP4_VALUES)  # the FP4 emulation likewise
    assert fp4.gluon and configs.without_gluon(fp4) == configs.LaunchConfig(8, 3, 128, tma=True)
    fp4_64 = configs.launch_config(90, 64, run.FMT_FP4_VALUES, run.FMT_FP4_VALUES)  # at head dim 64 its own TMA one
    assert fp4_64.gluon and configs.without_gluon(fp4_64) == configs.LaunchConfig(4, 3, 64, tma=True)


def test_kernel_route_decides_for_prepare_and_run_alike(monkeypatch):
    """run.kernel_route: which of sm_90's kernels a call takes, the one decision both `prepare` (whether to write
    the Gluon kernel's score bound: a fill, Q's norms and two atomic maxima) and `run` use. The Gluon kernel: bf16
    or fp16 INT8 with 16-bit P.V, >= 2 key blocks, not causal, V TMA-aligned; the TMA kernel without the
    Gluon kernel for fp16/bf16 with one key block; neither for causal or fp32 calls."""
    import torch

    from sage_kernels.kernels import configs
    from sage_kernels.problem import build_problem

    monkeypatch.setattr(run, "interpreter_active", lambda: False)
    monkeypatch.setattr(run, "HAS_GLUON", True)
    monkeypatch.setattr(run, "_ws_failure", None)
    int8, v16 = run.FMT_INT8, run.FMT_V16

    def route(lk=300, dtype=torch.bfloat16, causal=False, v=None):
        q = torch.zeros(1, 2, 200, 128, dtype=dtype)
        k = torch.zeros(1, 2, lk, 128, dtype=dtype)
        v = torch.zeros(1, 2, lk, 128, dtype=dtype) if v is None else v
        p = build_problem(q, k, v, is_causal=causal)
        cfg = configs.launch_config(90, 128, int8, v16, v.element_size())
        return run.kernel_route(p, cfg, int8, v16, 128, False, -(-lk // 128) * 128, p.v)

    assert route() == (True, True)
    assert route(dtype=torch.float16) == (True, True)
    assert route(lk=128) == (True, False)  # one key block: the TMA kernel
    assert route(causal=True) == (False, False)
    assert route(dtype=torch.float32) == (False, False)
    odd = torch.zeros(1, 2, 300, 130, dtype=torch.bfloat16)[..., :128]  # rows 260 bytes apart: no TMA descriptor
    assert route(v=odd) == (False, False)
    monkeypatch.setattr(run, "_ws_failure", "RuntimeError: no such op")  # the Gluon kernel failed to build here
    assert route() == (True, False)
