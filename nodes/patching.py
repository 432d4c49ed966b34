"""Installing an override on a clone of a ComfyUI model, and finding the one a model carries.

The input model is never touched: the clone gets a copy of transformer_options with the override, plus an
OUTER_SAMPLE wrapper that tells the override where each sampler run starts and ends, and DIFFUSION_MODEL wrappers
that bind the fused RoPE (fused_rope on: rope_scope.py), and the fused QK RMSNorm and modulation and the strided-
activation fixes (fused_norm_mod on: norm_mod_scope.py, strided_scope.py) while the model runs.
"""
from __future__ import annotations

from .override import SamplerRunScope, Sage3Override
from .rope_scope import DIFFUSION_MODEL

OVERRIDE_KEY = "optimized_attention_override"
RUN_SCOPE_KEY = "sage3_attention_run_scope"
OUTER_SAMPLE = "outer_sample"  # comfy.patcher_extension.WrappersMP.OUTER_SAMPLE


class NotPatchedError(ValueError):
    """A node that needs a Sage3-patched model got a model without one."""


def installed_override(model):
    """The attention override on a ModelPatcher, or None."""
    return model.model_options.get("transformer_options", {}).get(OVERRIDE_KEY)


def is_sage3_override(obj) -> bool:
    # Duck-typed: the pack may be imported under more than one module name (tests, demo, ComfyUI).
    return callable(obj) and hasattr(obj, "with_policy") and hasattr(obj, "recorder") and hasattr(obj, "settings")


def sage3_override(model, node_name: str) -> Sage3Override:
    override = installed_override(model)
    if not is_sage3_override(override):
        found = ("no attention override" if override is None
                 else f"another attention override ({type(override).__name__})")
        raise NotPatchedError(f"{node_name} needs a model patched by 'Sage3 Attention Patch', but this model has "
                              f"{found}. Connect it after the Sage3 Attention Patch node.")
    return override


def prior_for_new_patch(model):
    """What a new Sage3 patch should chain to: the model's override, or, when that is already a Sage3 patch, the
    override it chains to (a new Sage3 patch replaces an older one instead of stacking on it)."""
    override = installed_override(model)
    return override.prior if is_sage3_override(override) else override


def patched_clone(model, override: Sage3Override):
    clone = model.clone()
    options = dict(clone.model_options.get("transformer_options", {}))  # never share the input's inner dict
    options[OVERRIDE_KEY] = override
    clone.model_options["transformer_options"] = options
    if hasattr(clone, "add_wrapper_with_key"):
        clone.remove_wrappers_with_key(OUTER_SAMPLE, RUN_SCOPE_KEY)
        clone.add_wrapper_with_key(OUTER_SAMPLE, RUN_SCOPE_KEY, SamplerRunScope(override))
        for key, scope in override.model_scopes.items():
            clone.remove_wrappers_with_key(DIFFUSION_MODEL, key)
            if scope is not None:
                clone.add_wrapper_with_key(DIFFUSION_MODEL, key, scope)
    return clone
