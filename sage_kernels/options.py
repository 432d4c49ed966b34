"""Options shared by the quantized backends."""
from __future__ import annotations

from dataclasses import dataclass

SMOOTH_Q_MODES = ("block", "global", "off")
PV_MODES = ("auto", "int8", "fp8", "16bit")  # "auto": capabilities.resolve_pv picks per GPU
BLOCK_M = 128  # query rows per kernel tile == Q smoothing block
BLOCK_N = 128  # keys per kernel tile == V / P quantization block along tokens
# sm_90's INT8 Gluon kernel keeps one reference max per row for a whole tile where a bound on its scores allows
# (kernels/attention_ws._first_block; mirrored by reference/quantized.fixed_reference): (HEADROOM, LIMIT) in log2
# units for 16-bit P in fp16 and in bf16
FIXED_MAX_FP16 = (15.0, 15.0)
FIXED_MAX_BF16 = (0.0, 80.0)


@dataclass(frozen=True)
class QuantOptions:
    smooth_q: str = "block"  # "block" (per 128 query tokens) | "global" | "off"
    smooth_k: bool = True
    smooth_v: bool = False  # subtract the per-channel token mean of V, add it back after normalisation
    rotate: bool = True  # Hadamard rotation of Q and K before quantization (spreads outlier channels)
    # int8 precision only: P.V in 16-bit (V unquantized; on Hopper it measured faster than INT8 P.V in Triton and
    # is twice as accurate), INT8 (P scaled by its block max, V per channel and block) or FP8 E4M3. The kernels
    # take a concrete mode; the API's "auto" (the faster one for the GPU) is resolved first (capabilities.resolve_pv).
    pv: str = "16bit"
