"""AccessMiddleware: the access gate as an ASGI stage, on every ``/v1/*`` path, before the body is read.

Routes added later are covered too; health routes and the OpenAPI schema stay open. The gate's
answer fills the request's ``RequestContext`` (tenant, key, limits). A metered route that never
counted its texts (bad input) is charged its request when its answer starts.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from xz_serve.access.gate import AccessGate
from xz_serve.access.scopes import is_metered
from xz_serve.http.context import context_of_scope
from xz_serve.http.errors import error_response
from xz_serve.kernel.errors import XzError


def route_path(scope: Scope) -> str:
    """The path the app routes on: Serve mounts an app under its route prefix (``root_path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


class AccessMiddleware:
    """Authenticate, authorize and rate-limit every ``/v1/*`` request; everything else passes."""

    def __init__(self, app: ASGIApp, gate: AccessGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] in ("http", "websocket") else ""
        if not path.startswith("/v1/") or not self.gate.spec.auth_enabled:
            await self.app(scope, receive, send)
            return
        authorization = HTTPConnection(scope).headers.get("authorization")
        verdict = await self.gate.authenticate(authorization, path)
        if scope["type"] == "websocket":  # none today; a future one must not bypass keys
            if verdict.key is None:
                await WebSocketClose(code=1008, reason=verdict.code)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        ctx = context_of_scope(scope)
        if verdict.key is None:
            response = error_response(verdict.status, verdict.code, verdict.message, verdict.retry_after_s)
            response.headers.update(verdict.headers or {})
            await response(scope, receive, send)
            return
        metered = is_metered(path)
        self.gate.admit(verdict.key, ctx, metered)
        if not metered:  # no text count will come: charge the request now
            try:
                await self.gate.charge(ctx, {"requests": 1})
            except XzError as exc:
                response = error_response(exc.status, exc.code, exc.message, exc.retry_after_s)
                await response(scope, receive, send)  # the context stage adds ctx's headers
                return
        gate = self.gate

        async def settling(message: Message) -> None:
            if message["type"] == "http.response.start":
                await gate.settle(ctx)
            await send(message)

        await self.app(scope, receive, settling)
