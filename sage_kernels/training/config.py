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

import torch

from ..capabilities import device_info
from ..options import BLOCK_M, BLOCK_N, QuantOptions

QK_MODES = ("16bit", "int8")
DEFAULT_QK = "16bit"

# Forward settings of the "int8" QK mode. No Q smoothing (as SageBwd): the backward must recompute the forward's
# scores bit for bit, and block Q smoothing would add its column-bias table to that recomputation for no measured
# gradient gain. Rotation on (heads up to 128, see `rotates`): it spreads outlier channels before per-token INT8
# (dQ cos 0.993 -> 0.997 on an outlier test). smooth_v off: the backward's dP uses the forward's V codes directly.
INT8_FORWARD = QuantOptions(smooth_q="off", smooth_k=True, smooth_v=False, rotate=True, pv="int8")

FWD_BLOCK_Q = BLOCK_M  # the forward kernel's tiles (fixed by the inference kernel)
FWD_BLOCK_K = BLOCK_N  # also the V quantization block (per channel, 128 keys)
# Backward inner steps. They are quantization groups, so the torch reference uses the same numbers (the program
# sizes in launch.py are not):
DKV_STEP_Q = 64  # dK/dV: queries per step; P and dS quantized per key over these, Q and dO per channel over these
DQ_STEP_K = 64  # dQ: keys per step; dS quantized per query over these, smoothed K per channel over these


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the 16-bit matmuls (QK^T in "16bit" mode, dP): the inputs' own, bf16 for fp32 inputs (fp32 tiles
    would double the kernels' shared memory past what any GPU offers; gradients are still written in fp32)."""
    return torch.bfloat16 if dtype == torch.float32 else dtype


def rotates(dp: int) -> bool:
    """The "int8" mode's Hadamard rotation, up to 128-wide heads: a 256 x 256 rotation tile alone would fill the
    shared memory of consumer GPUs (about 99 KB per block)."""
    return dp <= 128


def check_qk(qk: str) -> str:
    if qk not in QK_MODES:
        raise ValueError(f"training qk mode must be one of {QK_MODES}, got {qk!r}")
    return qk


# GPUs where dK and dV are computed by two launches of dkdv_kernel (one gradient each) instead of one: each program
# then holds one fp32 accumulator instead of two, at the cost of recomputing P once more (docs/TRAINING.md).
DKDV_SPLIT_ARCHS: tuple[int, ...] = (90,)


def dkdv_split(device: torch.device) -> bool:
    """Whether this device runs dK and dV as two launches (DKDV_SPLIT_ARCHS). Not off the GPU: the interpreter
    runs one launch (tests compare both forms, bit for bit)."""
    info = device_info(device)
    return info.kind == "cuda" and info.arch in DKDV_SPLIT_ARCHS
