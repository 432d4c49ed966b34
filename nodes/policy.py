"""Which attention calls run at a higher precision than the patch's own: kept steps, kept blocks, demoted sites.

A policy only ever raises precision (fp4 < int8 < sdpa); a kept call whose patch precision is already at least the
policy's high precision runs unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .block_spec import BlockRule, BlockSelection
from .steps import StepInfo

PRECISION_RANK = {"fp4": 0, "int8": 1, "sdpa": 2}
HIGH_PRECISIONS = ("int8", "sdpa")


@dataclass(frozen=True)
class Policy:
    keep_first_steps: int = 0
    keep_last_steps: int = 0
    keep_blocks: BlockSelection = field(default_factory=BlockSelection)
    high_precision: str = "sdpa"
    calibrate: bool = False
    min_similarity: float = 0.995
    watch_nonfinite: bool = False  # count NaN/inf in every call's inputs and output (nodes/nonfinite.py)
    time_attention: bool = False  # GPU time of every call (nodes/timing.py)
    only_when_fp4: bool = False  # the built-in hybrid applies to fp4 only
    source: str = "Sage3 Attention Quality"

    def __post_init__(self):
        if self.high_precision not in HIGH_PRECISIONS:
            raise ValueError(f"high_precision must be one of {HIGH_PRECISIONS}, got {self.high_precision!r}")
        if self.keep_first_steps < 0 or self.keep_last_steps < 0:
            raise ValueError("keep_first_steps and keep_last_steps must be >= 0")
        if not (-1.0 <= self.min_similarity <= 1.0):
            raise ValueError(f"min_similarity is a cosine similarity in [-1, 1], got {self.min_similarity}")

    def keeps_step(self, step: StepInfo | None) -> bool:
        if step is None:
            return False
        return step.index < self.keep_first_steps or step.index >= step.total - self.keep_last_steps

    def kept_block(self, block_type: str | None, block_index: int | None) -> BlockRule | None:
        return self.keep_blocks.matching_rule(block_type, block_index)

    def raises(self, precision: str) -> bool:
        """Whether keeping a call that would run at `precision` changes anything."""
        if self.only_when_fp4 and precision != "fp4":
            return False
        return PRECISION_RANK[self.high_precision] > PRECISION_RANK.get(precision, len(PRECISION_RANK))

    def calibrates(self, step: StepInfo | None) -> bool:
        return self.calibrate and step is not None and step.index == 0

    def describe(self) -> str:
        parts = []
        if self.keep_first_steps or self.keep_last_steps:
            parts.append(f"first {self.keep_first_steps} / last {self.keep_last_steps} steps")
        if self.keep_blocks:
            parts.append(f"blocks [{self.keep_blocks}]")
        kept = f"keep {' and '.join(parts)} at {self.high_precision}" if parts else "no kept steps or blocks"
        if self.only_when_fp4:
            kept += " when the patch runs fp4"
        calibration = (f"; calibrate on step 1, demote sites below cos {self.min_similarity:g} to {self.high_precision}"
                       if self.calibrate else "")
        watch = "; NaN/Inf watch" if self.watch_nonfinite else ""
        watch += "; GPU timing" if self.time_attention else ""
        return f"{self.source}: {kept}{calibration}{watch}"


# SageAttention3's authors and users: run the first and last sampling steps at 8-bit, fp4 in between.
DEFAULT_FP4_HYBRID = Policy(keep_first_steps=1, keep_last_steps=1, high_precision="int8", only_when_fp4=True,
                            source="default fp4 hybrid")
