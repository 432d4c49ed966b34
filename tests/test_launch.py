"""sage_kernels.launch: the key that remembers a compiled kernel is finer than Triton's specialization, and the fast
path launches the remembered kernel with exactly Triton's arguments (a recording stand-in for the compiled kernel;
the GPU run is tests/test_gpu_launch.py)."""
import pytest
import torch
import triton.language as tl
from triton.runtime.jit import JITFunction

from sage_kernels import launch


def _example(x_ptr, n, scale, D: tl.constexpr, D_POW2: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    pass


EXAMPLE = JITFunction(_example)  # (never compiled: its parameters are what the launcher reads)


def test_tensors_are_keyed_by_dtype_and_16_byte_alignment(monkeypatch):
    monkeypatch.setattr(launch, "_on_gpu", lambda t: True)  # (CPU tensors stand in for the GPU's)
    base = torch.zeros(64, dtype=torch.float32)
    aligned, off_by_4, off_by_16 = base[:8], base[1:9], base[4:12]
    assert launch.arg_key(aligned) == launch.arg_key(off_by_16)  # both 16-byte aligned: one variant
    assert launch.arg_key(aligned) != launch.arg_key(off_by_4)  # Triton assumes alignment in the aligned one
    assert launch.arg_key(aligned) != launch.arg_key(aligned.to(torch.float16))


def test_scalars_are_keyed_by_type_and_value():
    keys = [launch.arg_key(v) for v in (1, True, 1.0, 16, 17, 0.5, None)]
    assert len(set(keys)) == len(keys)  # 1, True and 1.0 select different variants
    assert launch.arg_key(4608) == launch.arg_key(4608)


def test_other_arguments_take_tritons_launch():
    with pytest.raises(launch._Unkeyable):
        launch.arg_key([1, 2])
    with pytest.raises(launch._Unkeyable):
        launch.launch_key((1,), {"X": torch.zeros(1)})  # a tensor passed by keyword
    assert launch.launch_key((1, 2.0), {"D": 128, "num_warps": 4})[1] == (("D", 128), ("num_warps", 4))


def test_trailing_parameters_follow_the_kernel_signature():
    fast = launch.FastLaunch(EXAMPLE)
    # keywords in any order, launch options (num_warps) are not parameters
    assert fast._trailing(3, {"BLOCK_ROWS": 32, "num_warps": 4, "D_POW2": 128, "D": 96}) == (96, 128, 32)


class _RecordingKernel:
    function, packed_metadata = "function handle", "packed metadata"

    def __init__(self):
        self.launches = []

    def run(self, *args):
        self.launches.append(args)


class _RecordingJit:
    """Stands in for a JITFunction: `run` is Triton's launch, or with warmup its compile alone (each counted),
    returning the compiled kernel."""

    def __init__(self):
        self.params = EXAMPLE.params
        self.kernel = _RecordingKernel()
        self.triton_launches = []
        self.triton_compiles = []

    def run(self, *args, grid, warmup, **kwargs):
        (self.triton_compiles if warmup else self.triton_launches).append((grid, args, kwargs))
        return self.kernel

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=False, **kwargs)


