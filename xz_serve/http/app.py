"""create_app: what a replica serves. The middleware stack, in order, and every router, in one place.

A request passes the stages outermost first, each filling the request's ``RequestContext``:

1. ``AdmissionMiddleware``  bounded requests in flight per replica, else a prebuilt JSON 503
2. ``TelemetryMiddleware``  server span (W3C traceparent in, x-trace-id out), HTTP metrics
3. ``ContextMiddleware``    request id, deadline and cache rules in; every stage's response headers out
4. ``AccessMiddleware``     API key, scope, per-key limits (only with ``access.auth_enabled``)
5. ``CallerCapMiddleware``  one key's (auth off: one address's) share of the replica, else 429
6. ``BodyLimitMiddleware``  the body in full before the route: 413 past its size, 408 past its time
7. ``FastRoutes``           a valid NLU request straight to its handler; the rest goes on to FastAPI
8. FastAPI's error table    every XzError and validation failure as ``{"error": {...}}``
9. the route                validates, calls the services, shapes JSON
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI

from xz_serve import __version__
from xz_serve.access.gate import AccessGate
from xz_serve.cache.guard import cache_guard
from xz_serve.classifiers.service import ClassifierService, build_classifiers
from xz_serve.dialog.service import build_dialog
from xz_serve.http.admin_routes import admin_router
from xz_serve.http.chat_routes import chat_router
from xz_serve.http.classifier_routes import classifier_router
from xz_serve.http.context import context_of_scope
from xz_serve.http.errors import install_error_handlers
from xz_serve.http.fast_routes import FastRoutes
from xz_serve.http.meta_routes import meta_router
from xz_serve.http.middleware.access import AccessMiddleware
from xz_serve.http.middleware.admission import AdmissionMiddleware, admission_gate
from xz_serve.http.middleware.body_limit import BodyLimitMiddleware
from xz_serve.http.middleware.context import ContextMiddleware
from xz_serve.http.middleware.in_flight import CallerCapMiddleware, max_in_flight_per_key
from xz_serve.http.middleware.telemetry import TelemetryMiddleware
from xz_serve.http.nlu_routes import nlu_routes
from xz_serve.http.openai_chat_routes import openai_chat_router
from xz_serve.http.openapi import document_auth
from xz_serve.kernel.redis import RedisGuard
from xz_serve.kernel.types import MAX_TOP_K
from xz_serve.models.manifest import TOKENIZER_FILE, intent_labels
from xz_serve.nlu.cached import predictor
from xz_serve.nlu.client import NluClient
from xz_serve.settings import XzSettings

log = logging.getLogger(__name__)


def _store_guard(settings: XzSettings) -> RedisGuard:
    """The durable store's guard: key lookups and limit checks fail within ``store.timeout_ms``;
    sessions share its client with their own, longer deadline."""
    store = settings.store
    return RedisGuard.connect(
        store.redis_url, "store", timeout_ms=store.timeout_ms, backoff_ms=settings.access.store_backoff_ms,
        socket_timeout_ms=max(store.timeout_ms, store.session_timeout_ms),
    )  # fmt: skip


def _warn_about_access(settings: XzSettings, store: RedisGuard) -> None:
    if not settings.access.auth_enabled:
        log.warning(
            "AUTH IS OFF (access.auth_enabled=false): every /v1 request, admin routes included, is "
            "unauthenticated and unlimited. Local development only."
        )
    elif not store.configured:
        log.warning(
            "auth is on but store.redis_url is unset: API keys and rate limits live in this replica's "
            "memory only (lost on restart, limits per replica). Set XZ_STORE__REDIS_URL in production."
        )


def create_api(client: NluClient, settings: XzSettings, *, echo_request_id: bool = True) -> FastAPI:
    """The FastAPI app around ``client``, with every stage but admission; tests drive it directly.

    ``echo_request_id``: answer ``x-request-id`` (the request's own, or a fresh one). Serve's HTTP
    server answers it itself, with the id it put on the request, so the Serve deployments pass False.
    """
    api = settings.api
    app = FastAPI(
        title="xz_serve",
        version=__version__,
        description="Intent, sentiment and embeddings for XiaoZhua, served on Ray Serve.",
        # FastAPI's own OpenTelemetry would open a second server span per request beside
        # TelemetryMiddleware's (which names it by route template and feeds Ray's metrics): off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    # One guard per Redis role for the whole replica: one pool and one outage detector each.
    cache_redis = cache_guard(settings.cache)
    store_redis = _store_guard(settings)
    # What a cached prediction holds: the replica's MAX_TOP_K alternatives (each route slices its
    # request's top_k), so one entry serves every top_k, and api.top_k is not part of the key.
    options = {"top_k": MAX_TOP_K, "max_tokens": settings.model.max_tokens}
    tokenizer = Path(settings.model.artifacts_dir) / TOKENIZER_FILE
    nlu = predictor(client, settings.cache, cache_redis, options, tokenizer)
    _warn_about_access(settings, store_redis)
    gate = AccessGate(settings.access, store_redis)
    app.state.access = gate  # tests add keys to an in-memory store through it

    nlu_api = nlu_routes(nlu, api, gate)
    mount(app, nlu_api.router)
    mount(app, meta_router(client))
    mount(app, admin_router(gate))
    classifiers: ClassifierService | None = None
    if settings.classifiers.enabled:  # /v1/classifiers, /v1/classify: heads on the same encoder pass
        classifiers = build_classifiers(settings.classifiers, store_redis.client, nlu.predict_for, meter=gate)
        mount(app, classifier_router(classifiers, nlu, api, gate))
        app.router.on_shutdown.append(classifiers.close)
    if settings.access.auth_enabled:
        document_auth(app)
    if settings.dialog.enabled:  # /v1/chat, /v1/sessions: same cached NLU client, one encoder pass
        dialog = build_dialog(
            nlu.predict_for, settings.dialog, store=settings.store, store_guard=store_redis,
            cache=settings.cache, cache_guard=cache_redis,
            intents=intent_labels(Path(settings.model.artifacts_dir)), oos_threshold=api.oos_threshold,
            meter=gate, classifiers=classifiers,
        )  # fmt: skip
        mount(app, chat_router(dialog))
        mount(app, openai_chat_router(dialog))  # /v1/chat/completions: OpenAI's protocol, same turns
        app.router.on_shutdown.append(dialog.close)
    app.router.on_shutdown.extend([nlu.close, cache_redis.close, store_redis.close])

    # Added innermost first: the last one added is the outermost.
    app.add_middleware(FastRoutes, routes=nlu_api.fast)
    app.add_middleware(BodyLimitMiddleware, max_bytes=api.max_body_bytes, timeout_s=api.body_timeout_s)
    app.add_middleware(CallerCapMiddleware, cap=max_in_flight_per_key(settings))
    if settings.access.auth_enabled:
        app.add_middleware(AccessMiddleware, gate=gate)
    app.add_middleware(ContextMiddleware, api=api, echo_request_id=echo_request_id)
    if settings.telemetry.enabled:
        app.add_middleware(TelemetryMiddleware, on_context=_bind_trace)
    return app


def mount(app: FastAPI, router: APIRouter) -> None:
    """Add ``router``'s routes to the app itself, so that the router matches them in one flat list
    and every stage that reads ``app.routes`` (admission's route labels) sees their paths."""
    app.router.routes.extend(router.routes)


def _bind_trace(scope: object, carrier: dict[str, str]) -> None:
    """The request's server span becomes the parent of everything downstream (cache, replicas)."""
    context_of_scope(scope).carrier = carrier  # type: ignore[arg-type]


def create_app(
    client: NluClient, settings: XzSettings, *, echo_request_id: bool = True
) -> AdmissionMiddleware:
    """What a replica serves: ``create_api`` behind the admission gate (outermost: cheap refusals)."""
    app = create_api(client, settings, echo_request_id=echo_request_id)
    paths = [path for route in app.routes if isinstance(path := getattr(route, "path", None), str)]
    return admission_gate(app, settings, paths)
