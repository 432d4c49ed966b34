"""Node "Sage3 Attention Report": what the patch did during the last sampler run (kernels, fallbacks, calibration)."""
from __future__ import annotations

from comfy_api.latest import io, ui

from .patching import installed_override, is_sage3_override
from .report_text import report

NODE_ID = "Sage3AttentionReport"
DISPLAY_NAME = "Sage3 Attention Report"
NOT_PATCHED = "Sage3 Attention report\nthis model has no Sage3 Attention patch (connect the MODEL the sampler uses)"


def report_for(model) -> str:
    override = installed_override(model)
    return report(override) if is_sage3_override(override) else NOT_PATCHED


class Sage3AttentionReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name=DISPLAY_NAME,
            category="model_patches/sage3",
            description="Shows which attention kernel ran at every call site during the last sampler run, with "
                        "fallbacks and calibration results. Connect the sampler's MODEL and its LATENT output.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The MODEL the sampler used."),
                io.Latent.Input("samples", tooltip="The sampler's output, so this node runs after sampling."),
            ],
            outputs=[io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model, samples) -> io.NodeOutput:
        text = report_for(model)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
