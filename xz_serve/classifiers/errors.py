"""The classifiers' errors: each an XzError with its status and stable code."""

from __future__ import annotations

from xz_serve.kernel.errors import ConflictError, NotFoundError, XzError


class ClassifierNotFoundError(NotFoundError):
    """No such classifier for this tenant (never created, deleted, or another tenant's)."""

    code = "classifier_not_found"


class ClassifierExistsError(ConflictError):
    """The tenant already has a classifier of that name."""

    code = "classifier_exists"


class ClassifierLimitError(ConflictError):
    """The tenant holds as many classifiers as it may (``classifiers.max_per_tenant``)."""

    code = "too_many_classifiers"


class VersionMismatchError(XzError):
    """``If-Match`` named a version that is no longer the current one: nothing was written."""

    status = 412
    code = "version_mismatch"


class ModelMismatchError(ConflictError):
    """The head was trained on another encoder's embeddings than the one serving now: update it
    (PUT the same examples) to retrain it on this encoder."""

    code = "classifier_model_mismatch"


class ClassifierStoreError(XzError):
    """The classifier store did not answer in time: retry shortly; nothing was changed."""

    status = 503
    code = "store_unavailable"
