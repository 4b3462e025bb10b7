"""ContextMiddleware: opens the request's ``RequestContext`` and returns what the stages added to it.

On the way in it sets the request id (``x-request-id``), the deadline (``x-request-timeout-ms`` or
``api.request_timeout_s``; a bad header is a 400) and the cache rules (``Cache-Control``). On the
way out it adds the headers any stage put in ``ctx.response_headers`` to whatever response leaves,
errors included, unless the response already carries them: the one place response headers are
merged.

A request has one id. Serve's HTTP server puts one on every request it passes to the app (the
client's ``x-request-id``, else a fresh one), logs under it and answers it itself; the app adopts
that id (``bind_request_id``, also called by the telemetry stage for the server span) and answers
none of its own (``echo_request_id=False``). Run without Serve (tests, a bare ASGI server), the app
takes the client's id or makes one, and answers it. Either way no route's own ``x-request-id``
leaves: there is one header, with the id the logs and traces carry.
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
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = REQUEST_ID_HEADER.encode()
# Visible ASCII, bounded: an id that goes into span attributes and log lines as it came. Anything
# else is ignored and the context keeps the fresh id it was created with.
_USABLE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


def bind_request_id(scope: Scope) -> RequestContext:
    """The request's context, with the request's own ``x-request-id`` as its id when usable.

    Idempotent: the header is read again, and without one the context keeps the id it was made with.
    """
    ctx = context_of_scope(scope)
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID:
            text = value.decode("latin-1")
            if _USABLE_ID.match(text):
                ctx.request_id = text
            break
    return ctx


def with_request_id(message: Message, request_id: str | None) -> Message:
    """``http.response.start`` with no ``x-request-id`` but ``request_id`` (when given)."""
    raw = [(name, value) for name, value in message.get("headers", ()) if name.lower() != _REQUEST_ID]
    if request_id is not None:
        raw.append((_REQUEST_ID, request_id.encode("latin-1")))
    return {**message, "headers": raw}


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
    """Request id, deadline and cache rules in; the stages' response headers and the id out."""

    def __init__(self, app: ASGIApp, api: ApiSpec, echo_request_id: bool = True) -> None:
        self.app = app
        self.api = api
        self.echo_request_id = echo_request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = bind_request_id(scope)
        answered_id = ctx.request_id if self.echo_request_id else None

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = with_request_id(merged_headers(message, ctx), answered_id)
            await send(message)

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
            await error_response(exc.status, exc.code, exc.message)(scope, receive, sending)
            return
        ctx.deadline = time.time() + timeout_s
        read, write = cache_rules(cache_control)
        ctx.cache_read = ctx.cache_read and read
        ctx.cache_write = ctx.cache_write and write
        await self.app(scope, receive, sending)
