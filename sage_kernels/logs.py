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


def counts() -> dict[str, int]:
    with _lock:
        return dict(_counts)


def reset() -> None:
    with _lock:
        _counts.clear()