@pytest.fixture
def fast_path(monkeypatch):
    monkeypatch.setattr(launch, "_fast_path_applies", lambda fn: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(launch, "_raw_stream", lambda device: 1234)
    monkeypatch.setattr(launch, "_on_gpu", lambda t: True)  # (CPU tensors stand in for the GPU's)


def test_the_first_launch_compiles_through_triton_every_launch_goes_straight_to_the_kernel(fast_path):
    """Tensors reach the kernel's launcher as addresses: Triton's launcher would query the driver about tensors, which
    fails for a CUDA graph's own allocations under cudaMallocAsync (ComfyUI's default allocator)."""
    jit = _RecordingJit()
    fast = launch.FastLaunch(jit)
    x = torch.zeros(32)
    fast[(7,)](x, 5, 2.5, D=128, D_POW2=128, BLOCK_ROWS=32, num_warps=4)
    assert len(jit.triton_compiles) == 1 and not jit.triton_launches
    fast[(9, 2)](x, 5, 2.5, D=128, D_POW2=128, BLOCK_ROWS=32, num_warps=4)
    assert len(jit.triton_compiles) == 1 and not jit.triton_launches
    head = (1234, "function handle", "packed metadata", None, None, None)
    assert jit.kernel.launches == [(7, 1, 1, *head, x.data_ptr(), 5, 2.5, 128, 128, 32),
                                   (9, 2, 1, *head, x.data_ptr(), 5, 2.5, 128, 128, 32)]


@pytest.mark.parametrize("change", ["int value", "alignment", "constexpr", "launch option", "device"])
def test_anything_that_may_select_another_variant_goes_through_triton_again(fast_path, monkeypatch, change):
    jit = _RecordingJit()
    fast = launch.FastLaunch(jit)
    base = torch.zeros(64)
    args, kwargs = [base[:8], 5, 2.5], dict(D=128, D_POW2=128, BLOCK_ROWS=32, num_warps=4)
    fast[(1,)](*args, **kwargs)
    if change == "int value":
        args[1] = 16
    elif change == "alignment":
        args[0] = base[1:9]
    elif change == "constexpr":
        kwargs["BLOCK_ROWS"] = 64
    elif change == "launch option":
        kwargs["num_warps"] = 8
    else:
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    fast[(1,)](*args, **kwargs)
    assert len(jit.triton_compiles) == 2 and len(jit.kernel.launches) == 2


def test_switched_off_or_unkeyable_every_launch_is_tritons(fast_path, monkeypatch):
    jit = _RecordingJit()
    fast = launch.FastLaunch(jit)
    for _ in range(2):
        fast[(1,)]([1, 2], 5, 2.5, D=128, D_POW2=128, BLOCK_ROWS=32)  # a list argument has no key
    monkeypatch.setattr(launch, "ENABLED", False)
    for _ in range(2):
        fast[(1,)](3, 5, 2.5, D=128, D_POW2=128, BLOCK_ROWS=32)
    assert len(jit.triton_launches) == 4 and not jit.kernel.launches and not jit.triton_compiles


def test_a_cpu_tensor_takes_tritons_launch(fast_path, monkeypatch):
    """Triton's launch rejects a CPU tensor with a clear error; its address must never reach a GPU kernel."""
    monkeypatch.setattr(launch, "_on_gpu", lambda t: t.is_cuda)
    jit = _RecordingJit()
    fast = launch.FastLaunch(jit)
    for _ in range(2):
        fast[(1,)](torch.zeros(8), 5, 2.5, D=128, D_POW2=128, BLOCK_ROWS=32)
    assert len(jit.triton_launches) == 2 and not jit.kernel.launches and not jit.triton_compiles


def test_the_interpreter_gets_tritons_launch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not launch._fast_path_applies(EXAMPLE)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert launch._fast_path_applies(EXAMPLE) == launch._supported_triton()
    assert not launch._fast_path_applies(lambda: None)  # not a JITFunction (the interpreter's kernels)


def test_a_profilers_launch_hooks_get_tritons_launch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    chain = launch.knobs.runtime.launch_enter_hook
    hook = lambda metadata: None  # noqa: E731
    chain.add(hook)
    try:
        assert not launch._fast_path_applies(EXAMPLE)
    finally:
        chain.remove(hook)
    assert launch._fast_path_applies(EXAMPLE) == launch._supported_triton()


def test_host_grid_arithmetic_equals_tritons():
    """The host's cdiv and next_power_of_2 (plain Python, used on every launch) give Triton's values."""
    import triton

    from sage_kernels._triton import cdiv, next_power_of_2

    for n in list(range(0, 300)) + [4095, 4096, 4097, 34936, 2**31 - 1, 2**31]:
        assert next_power_of_2(n) == triton.next_power_of_2(n)
        for b in (1, 2, 7, 8, 128, 1024):
            assert cdiv(n, b) == triton.cdiv(n, b)
