"""ContextMiddleware: opens the request's ``RequestContext`` and returns what the stages added to it.

On the way in it sets the deadline (``x-request-timeout-ms`` or ``api.request_timeout_s``; a bad
header is a 400) and the cache rules (``Cache-Control``). On the way out it adds the headers any
stage put in ``ctx.response_headers`` to whatever response leaves, errors included, unless the
response already carries them: the one place response headers are merged.
"""

from __future__ import annotations

import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xz_serve.access.spec import ApiSpec
from xz_serve.http.cache_control import cache_rules
from xz_serve.http.context import context_of_scope
from xz_serve.http.errors import error_response
from xz_serve.kernel.context import RequestContext
from xz_serve.kernel.deadline import TIMEOUT_HEADER, request_timeout_s
from xz_serve.kernel.errors import InvalidInputError

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_TIMEOUT = TIMEOUT_HEADER.encode()


def merged_headers(message: Message, ctx: RequestContext) -> Message:
    """``http.response.start`` with ctx's headers added where the response lacks them."""
    if not ctx.response_headers:
        return message
    raw: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
    present = {name.lower() for name, _ in raw}
    for name, value in ctx.response_headers.items():
        lowered = name.lower().encode()
        if lowered not in present and _HEADER_NAME.match(name):
            raw.append((lowered, value.encode("latin-1", "replace")))
    return {**message, "headers": raw}


class ContextMiddleware:
    """Deadline and cache rules in; the stages' response headers out."""

    def __init__(self, app: ASGIApp, api: ApiSpec) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = context_of_scope(scope)
        timeout_header: str | None = None
        cache_control: str | None = None
        for name, value in scope.get("headers", ()):
            if name == _TIMEOUT:
                timeout_header = value.decode("latin-1")
            elif name == b"cache-control":
                cache_control = value.decode("latin-1")
        try:
            api = self.api
            timeout_s = request_timeout_s(timeout_header, api.request_timeout_s, api.max_request_timeout_s)
        except InvalidInputError as exc:
            await error_response(exc.status, exc.code, exc.message)(scope, receive, send)
            return
        ctx.deadline = time.time() + timeout_s
        read, write = cache_rules(cache_control)
        ctx.cache_read = ctx.cache_read and read
        ctx.cache_write = ctx.cache_write and write

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = merged_headers(message, ctx)
            await send(message)

        await self.app(scope, receive, sending)
