"""End to end: one denoiser step of ComfyUI's real Flux-dev and HunyuanVideo (and Wan 2.1 14B) classes at their
released configs (random bf16 weights), with ComfyUI's default attention and with "Sage3 Attention Patch" at each
precision.

    python bench/bench_e2e.py                          # Flux 1024x1024 and HunyuanVideo 544x960x65 (H100/H200)
    python bench/bench_e2e.py --models wan --precisions sdpa auto      # Wan 2.1 T2V 14B, 832x480, 81 frames
    python bench/bench_e2e.py --models flux --precisions int8
    python bench/bench_e2e.py --precisions int8 int8+watch     # the Quality node's NaN/Inf watch on top
    python bench/bench_e2e.py --precisions int8 int8+fuseall int8+fuse22   # norm/modulation size thresholds

ComfyUI comes from $COMFYUI_ROOT (bench/make_comfy_bundle.sh makes a trimmed copy for the GPU machine). The pack
is loaded through ComfyUI's own custom-node loader. Time = median of --reps forwards after a warm-up; "no attention"
replaces attention with q (shows attention's share of the step). --bound adds two ceilings for any 8-bit attention
backend: "fp8 GEMM, same FLOPs" replaces each attention call by an FP8 GEMM of its FLOP count (4*B*H*Lq*Lk*D,
torch._scaled_mm), and "8-bit peak" gives each call exactly FLOPs / --peak-tops of GPU time (an FP8 GEMM resized
to take that long: an attention running at the FP8 GEMM's best measured rate, with free softmax and
quantization). --rope-share times the default with ComfyUI's RoPE skipped; --fused-rope off/both times the patch
with ComfyUI's RoPE, --fused-norm-mod off/both with ComfyUI's QK RMSNorm and modulation. Accuracy: cos / rel L1 of the step's output vs the unpatched model's. Results also go to
$OUT/bench_e2e.json when OUT is set.

Timing is interleaved: every variant runs two warm-up steps (compilation; qk_smoothing=auto's probe), then --reps
rounds each time one step of every variant in turn, and a variant's time is its median over the rounds. So the
GPU's drift over a run (clocks, heat: 2-3% on the H200 between the first and the last variant of a sequential run)
falls on all variants alike; "spread" is each variant's (slowest - fastest) / median over the rounds.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sage_kernels import replay  # noqa: E402
from tests.support.comfy_env import import_comfy  # noqa: E402

FLUX_DEV = dict(hidden=3072, heads=24, double_blocks=19, single_blocks=38, image_side=64, text_tokens=512,
                context_dim=4096)
HUNYUAN_VIDEO = dict(hidden=3072, heads=24, double_blocks=20, single_blocks=40, frames=17, height=68, width=120,
                     text_tokens=256, context_dim=4096)
# Wan 2.1 T2V 14B at 832x480, 81 frames: 21 x 30 x 52 = 32760 tokens (self-attention), 512 text tokens (cross)
WAN21_14B = dict(hidden=5120, ffn_dim=13824, heads=40, layers=40, frames=21, height=60, width=104, text_tokens=512,
                 text_dim=4096)
# heads x head dim per family
HIDDEN = {"flux": FLUX_DEV["hidden"], "hunyuan_video": HUNYUAN_VIDEO["hidden"], "wan": WAN21_14B["hidden"]}


def fast_init(module: torch.nn.Module, seed: int = 0) -> None:
    """Seeded fan-in-scaled normal weights drawn on the module's device (12.8B parameters in seconds)."""
    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
            elif "norm" in name or name.endswith("scale"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)


