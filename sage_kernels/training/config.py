"""What the training path quantizes, and at which granularity (shared by the kernels and the torch reference).

QK modes (the scores S = Q.K^T, recomputed identically in the forward and in the backward):
  "int8": SageBwd. The inference int8 forward's operands: per-token INT8 Q and K after K smoothing and the Hadamard
          rotation. Fast, but S carries an absolute error of about 0.7% of the score spread, which the softmax
          gradient amplifies on sharp attention (docs/TRAINING.md has the numbers).
  "16bit": Q.K^T from the 16-bit inputs with fp32 accumulation (exact scores). Default: it keeps the gradient
          cosine >= 0.999 on every distribution we test.
Always INT8: P.V (forward), dV = P^T.dO, dQ = dS.K, dK = dS^T.Q. Always 16-bit: dP = dO.V^T, taken against the
forward's dequantized INT8 V so that dP and D = rowsum(dO*O) describe the same V.
"""
from __future__ import annotations

from ..options import BLOCK_M, BLOCK_N, QuantOptions

QK_MODES = ("16bit", "int8")
DEFAULT_QK = "16bit"

# Forward settings of the "int8" QK mode. No Q smoothing (as SageBwd): the backward must recompute the forward's
# scores bit for bit, and block Q smoothing would add its column-bias table to that recomputation for no measured
# gradient gain. Rotation on: it spreads outlier channels before per-token INT8 (dQ cos 0.993 -> 0.997 on our
# outlier test). smooth_v off: the backward's dP uses the forward's V codes directly.
INT8_FORWARD = QuantOptions(smooth_q="off", smooth_k=True, smooth_v=False, rotate=True, pv="int8")

FWD_BLOCK_Q = BLOCK_M  # the forward kernel's tiles (fixed by the inference kernel)
FWD_BLOCK_K = BLOCK_N  # also the V quantization block (per channel, 128 keys)
# Backward tiles. They are also quantization groups, so the torch reference uses the same numbers:
DKV_BLOCK_K = 128  # keys per dK/dV program
DKV_STEP_Q = 64  # queries per inner step: P and dS quantized per key over these, Q and dO per channel over these
DQ_BLOCK_Q = 128  # queries per dQ program
DQ_STEP_K = 64  # keys per inner step: dS quantized per query over these, smoothed K per channel over these


def check_qk(qk: str) -> str:
    if qk not in QK_MODES:
        raise ValueError(f"training qk mode must be one of {QK_MODES}, got {qk!r}")
    return qk
