"""sage_kernels.replay without a GPU: its CUDA specifics replaced by stand-ins, so that its bookkeeping (and the
node's report of it) runs on CPU tensors. The graph stand-in re-runs the captured function on the static inputs
when replayed."""
import pytest

from sage_kernels import replay


class FakeGraph:
    def __init__(self, run, static, out):
        self.run, self.static, self.out, self.replays = run, static, out, 0

    def replay(self):
        self.replays += 1
        self.out.copy_(self.run(*self.static)[0])


@pytest.fixture
def gpu_free(monkeypatch):
    """replay's CUDA specifics replaced: CPU tensors count as GPU tensors, one stream, graphs are FakeGraphs.
    Returns the list of captures made."""
    captures = []

    def capture(device, stream_id, run, static):
        out, replayable = run(*static)
        graph = FakeGraph(run, static, out)
        captures.append(graph)
        graph.replay()  # (a captured graph runs once at once)
        return graph, out, replayable

    monkeypatch.setattr(replay, "_on_gpu", lambda t: True)
    monkeypatch.setattr(replay, "_capturing", lambda: False)
    monkeypatch.setattr(replay, "_stream_id", lambda device: 7)
    monkeypatch.setattr(replay, "_capture_graph", capture)
    was = replay.enabled()
    replay.set_enabled(True)
    yield captures
    replay.set_enabled(was)
    replay.clear()