def build(family: str, device, dtype):
    from tests.support import tiny_models

    tiny_models.init_weights = fast_init  # the test builders draw weights on the CPU: too slow at 12.8B
    if family == "flux":
        return tiny_models.tiny_flux(**FLUX_DEV, dtype=dtype, device=device), "Flux-dev 1024x1024"
    if family == "wan":
        c = WAN21_14B
        model = tiny_models.tiny_wan(dim=c["hidden"], heads=c["heads"], layers=c["layers"], frames=c["frames"], side=1,
                                     text_tokens=c["text_tokens"], text_dim=c["text_dim"], ffn_dim=c["ffn_dim"],
                                     dtype=dtype, device=device)
        gen = torch.Generator().manual_seed(1)  # the builder makes square latents: replace x by the 832x480 one
        model.inputs["x"] = torch.randn(1, 16, c["frames"], c["height"], c["width"], generator=gen).to(device, dtype)
        model.notes["tokens"] = c["frames"] * (c["height"] // 2) * (c["width"] // 2)
        model.patcher.model.diffusion_model.patch_embedding.float()  # Wan embeds the latent in fp32 (x.float())
        return model, "Wan2.1-14B 832x480x81f"
    c = HUNYUAN_VIDEO
    model = tiny_models.tiny_hunyuan_video(hidden=c["hidden"], heads=c["heads"], double_blocks=c["double_blocks"],
                                           single_blocks=c["single_blocks"], frames=c["frames"], side=1,
                                           text_tokens=c["text_tokens"], padded_text=0, context_dim=c["context_dim"],
                                           dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(1)  # the builder makes square latents: replace x by the 544x960 one
    model.inputs["x"] = torch.randn(1, 16, c["frames"], c["height"], c["width"], generator=gen).to(device, dtype)
    tokens = c["frames"] * (c["height"] // 2) * (c["width"] // 2)
    model.notes["tokens"] = tokens + c["text_tokens"]
    return model, "HunyuanVideo 544x960x65f"


def timed(model_obj, patcher, reps):
    """(last output, median seconds per step) of `reps` steps after a warm-up step: one variant alone."""
    out, times = interleaved(model_obj, [patcher], reps, warmup=1)
    return out[0], statistics.median(times[0])


def one_step(model_obj, patcher) -> tuple[torch.Tensor, float]:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model_obj.forward(patcher)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def interleaved(model_obj, patchers, reps, warmup=2, replays=None):
    """([last output per patcher], [[seconds per round] per patcher]): `warmup` steps of each, then `reps` rounds
    of one step of each in turn; replays: per patcher whether small calls are replayed from CUDA graphs (default:
    all)."""
    replays = replays or [True] * len(patchers)
    outs = [None] * len(patchers)
    for i, patcher in enumerate(patchers):
        replay.set_enabled(replays[i], forget=False)
        for _ in range(warmup):
            outs[i] = model_obj.forward(patcher)
    times = [[] for _ in patchers]
    for _ in range(reps):
        for i, patcher in enumerate(patchers):
            replay.set_enabled(replays[i], forget=False)
            outs[i], t = one_step(model_obj, patcher)
            times[i].append(t)
    replay.set_enabled(True, forget=False)
    return outs, times


def _settings(choice: str) -> list[bool]:
    """An on/off/both option as the values to time."""
    return {"on": [True], "off": [False], "both": [False, True]}[choice]


def spread(times) -> float:
    return (max(times) - min(times)) / statistics.median(times)


def rope_skipped():
    """Context: ComfyUI's RoPE functions (comfy.ldm.flux.math, and the modules that imported them) return q and k
    unrotated: the step's cost without RoPE (wrong outputs; for timing only)."""
    import comfy.ldm.flux.math as flux_math
    from tests.support.sage3_pack import load_pack

    originals = {name: getattr(flux_math, name) for name in ("apply_rope", "apply_rope1")}
    skip = {"apply_rope": lambda xq, xk, freqs_cis: (xq, xk), "apply_rope1": lambda x, freqs_cis: x}
    return load_pack()[0].nodes.rope_scope.rebound(originals, skip)


def no_attention(patcher):
    """Clone whose attention returns q in the output layout (the step's cost without attention)."""
    return with_override(patcher, lambda func, q, k, v, *args, **kwargs: _q_as_output(q, kwargs))


def _flops(q, k, kwargs) -> int:
    """4*B*H*Lq*Lk*D of one attention call in either of ComfyUI's layouts."""
    if kwargs.get("skip_reshape"):
        b, h, lq, d = q.shape
        return 4 * b * h * lq * k.shape[2] * d
    b, lq, inner = q.shape
    return 4 * b * lq * k.shape[1] * inner


class Fp8GemmBound:
    """Attention override that runs one FP8 GEMM (M = N, K = 8192, bf16 out) of the call's FLOP count and returns
    q in the output layout: an upper bound on the speed of any 8-bit attention kernel (it does the same tensor-core
    work with no softmax, quantization or memory traffic beyond the GEMM's)."""

    K = 8192

    def __init__(self):
        self.operands = {}

    def gemm(self, flops: int, device):
        n = max(16, round((flops / (2 * self.K)) ** 0.5 / 16) * 16)
        if n not in self.operands:
            gen = torch.Generator(device=device).manual_seed(0)
            a = torch.randn(n, self.K, device=device, generator=gen).to(torch.float8_e4m3fn)
            b = torch.randn(n, self.K, device=device, generator=gen).to(torch.float8_e4m3fn)
            self.operands[n] = (a, b, torch.ones((), device=device))
        a, b, one = self.operands[n]
        return torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16), 2 * n * n * self.K

    def __call__(self, func, q, k, v, *args, **kwargs):
        self.gemm(_flops(q, k, kwargs), q.device)
        return _q_as_output(q, kwargs)


def _q_as_output(q, kwargs):
    if kwargs.get("skip_reshape") and not kwargs.get("skip_output_reshape"):
        b, h, l, d = q.shape
        return q.transpose(1, 2).reshape(b, l, h * d)
    return q


class PeakBound:
    """Attention override whose GPU time per call is FLOPs / peak: an FP8 GEMM resized until its measured time is
    that (calibrated per call size during the warm-up step), then q in the output layout. The step time an attention
    kernel running at the 8-bit tensor-core peak would give."""

    def __init__(self, peak_tops: float):
        self.peak = peak_tops * 1e12
        self.gemms = Fp8GemmBound()
        self.sized = {}  # attention FLOPs -> GEMM FLOPs

    def _time(self, flops, device) -> float:
        return self.gemms.gemm(flops, device)[1] / gemm_rate(self.gemms, flops, device) / 1e12

    def __call__(self, func, q, k, v, *args, **kwargs):
        flops = _flops(q, k, kwargs)
        if flops not in self.sized:
            target, sized = flops / self.peak, flops
            for _ in range(3):
                sized = int(sized * target / self._time(sized, q.device))
            self.sized[flops] = sized
        self.gemms.gemm(self.sized[flops], q.device)
        return _q_as_output(q, kwargs)


def with_override(patcher, override):
    clone = patcher.clone()
    opts = dict(clone.model_options.get("transformer_options", {}))
    opts["optimized_attention_override"] = override
    clone.model_options["transformer_options"] = opts
    return clone


def gemm_rate(bound: Fp8GemmBound, flops: int, device) -> float:
    """TOPS of the bound's GEMM for one attention call of `flops` (CUDA events, median of 20)."""
    bound.gemm(flops, device)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        _, done = bound.gemm(flops, device)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return done / statistics.median(times) / 1e12


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["flux", "hunyuan_video"], help="flux, hunyuan_video, wan")
    ap.add_argument("--precisions", nargs="*", default=["sdpa", "int8", "fp4"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bound", action="store_true", help="also time the step with attention replaced by an FP8 GEMM "
                    "of its FLOPs and with attention at --peak-tops (ceilings of any 8-bit attention)")
    ap.add_argument("--rope-share", action="store_true", help="also time ComfyUI's default with RoPE skipped")
    ap.add_argument("--fused-rope", choices=["on", "off", "both"], default="on",
                    help="the patch's fused_rope widget: on (its default), off (ComfyUI's RoPE), or both rows")
    ap.add_argument("--fused-norm-mod", choices=["on", "off", "both"], default="on",
                    help="the patch's fused_norm_mod widget: on (its default), off (ComfyUI's functions), or both rows")
    ap.add_argument("--graph-replay", choices=["on", "off", "both"], default="on",
                    help="small calls replayed from CUDA graphs (sage_kernels.replay): on (the default), off, or both rows")
    ap.add_argument("--peak-tops", type=float, default=1252.0, help="8-bit tensor-core peak for --bound (default: "
                    "the H200's measured torch._scaled_mm rate, shared/docs/peer-measurements.md)")
    args = ap.parse_args()
    device = torch.device("cuda")
    import_comfy(cpu=False)
    from tests.support.sage3_pack import load_pack

    pack, comfy_nodes = load_pack()
    installed_override = pack.nodes.patching.installed_override
    patch = comfy_nodes.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
    report = comfy_nodes.NODE_CLASS_MAPPINGS["Sage3AttentionReport"]
    quality = comfy_nodes.NODE_CLASS_MAPPINGS["Sage3AttentionQuality"]
    import comfy.ldm.modules.attention as comfy_attention

    name = torch.cuda.get_device_name(device)
    print(f"# {name}, torch {torch.__version__}, ComfyUI default attention: "
          f"{comfy_attention.optimized_attention.__name__}")
    rows = []
    for family in args.models:
        model, label = build(family, device, torch.bfloat16)
        params = sum(p.numel() for p in model.patcher.model.diffusion_model.parameters()) / 1e9
        tokens = model.notes["tokens"]
        # (row label, patcher, sage spec or None): every variant is timed interleaved with the others
        variants = [("ComfyUI default", model.patcher, None), ("no attention", no_attention(model.patcher), None)]
        notes = {}
        if args.bound:
            bound = Fp8GemmBound()
            variants.append(("fp8 GEMM, same FLOPs", with_override(model.patcher, bound), None))
            variants.append(("8-bit peak", with_override(model.patcher, PeakBound(args.peak_tops)), None))
            notes["8-bit peak"] = f"attention at {args.peak_tops:.0f} TOPS"
        replays = [True] * len(variants)  # per variant: small calls replayed from CUDA graphs
        for spec, fused_rope, fused_norm_mod, graphs in itertools.product(
                args.precisions, _settings(args.fused_rope), _settings(args.fused_norm_mod),
                _settings(args.graph_replay)):
            # spec: "int8", "int8:off" (precision:qk_smoothing widget value), "int8+watch", "int8+fuseall",
            # "int8+fuse22"
            spec_patch, _, extra = spec.partition("+")  # "+watch": then a Quality node with only its NaN/Inf watch
            precision, _, smoothing = spec_patch.partition(":")
            patched = patch.execute(model.patcher, precision=precision, qk_smoothing=smoothing or "auto",
                                    fused_rope=fused_rope, fused_norm_mod=fused_norm_mod).args[0]
            if extra == "watch":
                patched = quality.execute(patched, watch_nonfinite=True).args[0]
            if extra.startswith("fuse") and fused_norm_mod:  # "+fuseall": every norm/modulation/GELU call fused;
                # "+fuse<k>": those of at least 2**k elements (the widget's default: checked_calls.MIN_ELEMENTS)
                override = installed_override(patched)
                for scope in (override.norm_mod, override.strided):
                    scope.min_elements = 0 if extra == "fuseall" else 2 ** int(extra[4:])
            notes_ = ("" if fused_rope else " (ComfyUI RoPE)") + ("" if fused_norm_mod else " (ComfyUI norm/mod)")
            notes_ += "" if graphs else " (eager)"
            variants.append((f"sage3 {spec}{notes_}", patched, spec))
            replays.append(graphs)
        torch.cuda.reset_peak_memory_stats()
        outs, times = interleaved(model, [v[1] for v in variants], args.reps, replays=replays)
        peak_all = torch.cuda.max_memory_allocated() / 2**30  # (of the whole interleaved run)
        ref, t_ref = outs[0], statistics.median(times[0])
        if args.bound:
            rate = gemm_rate(bound, 4 * tokens * tokens * HIDDEN[family], device)
            notes["fp8 GEMM, same FLOPs"] = f"its GEMM: {rate:.0f} TOPS at {tokens} tokens"
        for (variant, patched, spec), out, ts in zip(variants, outs, times):
            t = statistics.median(ts)
            row = dict(model=label, tokens=tokens, params_b=params, variant=variant, s=t, speedup=t_ref / t,
                       spread=spread(ts), cos=float("nan"), rel_l1=float("nan"), peak_gb=float("nan"),
                       kernels=notes.get(variant, "-"))
            if variant == "ComfyUI default" or spec is not None:
                a, b = out.double().flatten(), ref.double().flatten()
                row.update(cos=float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
                           rel_l1=float((a - b).abs().sum() / b.abs().sum()))
            if variant == "ComfyUI default":
                row["kernels"] = "comfy"
            if spec is not None:
                text = report.execute(patched, {}).args[0]
                kernels = next((ln[len("kernels: "):] for ln in text.splitlines() if ln.startswith("kernels: ")), "?")
                kernels += "".join(f"; {ln}" for ln in text.splitlines()
                                   if ln.startswith(("fused RoPE: ", "fused norm/modulation: ", "strided activations: ",
                                                     "qk_smoothing auto: ")))
                row["kernels"] = kernels
            rows.append(row)
        rows[-len(variants)]["peak_gb"] = peak_all
        if args.rope_share:  # (patches ComfyUI's functions for its duration: timed on its own, after the others)
            with rope_skipped():
                _, t_no_rope = timed(model, model.patcher, args.reps)
            _, t_again = timed(model, model.patcher, args.reps)
            rows.append(dict(model=label, tokens=tokens, params_b=params, variant="default, no RoPE",
                             s=t_no_rope, speedup=t_again / t_no_rope, spread=float("nan"), cos=float("nan"),
                             rel_l1=float("nan"), peak_gb=float("nan"), kernels="x the default timed right after it"))
        del model, ref, outs, variants
        torch.cuda.empty_cache()
    print(f"\n{'model':<26} {'tokens':>7} {'variant':<34} {'s/step':>8} {'x default':>9} {'spread':>7} {'cos':>9} "
          f"{'relL1':>8}  kernels   (peak GB of the whole interleaved run: the first row's)")
    for r in rows:
        print(f"{r['model']:<26} {r['tokens']:>7} {r['variant']:<34} {r['s']:8.4f} {r['speedup']:9.3f} "
              f"{r['spread']:7.3f} {r['cos']:9.5f} {r['rel_l1']:8.4f}  {r['kernels']}"
              + (f"  [peak {r['peak_gb']:.1f} GB]" if r['peak_gb'] == r['peak_gb'] else ""))
    if replay.counts:
        print(f"graph replay over the whole run (all variants): {dict(replay.counts)}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_e2e.json").write_text(json.dumps({"device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
