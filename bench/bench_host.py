"""Host time of the launches: sage_kernels.launch's fast path against Triton's own launch, then eager calls against
calls replayed from CUDA graphs (sage_kernels.replay), each pair interleaved in one process (host time drifts by 2x
between samples on the H200 machine's host, so alternating rounds is the only fair comparison). A script, not a
test.

    python bench/bench_host.py                   # int8 and fp4 calls at Flux's size, the fused RoPE, a Flux step
    python bench/bench_host.py --rounds 9 --no-step

Per call: host microseconds to issue `--calls` calls with the GPU left to run behind, at a size where the GPU keeps
up (1x2x512x128 attention, a 512-token RoPE), so that the host never waits for CUDA's launch queue. Per step: one
forward of ComfyUI's Flux-dev classes at 128x128 (576 tokens: the GPU is idle, the step's wall time is host time)
with the patch at int8 and the fused RoPE; and that step with every QK RMSNorm and modulation call fused against
ComfyUI's torch ops for them. Medians over the rounds, each round timing both paths.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sage_kernels  # noqa: E402
from bench.profile_call import host_us  # noqa: E402
from sage_kernels import launch, replay, rope  # noqa: E402


def _fast_launch(on: bool) -> None:
    launch.ENABLED = on


def _graph_replay(on: bool) -> None:
    replay.set_enabled(on, forget=False)


def interleaved(fn, rounds: int, calls: int, switch=_fast_launch) -> tuple[float, float]:
    """(median host us per call with switch(False), with switch(True)): by default Triton's launch against the fast
    launch (graph replay off for both), with switch=_graph_replay eager calls against replayed ones."""
    times = {False: [], True: []}
    replay.set_enabled(switch is _graph_replay)
    for enabled in (False, True, True):  # warm both paths (compiles, the fast path's first launch, the capture)
        switch(enabled)
        fn()
    for _ in range(rounds):
        for enabled in (False, True):
            switch(enabled)
            times[enabled].append(host_us(fn, calls))
    switch(True)
    replay.set_enabled(True)
    return statistics.median(times[False]), statistics.median(times[True])


def flux_step():
    from bench.bench_e2e import FLUX_DEV, fast_init
    from tests.support import tiny_models
    from tests.support.comfy_env import import_comfy
    from tests.support.sage3_pack import load_pack

    import_comfy(cpu=False)
    tiny_models.init_weights = fast_init
    pack, nodes = load_pack()
    model = tiny_models.tiny_flux(**dict(FLUX_DEV, image_side=8), dtype=torch.bfloat16, device=torch.device("cuda"))
    patched = nodes.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"].execute(model.patcher, precision="int8",
                                                                       fused_rope=True).args[0]
    norm_mod = pack.nodes.patching.installed_override(patched).norm_mod

    def fuse_all(on: bool) -> None:
        """Every QK RMSNorm and modulation call fused (on) or only those above the scope's default threshold."""
        norm_mod.min_elements = 0 if on else None

    return (lambda: model.forward(patched)), fuse_all


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--no-step", action="store_true", help="skip the Flux step (needs ComfyUI: $COMFYUI_ROOT)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, triton {sage_kernels._triton.triton.__version__}")
    q, k, v = (torch.randn(1, 2, 512, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    x = torch.randn(1, 24, 512, 128, device=dev, dtype=torch.bfloat16)
    freqs = torch.randn(1, 1, 512, 64, 2, 2, device=dev)
    cases = {
        "sage_attention int8 (6 launches)": lambda: sage_kernels.sage_attention(q, k, v, precision="int8",
                                                                                fallback="error"),
        "sage_attention fp4 (6 launches)": lambda: sage_kernels.sage_attention(q, k, v, precision="fp4",
                                                                               fallback="error"),
        "fused_rope (1 launch)": lambda: rope.fused_rope(x, freqs),
    }
    step, fuse_all = (None, None) if args.no_step else flux_step()
    for switch, labels in ((_fast_launch, ("Triton launch", "fast launch")), (_graph_replay, ("eager", "replayed"))):
        print(f"\n{'host time per call':<40} {labels[0]:>14} {labels[1]:>12}  saved")
        for name, fn in cases.items():
            if switch is _graph_replay and "rope" in name:
                continue  # (not an attention call)
            slow, fast = interleaved(fn, args.rounds, args.calls, switch)
            print(f"{name:<40} {slow:11.0f} us {fast:9.0f} us  {slow - fast:5.0f} us ({1 - fast / slow:.0%})")
        if step is not None:
            slow, fast = interleaved(step, args.rounds, 1, switch)
            print(f"{'Flux step, int8 + fused RoPE (57 + 114)':<40} {slow / 1e3:11.1f} ms {fast / 1e3:9.1f} ms  "
                  f"{(slow - fast) / 1e3:5.1f} ms ({1 - fast / slow:.0%})")
    if step is not None:  # QK RMSNorm and modulation: ComfyUI's torch ops against the fused kernels' launches
        comfy, fused = interleaved(step, args.rounds, 1, fuse_all)
        print(f"\n{'host time per step':<40} {'ComfyUI ops':>14} {'fused':>12}  saved")
        print(f"{'Flux step, every QK norm and modulation':<40} {comfy / 1e3:11.1f} ms {fused / 1e3:9.1f} ms  "
              f"{(comfy - fused) / 1e3:5.1f} ms ({1 - fused / comfy:.0%})")


if __name__ == "__main__":
    main()
