"""Text for the Report node and the once-per-run log summary, from an override's latest run."""
from __future__ import annotations

from collections import Counter

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


def _site_line(key, stats) -> str:
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
    if stats.demoted:
        parts.append("DEMOTED")
    return f"  {key.label()}: " + "; ".join(parts)


def report(override) -> str:
    run = override.recorder.run
    lines = ["Sage3 Attention report", f"patch: {override.describe()}"]
    if run is None or not run.sites:
        lines.append(NO_RUN)
        return "\n".join(lines)
    state = "finished" if run.finished else "in progress or ended outside a sampler"
    lines.append(f"run {run.number} ({state}): {_steps(run)}; {run.calls} attention calls at {len(run.sites)} sites")
    kernels = run.kernel_totals()
    lines.append("kernels: " + (_counts(kernels) if kernels else "none (every call took the original path)"))
    lines.append("call sites:")
    lines.extend(_site_line(key, stats) for key, stats in run.sites.items())
    fallbacks = run.fallback_totals()
    lines.append("fallbacks: " + ("none" if not fallbacks else f"{sum(fallbacks.values())} calls"))
    for reason, n in fallbacks.most_common():
        sites = [k.label() for k, s in run.sites.items() if reason in s.fallbacks]
        shown = ", ".join(sites[:4]) + (", ..." if len(sites) > 4 else "")
        lines.append(f"  x{n} at {len(sites)} site(s) [{shown}]: {reason}")
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
    opt_outs = {k: s.opt_outs for k, s in run.sites.items() if s.opt_outs}
    lines.append(f"low_precision_attention=False opt-outs: {sum(opt_outs.values()) or 'none'}")
    lines.extend(f"  {k.label()}: x{n}" for k, n in opt_outs.items())
    return "\n".join(lines)


def summary(run: RunStats, override) -> str:
    """The one paragraph logged when a sampler run ends."""
    kernels = run.kernel_totals()
    fallbacks = run.fallback_totals()
    steps = f"{len(run.steps_seen)} of {run.total_steps} steps" if run.total_steps else "steps unknown"
    text = (f"Sage3 Attention: run {run.number} finished ({steps}, {run.calls} attention calls at {len(run.sites)} "
            f"sites; {override.settings.describe()}). Kernels: {_counts(kernels) or 'none'}. ")
    text += (f"Fallbacks to the original attention: {sum(fallbacks.values())} calls ({len(fallbacks)} reasons, "
             f"each logged once)." if fallbacks else "No fallbacks.")
    if run.calibrated_sites():
        text += f" Calibration demoted {len(run.demoted_sites())} of {len(run.calibrated_sites())} sites."
    kept = run.kept_totals()
    if kept:
        text += f" High precision: {_counts(kept)}."
    text += f" low_precision_attention=False opt-outs: {run.opt_outs}."
    return text
