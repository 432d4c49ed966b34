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

    class Ops:  # a problem the Gluon kernel would otherwise take
        qk_format, pv_format, lk_pad = run.FMT_INT8, run.FMT_V16, 2 * run.BLOCK_N

    monkeypatch.setattr(run, "interpreter_active", lambda: False)
    assert not run._ws_applies(None, Ops())
    monkeypatch.setattr(run, "_ws_failure", None)
    assert run._ws_applies(None, Ops())
    Ops.lk_pad = run.BLOCK_N  # one key block: the kernel peels the first and the last, so it needs two
    assert not run._ws_applies(None, Ops())

    class Fp4Ops:  # the FP4 emulation: its Gluon variant reads K and V in key_slots order only
        qk_format, pv_format, lk_pad, key_slots = run.FMT_FP4_VALUES, run.FMT_FP4_VALUES, 2 * run.BLOCK_N, True

    assert run._ws_applies(None, Fp4Ops())
    Fp4Ops.key_slots = False
    assert not run._ws_applies(None, Fp4Ops())
    Ops.lk_pad, Ops.pv_format = 2 * run.BLOCK_N, run.FMT_FP8  # INT8 Q.K^T with 8-bit P.V: the TMA kernel's
    assert not run._ws_applies(None, Ops())


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
