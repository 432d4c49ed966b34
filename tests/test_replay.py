"""sage_kernels.replay's bookkeeping on the CPU: which calls get a signature, when a signature is captured,
replayed, left eager or forgotten. The CUDA graph is a stand-in here that re-runs the captured function on the
static inputs when replayed; the real graphs are tests/test_gpu_replay.py's."""
import pytest
import torch

import sage_kernels
from sage_kernels import replay
from tests.support.replay_standins import gpu_free  # noqa: F401  (a fixture)

pytestmark = pytest.mark.replay


def _qkv(seed, shape=(1, 2, 64, 32), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g).to(dtype) for _ in range(3))


def _key(q, k, v, **kw):
    args = dict(settings=("s",), layout="HND", attn_mask=None, return_lse=False, precision="int8", backend="auto")
    args.update(kw)
    return replay.signature(q, k, v, **args)


def _attention(q, k, v, replayable=True, log=None):
    if log is not None:
        log.append((q, k, v))
    return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v, replayable


def test_signature_only_for_calls_that_may_be_replayed(gpu_free):
    q, k, v = _qkv(0)
    key = _key(q, k, v)
    assert key is not None and key == _key(*_qkv(1))  # same kind of call, other values
    assert _key(q, k, v, settings=("t",)) != key
    assert _key(q.half(), k.half(), v.half()) != key
    assert _key(q.transpose(2, 3).contiguous().transpose(2, 3), k, v) != key  # other strides
    with torch.inference_mode():
        assert _key(q, k, v) != key  # (static inputs made there cannot be written outside it)
    assert _key(q, k, v, attn_mask=torch.ones(64, dtype=torch.bool)) is None
    assert _key(q, k, v, return_lse=True) is None
    assert _key(q, k, v, precision="sdpa") is None
    assert _key(q, k, v, backend="reference") is None
    assert _key(q[0], k[0], v[0]) is None  # not 4-D: the API's own checks run eagerly
    assert _key(q, k, v, layout="BHLD") is None
    off = torch.empty(q.numel() + 1)[1:].view(q.shape)  # 4 bytes past a 16-byte boundary
    assert _key(off, k, v) is None
    with torch.enable_grad():
        assert _key(q.requires_grad_(), k, v) is None
    big = torch.empty(1, 24, 8192, 128)  # 4*24*8192^2*128 flops > MAX_FLOPS
    assert _key(big, big, big) is None
    replay.set_enabled(False)
    assert _key(*_qkv(2)) is None


def test_second_call_is_captured_later_calls_replay_with_their_own_inputs(gpu_free, monkeypatch):
    """The second call is captured on its own tensors; a later call whose inputs sit at those addresses replays
    that graph as it is; with MAX_IN_PLACE such graphs taken, one with inputs elsewhere gets a graph on static
    copies, replayed after copying."""
    monkeypatch.setattr(replay, "MAX_IN_PLACE", 1)
    log = []
    inputs = [_qkv(seed) for seed in range(5)]
    key = _key(*inputs[0])
    outs = [replay.call(key, x, lambda q, k, v: _attention(q, k, v, log=log)) for x in inputs[:4]]
    assert len(gpu_free) == 2, "in place at the second call, copied at the first call elsewhere"
    in_place, copied = gpu_free
    assert log[0][0] is inputs[0][0]  # the first call ran eagerly on the caller's tensors
    assert all(s is x for s, x in zip(in_place.static, inputs[1]))
    assert all(s is not x and s.shape == x.shape and s.stride() == x.stride() for s, x in zip(copied.static, inputs[2]))
    assert (in_place.replays, copied.replays) == (1, 2)
    want = [_attention(*x)[0] for x in inputs[:4]] + [_attention(*inputs[4])[0]]
    second = inputs[1]
    for t, fresh in zip(second, inputs[4]):  # new values in the second call's tensors: the graph as it is
        t.copy_(fresh)
    outs.append(replay.call(key, second, _attention))
    assert (in_place.replays, copied.replays) == (2, 2)
    for out, w in zip(outs, want):
        assert torch.equal(out, w)
    graph_outs = {in_place.out.data_ptr(), copied.out.data_ptr()}
    assert len({o.data_ptr() for o in outs} | graph_outs) == 7, "every result is a fresh tensor"
    assert replay.held() == 1 and replay.counts["inputs copied"] >= 2


def test_each_set_of_input_addresses_gets_its_own_in_place_graph_up_to_the_limit(gpu_free, monkeypatch):
    """cudaMallocAsync hands a model's inputs a few different blocks in turn: each set of addresses is captured in
    place (no copies), up to MAX_IN_PLACE; calls elsewhere then share one graph on static copies."""
    monkeypatch.setattr(replay, "MAX_IN_PLACE", 3)
    inputs = [_qkv(seed) for seed in range(5)]
    key = _key(*inputs[0])
    order = [0, 1, 2, 1, 3, 2, 1, 4, 3, 4]
    copied = replay.counts["inputs copied"]
    outs = [replay.call(key, inputs[i], _attention) for i in order]
    on_own_tensors = [i for g in gpu_free for i in range(5) if g.static[0] is inputs[i][0]]
    assert len(gpu_free) == 4 and on_own_tensors == [1, 2, 3], "1, 2, 3 in place; 4 (and 0, had it come back) copied"
    assert replay.counts["inputs copied"] == copied + 2  # the two calls on inputs[4]
    for out, i in zip(outs, order):
        assert torch.equal(out, _attention(*inputs[i])[0])


