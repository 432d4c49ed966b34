"""Text for the Report node and the once-per-run log summary, from an override's latest run."""
from __future__ import annotations

from collections import Counter

import sage_kernels

from .q_smoothing import ADDED_LIMIT
from .run_stats import RunStats

NO_RUN = ("no attention calls recorded yet: run a sampler with this model (connect the Report's model input to "
          "the same MODEL the sampler uses, i.e. after any Sage3 Attention Quality node)")


def _counts(counter: Counter, prefix: str = "") -> str:
    return ", ".join(f"{prefix}{name} x{n}" for name, n in counter.most_common())


def _steps(run: RunStats) -> str:
    if run.total_steps is None:
        return "steps: unknown (calls made outside a sampler)"
    seen = sorted(run.steps_seen)
    span = f" ({seen[0] + 1}-{seen[-1] + 1})" if seen else ""
    return f"steps seen: {len(seen)} of {run.total_steps}{span}"


def _site_line(key, stats, nonfinite: tuple[int, int] | None) -> str:
    parts = [f"{stats.calls} calls"]
    if stats.kernels:
        parts.append(_counts(stats.kernels, "kernel "))
    fallbacks = sum(stats.fallbacks.values())
    if fallbacks:
        parts.append(f"original path x{fallbacks} (fallback)")
    if stats.opt_outs:
        parts.append(f"original path x{stats.opt_outs} (low_precision_attention=False)")
    if stats.kept:
        parts.append("high precision: " + _counts(stats.kept))
    if stats.q_smoothing:
        parts.append(f"Q smoothing {_counts(stats.q_smoothing)} ({stats.auto_smoothing.describe()})")
    if stats.demoted:
        parts.append("DEMOTED")
    if stats.timer.calls:
        parts.append(f"GPU {stats.timer.median_ms():.3f} ms per call (median)")
    if nonfinite:
        bad_inputs, bad_output = nonfinite
        if bad_inputs:
            parts.append(f"NaN/Inf in q, k or v x{bad_inputs}")
        if bad_output:
            parts.append(f"NaN/Inf OUTPUT from finite inputs x{bad_output}")
    return f"  {key.label()}: " + "; ".join(parts)


def _labels(keys) -> str:
    keys = list(keys)
    return ", ".join(k.label() for k in keys[:4]) + (", ..." if len(keys) > 4 else "")


def _by_reason(run: RunStats, totals: Counter, field: str, prefix: str = ""):
    """One line per reason of `totals` (RunStats.totals(field)): calls, sites, reason."""
    for reason, n in totals.most_common():
        sites = [k for k, s in run.sites.items() if reason in getattr(s, field)]
        yield f"  x{n} at {len(sites)} site(s) [{_labels(sites)}]: {reason.removeprefix(prefix)}"


def _nonfinite_findings(found: dict) -> str:
    """What the NaN/Inf watch found, worded by cause; "" when nothing."""
    upstream = {k: c[0] for k, c in found.items() if c[0]}
    attention = {k: c[1] for k, c in found.items() if c[1]}
    parts = []
    if upstream:
        parts.append(f"NaN/Inf reached attention in {sum(upstream.values())} call(s) at {len(upstream)} site(s) "
                     f"[{_labels(upstream)}]: they come from upstream of attention (the model's own layers, "
                     "fp16 overflow, weights), not from the attention kernels")
    if attention:
        parts.append(f"attention returned NaN/Inf from finite inputs in {sum(attention.values())} call(s) at "
                     f"{len(attention)} site(s) [{_labels(attention)}]: keep those blocks at high precision "
                     "(keep_blocks) or use precision int8/sdpa, and please report it")
    return "; ".join(parts)


def _timing(run: RunStats) -> str:
    """Attention's GPU time over the run's timed calls (per site: its median call x its calls), and per sampling
    step where the steps are known."""
    ms = run.attention_ms()
    text = f"attention {ms:.1f} ms in {run.timed_calls()} calls (medians)"
    if run.steps_seen:
        text += f", {ms / len(run.steps_seen):.1f} ms per sampling step ({len(run.steps_seen)} steps)"
    return text


def _auto_smoothing(run: RunStats) -> str:
    """What qk_smoothing="auto" decided over the run's int8 calls; "" when it decided nothing."""
    decided = Counter(s.auto_smoothing.mode for s in run.sites.values() if s.auto_smoothing.mode is not None)
    if not decided:
        return ""
    text = ", ".join(f"{'per block' if mode == 'block' else mode} at {n} site(s)" for mode, n in decided.most_common())
    return (f"{text} (calls: {_counts(run.totals('q_smoothing'))}; off where Q has no shared offset or the outputs "
            f"without smoothing differed by <= {ADDED_LIMIT:g} rel L1)")


def _graph_replay(run: RunStats) -> str:
    """sage_kernels.replay's work in this run, and why it stopped if it did; why it did none when Triton kernels ran
    ("" when no call was small enough for it, or none ran a kernel)."""
    counts = run.graph_replays()
    if not counts:
        ran_triton = any(name.startswith("triton.") for name in run.totals("kernels"))
        return sage_kernels.replay.off_reason() if ran_triton else ""
    parts = [f"{counts['replayed']} calls replayed from CUDA graphs", f"{counts['captured']} graphs captured",
             f"{counts['inputs copied']} calls with their inputs copied in (not where the graph reads them)"]
    if counts["capture failed"]:
        parts.append(f"{counts['capture failed']} captures failed (those signatures ran eagerly, logged once)")
    stopped = sage_kernels.replay.off_reason()
    if stopped:  # (e.g. a failed capture under cudaMallocAsync during this run: later calls eager)
        parts.append(f"now {stopped}")
    return "; ".join(parts)


