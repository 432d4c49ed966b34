"""Which sampling step an attention call belongs to, from transformer_options["sigmas"] and ["sample_sigmas"].

ComfyUI's sampler puts the whole schedule (steps + 1 sigmas) in "sample_sigmas" and the sigma being evaluated in
"sigmas". The step is the schedule entry nearest to the current sigma (a sampler's extra evaluations, e.g. Heun's
second one, count toward the nearest step). Both tensors stay the same objects for every call of one model
evaluation, so results are cached by identity: one host read per evaluation, not per attention call.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepInfo:
    index: int  # 0-based
    total: int  # number of steps in the schedule (len(sample_sigmas) - 1)
    schedule: tuple[float, ...]  # the schedule's sigmas, identifies a run


class StepLocator:
    def __init__(self):
        self._schedule_obj = None
        self._schedule: tuple[float, ...] = ()
        self._sigma_obj = None
        self._step: StepInfo | None = None

    def locate(self, transformer_options: dict | None) -> StepInfo | None:
        """The step of this call, or None outside a sampler (no sigmas in transformer_options)."""
        if not transformer_options:
            return None
        schedule_obj = transformer_options.get("sample_sigmas")
        sigma_obj = transformer_options.get("sigmas")
        if schedule_obj is None or sigma_obj is None:
            return None
        if schedule_obj is self._schedule_obj and sigma_obj is self._sigma_obj:
            return self._step
        if schedule_obj is not self._schedule_obj:
            self._schedule = tuple(float(s) for s in schedule_obj.flatten().tolist())
            self._schedule_obj = schedule_obj
        self._sigma_obj = sigma_obj
        self._step = _nearest_step(self._schedule, float(sigma_obj.detach().max()))
        return self._step

    def forget(self) -> None:
        """Drop the cached tensors (called when a run ends, so they can be freed)."""
        self.__init__()


def _nearest_step(schedule: tuple[float, ...], sigma: float) -> StepInfo | None:
    total = len(schedule) - 1
    if total < 1:
        return None
    index = min(range(total), key=lambda i: abs(schedule[i] - sigma))  # ties: the earlier step
    return StepInfo(index, total, schedule)
