"""Accuracy of every precision (reference backend = the kernels' math) vs float64, per input distribution.

    python bench/accuracy_table.py [--shape 1,2,1024,128]     # CPU is fine: ~2 minutes

Prints the markdown table of docs/ACCURACY.md (cos / rel L1 of the bf16 output).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sage_kernels.options import QuantOptions  # noqa: E402
from sage_kernels.problem import build_problem  # noqa: E402
from sage_kernels.reference.exact import exact_attention  # noqa: E402
from sage_kernels.reference.quantized import reference_attention  # noqa: E402
from tests.support import distributions as dist  # noqa: E402

VARIANTS = [
    ("int8 (default: 16-bit P.V)", "int8", QuantOptions()),
    ("int8, P.V int8", "int8", QuantOptions(pv="int8")),
    ("int8, P.V fp8", "int8", QuantOptions(pv="fp8")),
    ("int8, no rotation", "int8", QuantOptions(rotate=False)),
    ("fp4 (default)", "fp4", QuantOptions()),
    ("fp4, no rotation (plain SA3)", "fp4", QuantOptions(rotate=False)),
    ("fp4, smooth_v", "fp4", QuantOptions(smooth_v=True)),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1,2,1024,128")
    b, h, l, d = (int(x) for x in ap.parse_args().shape.split(","))
    cases = list(dist.NAMES) + ["value_mean"]
    print("| variant | " + " | ".join(cases) + " |")
    print("|---|" + "---|" * len(cases))
    results = {}
    for name in cases:
        q, k, v = dist.make("normal" if name == "value_mean" else name, b, h, l, l, d)
        if name == "value_mean":
            v = v + 8.0
        q, k, v = (t.bfloat16() for t in (q, k, v))
        p = build_problem(q, k, v)
        ref, _ = exact_attention(p)
        for label, precision, opts in VARIANTS:
            out, _ = reference_attention(p, precision, opts, False)
            results[(label, name)] = dist.metrics(out.bfloat16(), ref)
    for label, _, _ in VARIANTS:
        cells = [f"{results[(label, n)][0]:.5f} / {results[(label, n)][1]:.4f}" for n in cases]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