def _found(run: RunStats) -> dict | None:
    """The watch's findings (RunStats.nonfinite_sites), None when no call was watched."""
    return run.nonfinite_sites() if run.watched_calls() else None


def report(override) -> str:
    run = override.recorder.run
    lines = ["Sage3 Attention report", f"patch: {override.describe()}"]
    if run is None or not run.sites:
        lines.append(NO_RUN)
        return "\n".join(lines)
    state = "finished" if run.finished else "in progress or ended outside a sampler"
    lines.append(f"run {run.number} ({state}): {_steps(run)}; {run.calls} attention calls at {len(run.sites)} sites")
    kernels = run.totals("kernels")
    lines.append("kernels: " + (_counts(kernels) if kernels else "none (every call took the original path)"))
    found = _found(run)
    lines.append("call sites:")
    lines.extend(_site_line(key, stats, (found or {}).get(key)) for key, stats in run.sites.items())
    choices = run.totals("auto_choices")
    if choices:  # precision="auto": per reason, the calls and sites it decided for
        lines.append("precision auto chose:")
        lines.extend(_by_reason(run, choices, "auto_choices", "auto: "))
    smoothing = _auto_smoothing(run)
    if smoothing:
        lines.append(f"qk_smoothing auto: {smoothing}")
    fallbacks = run.totals("fallbacks")
    lines.append("fallbacks: " + ("none" if not fallbacks else f"{sum(fallbacks.values())} calls"))
    lines.extend(_by_reason(run, fallbacks, "fallbacks"))
    calibrated = run.calibrated_sites()
    policy = override.effective_policy
    if calibrated:
        lines.append(f"calibration (step 1, kernel vs sdpa, min cos {policy.min_similarity:g}): "
                     f"{len(run.demoted_sites())} of {len(calibrated)} sites demoted to {policy.high_precision}")
        for key, stats in calibrated.items():
            verdict = f"DEMOTED to {policy.high_precision}" if stats.demoted else "ok"
            lines.append(f"  {key.label()}: cos {stats.similarity:.6f} ({stats.calibrated_kernel}) {verdict}")
    elif policy.calibrate:
        lines.append("calibration: on, but no call was calibrated "
                     "(needs a sampler's step 1 and a low-precision kernel)")
    if found is not None:
        lines.append(f"NaN/Inf watch: {run.watched_calls()} calls checked; "
                     + (_nonfinite_findings(found) or "none found"))
    else:
        lines.append("NaN/Inf watch: " + ("on, no call checked yet" if policy.watch_nonfinite
                                          else "off (Sage3 Attention Quality: watch_nonfinite)"))
    lines.append("GPU time: " + (_timing(run) if run.timed_calls() else
                                 "on, no call timed yet" if policy.time_attention
                                 else "off (Sage3 Attention Quality: time_attention)"))
    opt_outs = {k: s.opt_outs for k, s in run.sites.items() if s.opt_outs}
    lines.append(f"low_precision_attention=False opt-outs: {sum(opt_outs.values()) or 'none'}")
    lines.extend(f"  {k.label()}: x{n}" for k, n in opt_outs.items())
    lines.extend(scope.describe() for scope in override.model_scopes.values() if scope is not None)
    replays = _graph_replay(run)
    if replays:
        lines.append(f"graph replay: {replays}")
    return "\n".join(lines)


def run_end_messages(run: RunStats, override) -> tuple[str, str]:
    """What is logged when a sampler run ends: the one INFO paragraph summarising it, and the WARNING naming what
    the NaN/Inf watch found ("" when nothing or nothing watched). The watch's counts are read once for both."""
    found = _found(run)
    findings = _nonfinite_findings(found) if found else ""
    warning = f"Sage3 Attention: run {run.number}: {findings}" if findings else ""
    return summary(run, override, found), warning


def summary(run: RunStats, override, found: dict | None) -> str:
    """The INFO paragraph of run_end_messages; found: the watch's findings, None when nothing was watched."""
    kernels = run.totals("kernels")
    fallbacks = run.totals("fallbacks")
    steps = f"{len(run.steps_seen)} of {run.total_steps} steps" if run.total_steps else "steps unknown"
    text = (f"Sage3 Attention: run {run.number} finished ({steps}, {run.calls} attention calls at {len(run.sites)} "
            f"sites; {override.settings.describe()}). Kernels: {_counts(kernels) or 'none'}. ")
    text += (f"Fallbacks to the original attention: {sum(fallbacks.values())} calls ({len(fallbacks)} reasons, "
             f"each logged once)." if fallbacks else "No fallbacks.")
    if run.calibrated_sites():
        text += f" Calibration demoted {len(run.demoted_sites())} of {len(run.calibrated_sites())} sites."
    kept = run.totals("kept")
    if kept:
        text += f" High precision: {_counts(kept)}."
    smoothing = _auto_smoothing(run)
    if smoothing:
        text += f" qk_smoothing auto: {smoothing}."
    if found is not None:
        text += f" NaN/Inf watch: {'found, see the warning' if found else 'none found'}."
    if run.timed_calls():
        text += f" GPU time: {_timing(run)}."
    text += f" low_precision_attention=False opt-outs: {run.opt_outs}."
    replays = _graph_replay(run)
    if replays:
        text += f" Graph replay: {replays}."
    return text
