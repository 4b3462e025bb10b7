"""FastRoutes: the hot POST routes answered without FastAPI's router, dependencies and error layers.

Why: in process, FastAPI's share of a cached ``/v1/analyze`` (its exception and exit-stack layers,
matching the path against every route, solving the context dependency, reading the body again and
validating it) was about half of the event-loop time the whole middleware stack costs per request.
A replica's event loop is one of its two bottlenecks, and every request pays this at concurrency 1.

Only the happy path goes this way: an ``application/json`` body that parses and validates.
Anything else (another or no content type, bad JSON, a failed validation, a client gone mid-body)
is handed, body and all, to the FastAPI route of the same path, which answers it exactly as it
always has; so there is one definition of every 4xx. The handler is the route's own function, and
an ``XzError`` it raises leaves through the same ``error_response`` as FastAPI's handler for it.
Unexpected exceptions propagate, as they do from a route, to the app's 500 handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xz_serve.http.context import context_of_scope
from xz_serve.http.errors import error_response
from xz_serve.http.middleware.body_limit import replaying
from xz_serve.kernel.context import RequestContext
from xz_serve.kernel.errors import XzError

# The handler takes its own request model, which a Callable over BaseModel would not admit.
Handler = Callable[[Any, RequestContext], Awaitable[Response]]


@dataclass(frozen=True)
class FastRoute:
    """A POST route's body model and endpoint, both read off the FastAPI route itself, so the fast
    path validates exactly what the route declares and calls the function the route calls.

    ``route`` is put on the scope as the router would, so the telemetry stage names spans and
    metrics by its template either way.
    """

    route: APIRoute
    model: type[BaseModel]
    handler: Handler


def fast_routes(routes: Iterable[BaseRoute], paths: Iterable[str]) -> dict[str, FastRoute]:
    """The fast path of the POST route at each of ``paths``, by path: one JSON body model each, and
    an endpoint called as ``endpoint(body, context)``."""
    wanted = set(paths)
    table = {}
    for route in routes:
        if isinstance(route, APIRoute) and route.path in wanted and "POST" in route.methods:
            model = route.body_field.field_info.annotation if route.body_field else None
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise ValueError(f"{route.path}: the fast path needs one pydantic body model")
            table[route.path] = FastRoute(route, model, route.endpoint)
    if missing := wanted - set(table):
        raise ValueError(f"no POST route for {sorted(missing)}")
    return table


def _is_json(scope: Scope) -> bool:
    """An ``application/json`` body, the only kind FastAPI parses as JSON besides ``+json`` ones
    (rare, and left to it). Without a content type it parses none, and answers 400."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


class FastRoutes:
    """Answer ``routes``' valid requests directly; pass everything else on to ``app`` unchanged."""

    def __init__(self, app: ASGIApp, routes: dict[str, FastRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        messages = await _body(receive)
        request = _parse(route.model, messages)
        if request is None:
            await self.app(scope, replaying(messages, receive), send)
            return
        scope["route"] = route.route
        try:
            response = await route.handler(request, context_of_scope(scope))
        except XzError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.retry_after_s)
        await response(scope, receive, send)


async def _body(receive: Receive) -> list[Message]:
    """The body's messages up to its last one or the client's leaving (BodyLimitMiddleware has
    already bounded and buffered the body: one message, as a rule)."""
    messages = [await receive()]
    while messages[-1]["type"] == "http.request" and messages[-1].get("more_body", False):
        messages.append(await receive())
    return messages


def _parse(model: type[BaseModel], messages: list[Message]) -> BaseModel | None:
    """The validated request, or None where FastAPI's route should answer instead. Validation runs
    on the parsed object, as FastAPI's does, so both accept exactly the same bodies."""
    if messages[-1]["type"] != "http.request":  # the client left
        return None
    try:
        return model.model_validate(orjson.loads(b"".join(m.get("body", b"") for m in messages)))
    except (orjson.JSONDecodeError, ValidationError):
        return None
