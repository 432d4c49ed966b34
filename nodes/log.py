"""The pack's logger ("sage3") and log-once bookkeeping: attention runs thousands of times per image, so each
fallback reason gets one line; counts live in the run stats and the Report node."""
from __future__ import annotations

import logging
import threading

logger = logging.getLogger("sage3")


class LogBook:
    """Remembers which reasons were logged. One book is shared by a patch and the Quality clones made from it."""

    def __init__(self):
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def once(self, reason: str, message: str, level: int = logging.WARNING) -> bool:
        with self._lock:
            if reason in self._seen:
                return False
            self._seen.add(reason)
        logger.log(level, message)
        return True
