"""What happened during a sampling run: per call site, which kernel ran, fallbacks, calibration, opt-outs.

A run is one sampler invocation. Its edges come from ComfyUI's OUTER_SAMPLE wrapper when the model goes through a
sampler (exact, and the end is where the summary is logged). Without one (direct model calls) a run is inferred:
a new one starts when the schedule in transformer_options["sample_sigmas"] changes or the step index returns to 0.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sage_kernels import replay

from .nonfinite import NonFiniteWatch
from .q_smoothing import AutoQSmoothing
from .sites import SiteKey
from .timing import CallTimer
from .steps import StepInfo


@dataclass
class SiteStats:
    calls: int = 0  # attention calls made at this site
    kernels: Counter = field(default_factory=Counter)  # kernel name -> calls
    fallbacks: Counter = field(default_factory=Counter)  # reason -> calls
    auto_choices: Counter = field(default_factory=Counter)  # precision="auto": what it chose and why -> calls
    kept: Counter = field(default_factory=Counter)  # why it ran at high precision -> calls
    opt_outs: int = 0  # low_precision_attention=False calls
    similarity: float | None = None  # lowest cosine similarity seen while calibrating
    calibrated_kernel: str = ""
    calibration_calls: int = 0  # calls that ran both the kernel and SDPA
    demoted: bool = False
    watch: NonFiniteWatch = field(default_factory=NonFiniteWatch)  # NaN/Inf counts (Quality's watch_nonfinite)
    timer: CallTimer = field(default_factory=CallTimer)  # GPU time (Quality's time_attention)
    q_smoothing: Counter = field(default_factory=Counter)  # qk_smoothing="auto": Q smoothing mode -> int8 calls
    auto_smoothing: AutoQSmoothing = field(default_factory=AutoQSmoothing)  # the site's auto choice this run


@dataclass
class RunStats:
    number: int
    source: str  # "sampler" | "inferred"
    schedule: tuple[float, ...] | None = None
    total_steps: int | None = None
    steps_seen: set = field(default_factory=set)
    last_step: int | None = None
    sites: dict = field(default_factory=dict)  # SiteKey -> SiteStats
    finished: bool = False
    # sage_kernels.replay's process-wide counts when the run began, and what the run added (frozen when it ends)
    replay_start: Counter = field(default_factory=lambda: Counter(replay.counts))
    replay_counts: Counter | None = None

    def graph_replays(self) -> Counter:
        """Small calls by what sage_kernels.replay did with them during this run ("replayed", "captured", ...)."""
        return self.replay_counts if self.replay_counts is not None else Counter(replay.counts) - self.replay_start

    def site(self, key: SiteKey) -> SiteStats:
        stats = self.sites.get(key)
        if stats is None:
            stats = self.sites[key] = SiteStats()
        return stats

    def see_step(self, step: StepInfo | None) -> None:
        if step is None:
            return
        if self.schedule is None:
            self.schedule, self.total_steps = step.schedule, step.total
        self.steps_seen.add(step.index)
        self.last_step = step.index

    def starts_new_run(self, step: StepInfo | None) -> bool:
        if step is None or self.schedule is None:
            return False
        return step.schedule != self.schedule or (step.index == 0 and self.last_step not in (None, 0))

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.sites.values())

    def totals(self, field: str) -> Counter:
        """A SiteStats Counter field ("kernels", "fallbacks", "auto_choices", "kept", "q_smoothing") summed over the
        sites."""
        total = Counter()
        for s in self.sites.values():
            total.update(getattr(s, field))
        return total

    @property
    def opt_outs(self) -> int:
        return sum(s.opt_outs for s in self.sites.values())

    def calibrated_sites(self) -> dict:
        return {k: s for k, s in self.sites.items() if s.similarity is not None}

    def demoted_sites(self) -> list:
        return [k for k, s in self.sites.items() if s.demoted]

    def watched_calls(self) -> int:
        return sum(s.watch.calls for s in self.sites.values())

    def timed_calls(self) -> int:
        return sum(s.timer.calls for s in self.sites.values())

    def attention_ms(self) -> float:
        """GPU milliseconds of the timed calls, each site's median call times its calls (waits for the GPU)."""
        return sum(s.timer.median_ms() * s.timer.calls for s in self.sites.values())

    def nonfinite_sites(self) -> dict:
        """SiteKey -> (calls with NaN/inf inputs, calls with a NaN/inf output from finite inputs), for the watched
        sites where either happened (reads the device counters: waits for the GPU)."""
        found = {}
        for key, stats in self.sites.items():
            if stats.watch.calls:
                counts = stats.watch.counts()
                if any(counts):
                    found[key] = counts
        return found


class RunRecorder:
    """Holds the latest run (in progress or finished) for one override."""

    def __init__(self):
        self.run: RunStats | None = None
        self._count = 0
        self._sampler_depth = 0

    def _begin(self, source: str) -> RunStats:
        self._count += 1
        self.run = RunStats(self._count, source)
        return self.run

    def enter_sampler(self) -> None:
        self._sampler_depth += 1
        if self._sampler_depth == 1:
            self._begin("sampler")

    def exit_sampler(self) -> RunStats | None:
        """Returns the finished run when the outermost sampler exits."""
        self._sampler_depth = max(0, self._sampler_depth - 1)
        if self._sampler_depth or self.run is None:
            return None
        self.run.finished = True
        self.run.replay_counts = self.run.graph_replays()
        return self.run

    def observe(self, step: StepInfo | None) -> RunStats:
        """The run this call belongs to (starting an inferred one when needed), with its step recorded."""
        run = self.run
        if self._sampler_depth == 0 and (run is None or run.finished or run.starts_new_run(step)):
            run = self._begin("inferred")
        run.see_step(step)
        return run
