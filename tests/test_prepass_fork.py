"""The pre-pass fork's stream protocol (sage_kernels/kernels/streams.py) without a GPU: torch's stream and event
calls replaced by recording fakes. The GPU behaviour (same bits, ordering under freed and reused buffers, capture)
is tests/test_prepass_streams.py's."""
import pytest
import torch

from sage_kernels.kernels import streams


class _FakeStream:
    def __init__(self, name, log):
        self.name, self.log = name, log
        self.cuda_stream = hash(name)

    def wait_event(self, event):
        self.log.append(("wait", self.name, event.recorded_on))


class _FakeEvent:
    def __init__(self, log):
        self.log, self.recorded_on = log, None

    def record(self, stream):
        self.recorded_on = stream.name
        self.log.append(("record", stream.name))


@pytest.fixture
def fake_cuda(monkeypatch):
    log = []
    main, side = _FakeStream("main", log), _FakeStream("side", log)
    monkeypatch.setattr(streams, "interpreter_active", lambda: False)
    monkeypatch.setattr(streams, "_side_stream", lambda device, caller: side)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.cuda, "Event", lambda: _FakeEvent(log))
    monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: log.append(("current", stream.name)))
    monkeypatch.setattr(streams, "ENABLED", True)
    return log


def test_fork_side_work_and_join_are_ordered(fake_cuda):
    log = fake_cuda
    fork = streams.PrepassFork(torch.device("cuda", 0))
    assert log == [("record", "main"), ("wait", "side", "main")]  # the side stream starts after the caller's work
    with fork.on_side():
        log.append(("launch",))
        ready = fork.side_event()
    fork.wait(ready)
    assert log[2:] == [("current", "side"), ("launch",), ("record", "side"), ("current", "main"),
                       ("wait", "main", "side")]
    del log[:]
    fork.join()
    fork.join()  # once only
    assert log == [("record", "side"), ("wait", "main", "side")]
    with fork.on_side():  # after the join nothing goes to the side stream
        pass
    assert len(log) == 2


def test_an_error_restores_the_callers_stream_and_joins(fake_cuda):
    log = fake_cuda
    with pytest.raises(RuntimeError):
        with streams.PrepassFork(torch.device("cuda", 0)) as fork:
            with fork.on_side():
                raise RuntimeError("launch failed")
    assert log[2:] == [("current", "side"), ("current", "main"), ("record", "side"), ("wait", "main", "side")]
    del log[:]
    with streams.PrepassFork(torch.device("cuda", 0)) as fork:  # no error: the join is left to the caller
        pass
    assert log == [("record", "main"), ("wait", "side", "main")]


@pytest.mark.parametrize("why", ["disabled", "cpu", "interpreter"])
def test_no_side_stream_when_off_on_cpu_or_in_the_interpreter(fake_cuda, monkeypatch, why):
    device = torch.device("cpu") if why == "cpu" else torch.device("cuda", 0)
    if why == "disabled":
        monkeypatch.setattr(streams, "ENABLED", False)
    if why == "interpreter":
        monkeypatch.setattr(streams, "interpreter_active", lambda: True)
    with streams.PrepassFork(device) as fork:
        with fork.on_side():
            pass
        assert fork.side_event() is None
        fork.wait(None)
        fork.join()
    assert fake_cuda == []
