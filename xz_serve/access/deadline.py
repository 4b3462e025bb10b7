"""The deadline stage: every request gets a wall-clock deadline before any other work is done.

The default comes from ``api.request_timeout_s``; a client may ask for another with the
``x-request-timeout-ms`` header (clamped to ``api.max_request_timeout_s``). The deadline is epoch
seconds so it stays meaningful across processes: the NLU client stops waiting at it (504), and a
model replica drops a call whose deadline passed while it was queued instead of computing it.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from xz_serve.api.context import context_of
from xz_serve.api.errors import error_response
from xz_serve.errors import DeadlineExceededError, InvalidInputError
from xz_serve.settings import ApiSpec

TIMEOUT_HEADER = "x-request-timeout-ms"


def request_timeout_s(raw: str | None, api: ApiSpec) -> float:
    """Seconds this request may take: the header's value clamped to the cap, else the default.

    Raises:
        InvalidInputError: the header is not a positive number of milliseconds (400).
    """
    if raw is None:
        return min(api.request_timeout_s, api.max_request_timeout_s)
    try:
        ms = float(raw.strip())
    except ValueError:
        ms = float("nan")
    if not ms > 0 or ms == float("inf"):  # also refuses nan
        raise InvalidInputError(
            f"{TIMEOUT_HEADER} must be a positive number of milliseconds", code="invalid_timeout"
        )
    return min(ms / 1000, api.max_request_timeout_s)


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


class DeadlineMiddleware:
    """Sets ``RequestContext.deadline`` from the header or the default; a bad header is a 400."""

    def __init__(self, app: ASGIApp, api: ApiSpec) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            timeout_s = request_timeout_s(request.headers.get(TIMEOUT_HEADER), self.api)
        except InvalidInputError as exc:
            await error_response(exc.status, exc.code, exc.message)(scope, receive, send)
            return
        context_of(request).deadline = time.time() + timeout_s
        await self.app(scope, receive, send)
