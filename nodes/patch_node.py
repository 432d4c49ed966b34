"""Node "Sage3 Attention Patch": returns a clone of the model whose attention runs through sage_kernels."""
from __future__ import annotations

from comfy_api.latest import io

from .override import INT8_PV, PatchSettings, Sage3Override
from .patching import patched_clone, prior_for_new_patch

NODE_ID = "Sage3AttentionPatch"  # other packs and saved workflows refer to this id: keep it
DISPLAY_NAME = "Sage3 Attention Patch"
# widget value -> sage_kernels smooth_q ("auto": the override decides per call site, nodes/q_smoothing.py)
QK_SMOOTHING = {"auto": "auto", "per_block": "block", "global": "global", "off": "off"}


class Sage3AttentionPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name=DISPLAY_NAME,
            category="model_patches/sage3",
            description="Runs the model's attention through low-bit Sage3 kernels (fp4 / int8). Put it last on the "
                        "MODEL path, right before the guider or sampler.",
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("precision", options=["auto", "fp4", "int8", "sdpa"], default="auto",
                               tooltip="auto: fp4 on Blackwell, int8 on Ampere/Ada; on Hopper int8 for bf16 video-sized "
                                       "calls (30k+ tokens, head dim 128, not causal: measured 1.03-1.2x faster) and "
                                       "PyTorch SDPA for the rest; SDPA elsewhere and for small calls. "
                                       "fp4 keeps the first and last sampling steps at int8 unless a Sage3 Attention "
                                       "Quality node says otherwise."),
                io.Combo.Input("fallback", options=["sdpa", "error"], default="sdpa",
                               tooltip="What to do with calls the kernel cannot run (masks that vary per query, "
                                       "unsupported GPU or dtype...). sdpa: run ComfyUI's attention and log the reason "
                                       "once. error: stop with the reason."),
                io.Combo.Input("qk_smoothing", options=list(QK_SMOOTHING), default="auto",
                               tooltip="Q smoothing before quantization (K smoothing is always on). per_block: "
                                       "SageAttention3's, per 128 queries. auto: int8 calls smooth Q per block only "
                                       "at call sites where leaving it out would change the output (measured once per "
                                       "site and run: Q's offset, then if needed both outputs); elsewhere it costs "
                                       "3-17% of an int8 call on an H200 for nothing. fp4 always per block. global: "
                                       "one mean per head. off: never."),
                io.Combo.Input("int8_pv", options=list(INT8_PV), default="16bit",
                               tooltip="P.V of the int8 precision. 16bit: the accurate one (rel L1 ~0.01 against "
                                       "exact attention). auto: the faster one for this GPU: INT8 on RTX 30/40/50-"
                                       "class GPUs (sm_86/89/120), whose 16-bit tensor cores run at a quarter of the "
                                       "INT8 rate with fp32 accumulation (projected ~2x faster attention there; rel "
                                       "L1 ~0.02), 16-bit elsewhere. int8: INT8 on any GPU. The Report shows which "
                                       "ran."),
                io.Boolean.Input("fused_rope", default=True, optional=True,
                                 tooltip="Rotate q and k (RoPE) with one fused kernel instead of ComfyUI's five "
                                         "torch ops, while this model runs: same result bit for bit, 5-9% of a "
                                         "Flux / HunyuanVideo / Wan step saved on an H200. Only where ComfyUI's "
                                         "RoPE is the pure-torch one (comfy-kitchen already fuses it)."),
                io.Boolean.Input("fused_norm_mod", default=True, optional=True,
                                 tooltip="Run ComfyUI's QK RMSNorm, adaLN modulation/gating and the single "
                                         "blocks' GELU (Flux, HunyuanVideo, Chroma) with one-pass kernels while this "
                                         "model runs, and keep HunyuanVideo's tokens token-major: same result bit for "
                                         "bit (each kind of call is checked once against ComfyUI's). On an H200 a "
                                         "HunyuanVideo step 7% and a Flux step ~10% faster. Calls under 4M "
                                         "elements (text streams) keep ComfyUI's."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, precision="auto", fallback="sdpa", qk_smoothing="auto",
                int8_pv="16bit", fused_rope=True, fused_norm_mod=True) -> io.NodeOutput:
        if qk_smoothing not in QK_SMOOTHING:
            raise ValueError(f"qk_smoothing must be one of {list(QK_SMOOTHING)}, got {qk_smoothing!r}")
        settings = PatchSettings(precision=precision, fallback=fallback, smooth_q=QK_SMOOTHING[qk_smoothing],
                                 pv=int8_pv, fused_rope=bool(fused_rope), fused_norm_mod=bool(fused_norm_mod))
        override = Sage3Override(settings, policy=None, prior=prior_for_new_patch(model))
        return io.NodeOutput(patched_clone(model, override))
