"""sage_kernels: low-bit attention for diffusion models.

SageAttention3 (NVFP4 microscaling: E2M1 values, one E4M3 scale per 16, per-block Q smoothing with its exact bias
term, K smoothing, two-level P quantization) and an 8-bit path (INT8 Q.K^T and P.V), as Triton kernels with a
pure-torch reference that mirrors their math. Importable without ComfyUI.

    from sage_kernels import sage_attention, explain
    out = sage_attention(q, k, v, precision="auto")
"""
from . import replay
from .api import SageAttentionUnsupported, explain, sage_attention, sageattn
from .capabilities import Plan
from .capabilities import table as capability_table
from .problem import SageAttentionInputError
from .varlen import sageattn_varlen

__version__ = "0.1.0"
__all__ = ["sage_attention", "sageattn", "sageattn_varlen", "explain", "Plan", "capability_table",
           "SageAttentionInputError", "SageAttentionUnsupported", "__version__"]
