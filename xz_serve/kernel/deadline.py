"""Deadlines as wall-clock epoch seconds, so they stay meaningful across processes.

Every request gets one on arrival: ``api.request_timeout_s`` by default, or what the client asks
with the ``x-request-timeout-ms`` header (clamped to ``api.max_request_timeout_s``). The NLU
clients stop waiting at it (504), and a model replica drops a call whose deadline passed while
it was queued instead of computing it.
"""

from __future__ import annotations

import time

from xz_serve.kernel.errors import DeadlineExceededError, InvalidInputError

TIMEOUT_HEADER = "x-request-timeout-ms"


def request_timeout_s(raw: str | None, default_s: float, max_s: float) -> float:
    """Seconds this request may take: the header's value clamped to ``max_s``, else the default.

    Raises:
        InvalidInputError: the header is not a positive number of milliseconds (400).
    """
    if raw is None:
        return min(default_s, max_s)
    try:
        ms = float(raw.strip())
    except ValueError:
        ms = float("nan")
    if not ms > 0 or ms == float("inf"):  # also refuses nan
        raise InvalidInputError(
            f"{TIMEOUT_HEADER} must be a positive number of milliseconds", code="invalid_timeout"
        )
    return min(ms / 1000, max_s)


def remaining_s(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (epoch seconds), None when there is none.

    Raises:
        DeadlineExceededError: the deadline has already passed.
    """
    if deadline is None:
        return None
    left = deadline - time.time()
    if left <= 0:
        raise DeadlineExceededError("the request's deadline passed before it was answered")
    return left
