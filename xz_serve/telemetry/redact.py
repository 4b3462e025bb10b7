"""Secrets out of logs, CLI messages and Ray's runtime_env: what a log line may show of a credential.

Credentials that reach this code: OTLP exporter headers (``OTEL_EXPORTER_OTLP_*HEADERS``, typically a
bearer token for the collector), passwords in Redis and endpoint URLs (``redis://:pw@host``,
``?password=``). Anything logged or printed goes through ``redact``, which keeps what an operator
needs to debug (header names, host, port, database) and replaces each secret value with ``***``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"

_SECRET_QUERY = re.compile(r"pass|secret|token|key|auth", re.IGNORECASE)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_header_var(name: str) -> bool:
    """``OTEL_EXPORTER_OTLP_HEADERS`` and its per-signal forms (``..._TRACES_HEADERS``): credentials."""
    return name.startswith("OTEL_") and name.endswith("_HEADERS")


def url_has_secret(value: str) -> bool:
    """True for a URL carrying a password in its userinfo or a secret-looking query parameter."""
    if not _URL.match(value):
        return False
    try:
        parts = urlsplit(value)
        has_password = parts.password is not None
    except ValueError:
        return True  # unparseable: treat as secret rather than show it
    return has_password or any(_SECRET_QUERY.search(k) for k, _ in parse_qsl(parts.query))


def redact_url(url: str) -> str:
    """The URL with its password and secret query values replaced: ``redis://:***@host:6380/0``."""
    if not _URL.match(url):
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
        hostinfo = parts.netloc.rpartition("@")[2]
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:{REDACTED}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_headers(value: str) -> str:
    """``authorization=Bearer abc,x-key=k`` → ``authorization=***,x-key=***``: names stay, values go."""
    names = [item.partition("=")[0].strip() for item in value.split(",") if item.strip()]
    return ",".join(f"{name}={REDACTED}" for name in names)


def redact_value(name: str, value: str) -> str:
    """One environment value as it may be logged."""
    if is_header_var(name):
        return redact_headers(value)
    return redact_url(value)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` safe to log."""
    return {name: redact_value(name, value) for name, value in env.items()}


def redact(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, strings, e.g. deployment options) safe to log: env values and
    URLs redacted at any depth; the original is not modified."""
    if isinstance(obj, Mapping):
        return {k: redact_value(str(k), v) if isinstance(v, str) else redact(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_url(obj)
    return obj


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with each literal ``secret`` (e.g. a password inside an exception message) replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
