"""The object installed as transformer_options["optimized_attention_override"] by the Sage3 nodes.

Per call: parse it (call.py), find its step and site, then pick what runs:
  low_precision_attention=False      -> the original path (the model asked for full precision)
  plan is a fallback (explain says)  -> fallback="error": raise; "sdpa": log once per reason, original path
  calibration step (Quality node)    -> run the kernel and SDPA, record their similarity, return SDPA's output
  kept step / kept block / demoted   -> the policy's high precision (int8 or sdpa), if that is higher
  otherwise                          -> sage_kernels.sage_attention at the patch's precision
With the Quality node's NaN/Inf watch on, every parsed call's q, k, v and output are then checked (nonfinite.py).
"The original path" is the override the input model already had (chained), else ComfyUI's own backend `func`,
called with exactly the arguments ComfyUI passed. All attention math is in sage_kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import sage_kernels

from .call import AttentionCall, CallNotUnderstood, parse_call
from .compare import cosine
from .log import LogBook, logger
from .policy import DEFAULT_FP4_HYBRID, Policy
from .q_smoothing import PROBE
from .norm_mod_scope import NORM_MOD_SCOPE_KEY, FusedNormModScope
from .rope_scope import ROPE_SCOPE_KEY, FusedRopeScope
from .run_stats import RunRecorder, RunStats, SiteStats
from .sites import SiteKey, SiteTracker
from .steps import StepLocator
from .strided_scope import STRIDED_SCOPE_KEY, StridedActivationScope

PRECISIONS = ("auto", "fp4", "int8", "sdpa")
FALLBACKS = ("sdpa", "error")
SMOOTH_Q = ("auto", "block", "global", "off")  # "auto": per call site, q_smoothing.py
INT8_PV = ("16bit", "auto", "int8")  # sage_kernels' pv for the int8 precision ("auto": per GPU, resolve_pv)
_MAX_PLANS = 256  # remembered plans per override (a video model makes a handful of call kinds)
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class Sage3FallbackError(RuntimeError):
    """fallback="error" and a call cannot run at the requested precision."""


@dataclass(frozen=True)
class PatchSettings:
    precision: str = "auto"
    fallback: str = "sdpa"
    smooth_q: str = "auto"
    pv: str = "16bit"
    fused_rope: bool = True
    fused_norm_mod: bool = True

    def __post_init__(self):
        for name, value, allowed in (("precision", self.precision, PRECISIONS),
                                     ("fallback", self.fallback, FALLBACKS), ("smooth_q", self.smooth_q, SMOOTH_Q),
                                     ("pv", self.pv, INT8_PV)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    def describe(self) -> str:
        return (f"precision={self.precision}, fallback={self.fallback}, qk smoothing={self.smooth_q}, "
                f"int8 P.V={self.pv}, fused RoPE={'on' if self.fused_rope else 'off'}, "
                f"fused norm/modulation={'on' if self.fused_norm_mod else 'off'}")


class Sage3Override:
    def __init__(self, settings: PatchSettings, policy: Policy | None = None, prior=None,
                 log_book: LogBook | None = None, failed: dict | None = None):
        self.settings = settings
        self.policy = policy  # None: the default fp4 hybrid
        self.prior = prior  # the override the input model had, called for the original path
        self.log_book = log_book or LogBook()
        # Kernels that raised, by call signature (_signature), with the reason: such failures are deterministic (a
        # compile error costs seconds per attempt), so later calls of the same kind fall back without retrying.
        self.failed = failed if failed is not None else {}
        self.recorder = RunRecorder()
        self.rope = FusedRopeScope(self.log_book) if settings.fused_rope else None  # wrapper: patching.py
        self.norm_mod = FusedNormModScope(self.log_book) if settings.fused_norm_mod else None  # (also)
        self.strided = StridedActivationScope(self.log_book) if settings.fused_norm_mod else None  # (also)
        self._plans: dict = {}  # (precision, call signature) -> plan: _plan
        self._steps = StepLocator()
        self._sites = SiteTracker()
        self._smoothing_memory: dict = {}  # SiteKey -> its qk_smoothing="auto" Decision, kept across runs

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone() deep-copies model_options: keep one shared state

    def with_policy(self, policy: Policy) -> "Sage3Override":
        """A new override with the same settings, chain and log book, a new policy and fresh stats."""
        return Sage3Override(self.settings, policy, self.prior, self.log_book, self.failed)

    @property
    def model_scopes(self) -> dict:
        """The DIFFUSION_MODEL wrappers of this patch by key, None where switched off (patching.py installs them)."""
        return {ROPE_SCOPE_KEY: self.rope, NORM_MOD_SCOPE_KEY: self.norm_mod, STRIDED_SCOPE_KEY: self.strided}

    @property
    def effective_policy(self) -> Policy:
        return self.policy or DEFAULT_FP4_HYBRID

    def describe(self) -> str:
        chain = f"; original path: chained {type(self.prior).__name__}" if self.prior is not None else ""
        return f"{self.settings.describe()}; {self.effective_policy.describe()}{chain}"

    # ---- ComfyUI entry point -------------------------------------------------------------------------------------

    def __call__(self, func, *args, **kwargs):
        if _compiling():
            return _dispatch_outside_compile(self, func, args, kwargs)
        return self._dispatch(func, args, kwargs)  # (eager: torch.compiler.disable's wrapper costs host time)

    def _dispatch(self, func, args, kwargs):
        options = kwargs.get("transformer_options") or {}
        step = self._steps.locate(options)
        run = self.recorder.observe(step)
        try:
            call = parse_call(args, kwargs)
        except CallNotUnderstood as exc:
            site = self._sites.key(options, 0, 0)
            stats = run.site(site)
            stats.calls += 1
            return self._fall_back(stats, site, f"call not understood: {exc}", func, args, kwargs)
        site = self._sites.key(call.transformer_options, call.len_q, call.len_k)
        stats = run.site(site)
        stats.calls += 1
        if self.effective_policy.time_attention:
            started = stats.timer.start(call.q)
            out = self._run_call(call, step, site, stats, func, args, kwargs)
            stats.timer.stop(started, call.q)
        else:
            out = self._run_call(call, step, site, stats, func, args, kwargs)
        if self.effective_policy.watch_nonfinite:
            stats.watch.observe(call.q, call.k, call.v, out)
        return out

    def _run_call(self, call: AttentionCall, step, site: SiteKey, stats: SiteStats, func, args, kwargs):
        if not call.low_precision_allowed:
            stats.opt_outs += 1
            return self._original(func, args, kwargs)
        policy = self.effective_policy
        plan = self._plan(call, self.settings.precision)
        if plan.note:  # precision="auto": which precision it resolved to for this call, and why (the report)
            stats.auto_choices[plan.note] += 1
        if plan.fallback:
            return self._fall_back(stats, site, plan.reason, func, args, kwargs)
        if plan.precision != "sdpa" and policy.calibrates(step):
            return self._calibrate(call, plan, stats, site, policy, func, args, kwargs)
        kept_because = self._kept_because(policy, plan.precision, step, site, stats)
        if kept_because:
            stats.kept[kept_because] += 1
            plan = self._plan(call, policy.high_precision)
            if plan.fallback:
                return self._fall_back(stats, site, plan.reason, func, args, kwargs)
        smooth_q = self._smooth_q(call, plan, stats, site)
        try:
            if smooth_q == PROBE:  # qk_smoothing="auto" measures this site: both ways, the per-block output kept
                out = self._attend(call, plan, "block")
                self._probe(call, plan, stats, out)
                self._remember(site, stats.auto_smoothing)
                smooth_q = "block"
            else:
                out = self._attend(call, plan, smooth_q)
        except _KernelFailed as exc:
            return self._fall_back(stats, site, str(exc), func, args, kwargs)
        stats.kernels[plan.label] += 1
        if self._auto_smoothing(plan):
            stats.q_smoothing[smooth_q] += 1
        return call.to_comfy(out)

    @staticmethod
    def _signature(call: AttentionCall, plan: sage_kernels.Plan) -> tuple:
        """What a kernel failure is remembered by: the kernel and everything that selects its compiled variant or
        launch (shapes included, so one odd shape does not disable the kernel for the others)."""
        return (plan.label, call.signature)

    # ---- decisions -----------------------------------------------------------------------------------------------

    def _plan(self, call: AttentionCall, precision: str) -> sage_kernels.Plan:
        """sage_kernels.explain's plan, remembered per call signature for the sampler run: a model makes the same
        few kinds of call every step, and explain's checks cost ~20 us of host time per call, which a step of
        Flux's 4608-token calls (GPU-bound only just) showed as ~2% when every call ran SDPA anyway."""
        key = (precision, call.signature)
        plan = self._plans.get(key)
        if plan is None:
            try:
                plan = sage_kernels.explain(call.q, call.k, call.v, precision=precision, pv=self.settings.pv,
                                            **call.api_kwargs())
            except sage_kernels.SageAttentionInputError as exc:
                plan = sage_kernels.Plan("sdpa", "torch", "torch.sdpa", f"input not supported: {exc}",
                                         (precision, "auto"))
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _smooth_q(self, call: AttentionCall, plan: sage_kernels.Plan, stats: SiteStats, site: SiteKey) -> str:
        """sage_kernels' smooth_q for this call: the patch's, or with "auto" the site's choice for int8 calls
        (q_smoothing.py; PROBE: run it both ways; a site's decision is remembered for later runs) and per block for
        fp4."""
        if not self._auto_smoothing(plan):
            return "block" if self.settings.smooth_q == "auto" else self.settings.smooth_q
        choice = stats.auto_smoothing
        if not choice.recalled:
            choice.recall(self._smoothing_memory.get(site))
        mode = choice.choose(call.q, call.layout)
        self._remember(site, choice)
        return mode

    def _auto_smoothing(self, plan: sage_kernels.Plan) -> bool:
        """qk_smoothing="auto" decides this call's Q smoothing (int8 only: fp4 always smooths per block)."""
        return self.settings.smooth_q == "auto" and plan.precision == "int8"

    def _remember(self, site: SiteKey, choice) -> None:
        if choice.mode is not None and not choice.remembered:
            self._smoothing_memory[site] = choice.decision
            choice.remembered = True

    def _probe(self, call: AttentionCall, plan: sage_kernels.Plan, stats: SiteStats, with_smoothing) -> None:
        """The site's output without Q smoothing beside `with_smoothing` (q_smoothing.py). The probe must never cost
        the run: if that second call runs out of memory or fails, the site keeps per-block smoothing."""
        try:
            with torch.no_grad():  # (only compared: no graph for a training step to keep)
                without = self._attend(call, plan, "off")
        except Exception as exc:  # noqa: BLE001  (out of memory, a kernel failure, even with fallback="error")
            self.failed.pop(self._signature(call, plan), None)  # (the per-block kernel of this call did run)
            stats.auto_smoothing.keep_smoothing(f"probe failed: {type(exc).__name__}")
            return
        stats.auto_smoothing.probed(with_smoothing.detach(), without)

    @staticmethod
    def _kept_because(policy: Policy, precision: str, step, site: SiteKey, stats: SiteStats) -> str:
        if not policy.raises(precision):
            return ""
        if stats.demoted:
            return "demoted by calibration"
        if policy.keeps_step(step):
            return "kept step"
        rule = policy.kept_block(site.block_type, site.block_index)
        return f"kept block {rule}" if rule is not None else ""

    # ---- actions -------------------------------------------------------------------------------------------------

    def _attend(self, call: AttentionCall, plan: sage_kernels.Plan, smooth_q: str = "block") -> torch.Tensor:
        signature = self._signature(call, plan)
        if signature in self.failed:
            raise _KernelFailed(self.failed[signature])
        try:
            return sage_kernels.sage_attention(
                call.q, call.k, call.v, precision=plan.precision, smooth_q=smooth_q,
                pv=self.settings.pv, fallback="error", out_layout=call.out_layout, **call.api_kwargs())
        except _OUT_OF_MEMORY:
            raise  # ComfyUI's own memory handling must see it
        except Exception as exc:  # noqa: BLE001  (any kernel failure: a fallback, or raised with fallback="error")
            if self.settings.fallback == "error":
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            self.failed[signature] = f"kernel {plan.kernel} raised {type(exc).__name__}: {first_line}"
            raise _KernelFailed(self.failed[signature]) from exc

    def _calibrate(self, call, plan, stats: SiteStats, site: SiteKey, policy: Policy, func, args, kwargs):
        try:
            smooth_q = self._smooth_q(call, plan, stats, site)
            smooth_q = "block" if smooth_q == PROBE else smooth_q  # (a later call probes)
            low = self._attend(call, plan, smooth_q)
            full = self._attend(call, self._plan(call, "sdpa"))
        except _KernelFailed as exc:
            return self._fall_back(stats, site, str(exc), func, args, kwargs)
        similarity = cosine(low, full)
        stats.kernels[plan.label] += 1
        stats.kernels["torch.sdpa"] += 1
        if self._auto_smoothing(plan):
            stats.q_smoothing[smooth_q] += 1
        stats.calibration_calls += 1
        stats.calibrated_kernel = plan.label
        if stats.similarity is None or math.isnan(similarity) or similarity < stats.similarity:
            stats.similarity = similarity  # the worst seen; a NaN sticks (it must show in the report)
        if not similarity >= policy.min_similarity:  # NaN demotes too
            stats.demoted = True
        return call.to_comfy(full)

    def _fall_back(self, stats: SiteStats, site: SiteKey, reason: str, func, args, kwargs):
        if self.settings.fallback == "error":
            raise Sage3FallbackError(
                f"Sage3 Attention Patch ({self.settings.describe()}) cannot run the attention call at "
                f"{site.label()}: {reason}. Set fallback to 'sdpa' to run ComfyUI's attention for such calls.")
        self.log_book.once(reason, f"Sage3 Attention: {reason}; running the original attention for these calls "
                                   f"(logged once per reason; counts in the Sage3 Attention Report)")
        stats.fallbacks[reason] += 1
        return self._original(func, args, kwargs)

    def _original(self, func, args, kwargs):
        if self.prior is not None:
            return self.prior(func, *args, **kwargs)
        return func(*args, **kwargs)

    # ---- sampler runs (OUTER_SAMPLE wrapper) -----------------------------------------------------------------------

    def begin_sampler_run(self) -> None:
        self._plans.clear()  # (a new run re-decides: the GPU, Triton or the capability table may have changed)
        self.recorder.enter_sampler()
        for scope in self.model_scopes.values():
            if scope is not None:
                scope.reset()

    def end_sampler_run(self) -> RunStats | None:
        run = self.recorder.exit_sampler()
        if run is not None:
            sage_kernels.replay.clear()  # (the graphs of small calls hold memory: the next run captures its own)
            self._steps.forget()
            self._sites.forget()
            from .report_text import run_end_messages  # local: report_text imports this module's names

            info, warning = run_end_messages(run, self)
            logger.info(info)
            if warning:
                logger.warning(warning)
        return run


class _KernelFailed(Exception):
    pass


def _dispatch(override: Sage3Override, func, args, kwargs):
    return override._dispatch(func, args, kwargs)


# torch.compile must not trace into the dispatcher (dict lookups, .item() calls, Triton launches): a graph break.
_dispatch_outside_compile = torch.compiler.disable(_dispatch) if hasattr(torch, "compiler") else _dispatch
# (torch.compiler.is_compiling: torch >= 2.3; older ones have torch._dynamo's)
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or torch._dynamo.is_compiling


class SamplerRunScope:
    """OUTER_SAMPLE wrapper: marks the start and end of each sampler run for an override."""

    def __init__(self, override: Sage3Override):
        self.override = override

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, *args, **kwargs):
        self.override.begin_sampler_run()
        try:
            return executor(*args, **kwargs)
        finally:
            self.override.end_sampler_run()
