"""Logging once per reason: kernels are called thousands of times per image, the log gets one line per cause."""
from __future__ import annotations

import logging
import threading
from collections import Counter

logger = logging.getLogger("sage3")
_lock = threading.Lock()
_counts: Counter = Counter()


def log_once(reason: str, message: str | None = None, level: int = logging.WARNING) -> bool:
    """Log `message` (default: `reason`) the first time `reason` is seen; count every occurrence.

    Returns True when this call logged."""
    with _lock:
        _counts[reason] += 1
        first = _counts[reason] == 1
    if first:
        logger.log(level, message or reason)
    return first


def build_error(exc: BaseException) -> str:
    """A kernel build failure in one line for the log: its type and the last line of its message (compiler errors
    end with the message, after the source excerpt), at most 300 characters of it."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1][:300] if lines else ''}"


def launch_or_fall_back(launch, args: tuple, kernel: str, instead: str) -> str | None:
    """launch(*args); if that raises (a kernel that cannot be built here, e.g. a Triton whose Gluon API differs
    from 3.6's), log "<kernel> failed to build (...); using <instead>" once and return the failure's summary
    (build_error) so that the caller remembers it and runs `instead`. None when the launch went through."""
    try:
        launch(*args)
        return None
    except Exception as exc:  # noqa: BLE001 - any build failure falls back; the reason is logged
        failure = build_error(exc)
        log_once(f"{kernel} unavailable", f"sage_attention: {kernel} failed to build ({failure}); using {instead}")
        return failure


def counts() -> dict[str, int]:
    with _lock:
        return dict(_counts)


def reset() -> None:
    with _lock:
        _counts.clear()