def test_a_result_is_not_overwritten_by_the_next_replay(gpu_free):
    a, b, c = (_qkv(seed) for seed in range(3))
    key = _key(*a)
    for x in (a, b):
        replay.call(key, x, _attention)
    first = replay.call(key, a, _attention)
    kept = first.clone()
    replay.call(key, c, _attention)
    assert torch.equal(first, kept)


def test_kernel_less_plans_and_raising_calls_stay_eager(gpu_free):
    x = _qkv(0)
    sdpa_key = _key(*x, settings=("sdpa plan",))
    for _ in range(3):
        replay.call(sdpa_key, x, lambda q, k, v: _attention(q, k, v, replayable=False))
    raising_key = _key(*x, settings=("raises",))

    def fails(q, k, v):
        raise ValueError("fallback='error'")

    for _ in range(2):
        with pytest.raises(ValueError):
            replay.call(raising_key, x, fails)
    assert gpu_free == [] and replay.held() == 0


def test_a_failed_capture_is_logged_once_and_the_signature_stays_eager(gpu_free, monkeypatch, caplog):
    def broken_capture(device, stream_id, run, static):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(replay, "_capture_graph", broken_capture)
    inputs = [_qkv(seed) for seed in range(4)]
    key = _key(*inputs[0])
    calls = []
    with caplog.at_level("INFO"):
        outs = [replay.call(key, x, lambda q, k, v: _attention(q, k, v, log=calls)) for x in inputs]
    for out, x in zip(outs, inputs):
        assert torch.equal(out, _attention(*x)[0])
    assert len(calls) == 4 and all(c[0] is x[0] for c, x in zip(calls, inputs)), "each call ran eagerly"
    assert sum("could not capture" in r.getMessage() for r in caplog.records) == 1
    assert replay.held() == 0


def test_least_recently_used_signatures_are_dropped_and_clear_forgets_all(gpu_free, monkeypatch):
    monkeypatch.setattr(replay, "MAX_ENTRIES", 2)
    shapes = [(1, 2, n, 32) for n in (16, 32, 48)]
    keys = []
    for shape in shapes:
        x = _qkv(0, shape)
        keys.append(_key(*x))
        for _ in range(2):
            replay.call(keys[-1], x, _attention)
    assert replay.held() == 2 and len(gpu_free) == 3
    x = _qkv(1, shapes[0])  # dropped: warms up and captures again
    replay.call(keys[0], x, _attention)
    assert len(gpu_free) == 3
    replay.call(keys[0], x, _attention)
    assert len(gpu_free) == 4
    replay.clear()
    assert replay.held() == 0


def test_a_forgotten_graphs_output_is_freed_through_an_op(gpu_free, monkeypatch):
    """Dropped (least recently used) or cleared, a graph's output memory is freed at once through `set_()`: under
    cudaMallocAsync torch warns on freeing a graph's allocation, and only from an op can that warning be filtered."""
    monkeypatch.setattr(replay, "MAX_ENTRIES", 1)
    for n in (16, 32):
        x = _qkv(0, (1, 2, n, 32))
        for _ in range(2):
            replay.call(_key(*x), x, _attention)
    dropped, kept = gpu_free
    assert dropped.out.untyped_storage().nbytes() == 0 and kept.out.untyped_storage().nbytes() > 0
    replay.clear()
    assert kept.out.untyped_storage().nbytes() == 0


def test_sage_attention_goes_through_replay(gpu_free):
    """Through the API (the int8 kernel, in Triton's interpreter on a CPU machine): captured at the second call,
    replayed for the second and third, results equal to the eager calls'; an SDPA plan never captured."""
    inputs = [_qkv(seed, (1, 2, 64, 64), torch.bfloat16) for seed in range(3)]
    got = [sage_kernels.sage_attention(*x, precision="int8") for x in inputs]
    plan = sage_kernels.explain(*inputs[0], precision="int8")
    assert len(gpu_free) == (0 if plan.backend == "torch" else 2)
    if gpu_free:  # (the third call's inputs sit elsewhere: a second graph, on copies)
        assert len(gpu_free) == 2 and [g.replays for g in gpu_free] == [1, 1]
    for x in inputs:
        sage_kernels.sage_attention(*x, precision="auto", backend="auto", smooth_q="off")  # SDPA on a CPU
    assert len(gpu_free) <= 2
    replay.set_enabled(False)
    want = [sage_kernels.sage_attention(*x, precision="int8") for x in inputs]
    assert all(torch.equal(a, b) for a, b in zip(got, want))

