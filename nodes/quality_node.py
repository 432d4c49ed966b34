"""Node "Sage3 Attention Quality": per-step / per-block precision, auto-calibration and a NaN/Inf watch for a
Sage3-patched model."""
from __future__ import annotations

from comfy_api.latest import io

from .block_spec import EXAMPLE, KeepBlocksSyntaxError, parse_keep_blocks
from .patching import patched_clone, sage3_override
from .policy import HIGH_PRECISIONS, Policy

NODE_ID = "Sage3AttentionQuality"
DISPLAY_NAME = "Sage3 Attention Quality"


class Sage3AttentionQuality(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name=DISPLAY_NAME,
            category="model_patches/sage3",
            description="Runs chosen steps, blocks and badly quantized call sites of a Sage3-patched model at a "
                        "higher precision. Replaces the default fp4 hybrid (first/last step at int8).",
            inputs=[
                io.Model.Input("model", tooltip="A model patched by Sage3 Attention Patch."),
                io.Int.Input("keep_first_steps", default=0, min=0, max=10000,
                             tooltip="Sampling steps at the start that run at high_precision."),
                io.Int.Input("keep_last_steps", default=0, min=0, max=10000,
                             tooltip="Sampling steps at the end that run at high_precision."),
                io.String.Input("keep_blocks", default="", multiline=False, placeholder=EXAMPLE,
                                tooltip="Blocks that run at high_precision: NAME, NAME:N or NAME:N-M, comma "
                                        f"separated, e.g. {EXAMPLE!r}. 'refiner' = calls outside the block loop "
                                        "(HunyuanVideo's token refiner)."),
                io.Combo.Input("high_precision", options=list(HIGH_PRECISIONS), default="sdpa",
                               tooltip="What kept steps, kept blocks and demoted sites run at."),
                io.Boolean.Input("calibrate", default=False,
                                 tooltip="On step 1 of each run, compare every call site's low-precision output with "
                                         "SDPA (step 1 returns SDPA's output); sites below min_similarity run at "
                                         "high_precision for the rest of the run."),
                io.Float.Input("min_similarity", default=0.995, min=0.0, max=1.0, step=0.0001,
                               tooltip="Cosine similarity a call site must reach while calibrating."),
                io.Boolean.Input("watch_nonfinite", default=True,
                                 tooltip="Check every attention call's q, k, v and output for NaN/Inf and report "
                                         "per call site whether they came from upstream or from attention (log "
                                         "warning and Report node). Costs one extra read of the four tensors per "
                                         "call (+3-4% per Flux step, +1% per HunyuanVideo step on an H200); "
                                         "nothing waits for the GPU."),
                io.Boolean.Input("time_attention", default=False, optional=True,
                                 tooltip="Measure the GPU time of every attention call (CUDA events, whatever ran: "
                                         "kernel, SDPA or a fallback) and list it per call site and per step in the "
                                         "Report and the run's log summary. Costs two event records per call; "
                                         "nothing waits for the GPU before the run ends."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, keep_blocks=None, **_) -> bool | str:
        if isinstance(keep_blocks, str):
            try:
                parse_keep_blocks(keep_blocks)
            except KeepBlocksSyntaxError as exc:
                return str(exc)
        return True

    @classmethod
    def execute(cls, model, keep_first_steps=0, keep_last_steps=0, keep_blocks="", high_precision="sdpa",
                calibrate=False, min_similarity=0.995, watch_nonfinite=True, time_attention=False) -> io.NodeOutput:
        override = sage3_override(model, DISPLAY_NAME)
        policy = Policy(keep_first_steps=int(keep_first_steps), keep_last_steps=int(keep_last_steps),
                        keep_blocks=parse_keep_blocks(keep_blocks), high_precision=high_precision,
                        calibrate=bool(calibrate), min_similarity=float(min_similarity),
                        watch_nonfinite=bool(watch_nonfinite), time_attention=bool(time_attention))
        return io.NodeOutput(patched_clone(model, override.with_policy(policy)))
