"""XzError tree: each error knows its HTTP status and a stable machine-readable code."""

from __future__ import annotations


class XzError(Exception):
    """Base of every error xz_serve reports to clients."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[object, ...]:
        # Keep code and retry_after_s when the error crosses a Ray actor boundary (pickled).
        return (type(self), (self.message,), dict(self.__dict__))


class InvalidInputError(XzError):
    """The request is malformed or breaks a limit: the client must change it."""

    status = 400
    code = "invalid_request"


class PayloadTooLargeError(InvalidInputError):
    """Too many texts, a text too long, or a body too big."""

    status = 413
    code = "payload_too_large"


class OverloadedError(XzError):
    """Queues are full: retry after a short pause."""

    status = 503
    code = "overloaded"


class DeadlineExceededError(XzError):
    """The request's deadline passed before its answer was ready; it was dropped, not computed."""

    status = 504
    code = "deadline_exceeded"


class ModelFailureError(XzError):
    """The model could not compute this input; batch-mates are unaffected."""

    status = 424
    code = "model_failure"


class NotReadyError(XzError):
    """Models are still loading (or being built) or no replica is alive."""

    status = 503
    code = "not_ready"




class RateLimitedError(XzError):
    """A per-key limit is used up for now: retry after ``retry_after_s``."""

    status = 429
    code = "rate_limited"


class NotFoundError(XzError):
    """The named resource (e.g. an API key id) does not exist."""

    status = 404
    code = "not_found"


class ConflictError(XzError):
    """The resource is busy with another request (e.g. a session mid-turn): retry shortly."""

    status = 409
    code = "conflict"
