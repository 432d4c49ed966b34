"""Pure-torch backends: `exact` (float attention, the oracle and the LSE path of "sdpa") and `quantized`
(int8 and fp4 math mirrored operation by operation from the Triton kernels, on any device)."""
