"""The texts a request hands to the encoder, checked before any model work: each broken rule has its
own status and code."""

from __future__ import annotations

from xz_serve.access.spec import ApiSpec
from xz_serve.kernel.errors import InvalidInputError, PayloadTooLargeError


def request_texts(text: str | None, texts: list[str] | None, api: ApiSpec) -> list[str]:
    """The request's texts as a list, or an error saying exactly which limit it broke.

    Raises:
        InvalidInputError: neither or both fields given, no texts, or a blank text (400).
        PayloadTooLargeError: too many texts or a text too long (413).
    """
    if (text is None) == (texts is None):
        raise InvalidInputError("give exactly one of `text` or `texts`", code="invalid_request")
    items = [text] if text is not None else list(texts or [])
    if not items:
        raise InvalidInputError("`texts` must not be empty", code="empty_input")
    if len(items) > api.max_texts:
        raise PayloadTooLargeError(
            f"{len(items)} texts given; at most {api.max_texts} per request", code="too_many_texts"
        )
    for index, item in enumerate(items):
        if not item.strip():
            raise InvalidInputError(f"text {index} is empty", code="empty_text")
        if not item.isascii():
            try:  # JSON may escape a lone surrogate (\ud800): no tokenizer or hash can take it
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInputError(f"text {index} is not valid Unicode", code="invalid_text") from None
        if len(item) > api.max_text_chars:
            raise PayloadTooLargeError(
                f"text {index} has {len(item)} characters; at most {api.max_text_chars}",
                code="text_too_long",
            )
    return items
