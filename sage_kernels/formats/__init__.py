"""Number formats. Each module holds one format's quantizer twice: as torch functions (used by the reference
backend and by host-side code) and as `@triton.jit` device functions (used inside kernels). The pairs compute the
same rounding decisions bit for bit; tests/test_formats.py holds them to that."""
