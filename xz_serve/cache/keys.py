"""cache_key: one pure function from (task, text, model, tenant, options) to a Redis key."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

SCHEMA = 1  # bump when the value encoding or the key layout changes: old entries then just miss

TextNorm = Literal["exact", "bert_uncased"]
"""How text is normalised before hashing.

``bert_uncased`` is only valid for a tokenizer that lowercases and strips accents (BertNormalizer with
``lowercase=True``) and splits on whitespace (BertPreTokenizer): for those, the normalised text gives
the very same token ids, hence the very same model output. ``exact`` hashes the text as sent.
"""

_NORM_CODE: dict[TextNorm, str] = {"exact": "e", "bert_uncased": "u"}
_FIELD = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# What BertPreTokenizer splits on after BertNormalizer's clean_text: Unicode White_Space minus the
# control characters (\x0b, \x0c, \x85), which clean_text deletes instead of turning into a space.
# Collapsing these is safe; collapsing Python's whole str.isspace() set is not ("a\x0bb" -> "ab").
_SPACE = re.compile("[\t\n\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
# Scripts whose canonical decompositions both Unicode tables agree on; accents are only stripped there.
_ACCENTABLE = re.compile("[\x00-\u04ff\u2000-\u206f]*")
_ACCENTS = re.compile("[\u0300-\u036f]+")


def normalise_text(text: str, norm: TextNorm = "bert_uncased") -> str:
    """The text reduced to what the tokenizer cannot tell apart, so equal outputs share one key.

    Only steps the tokenizer itself takes, and only where Python's Unicode tables agree with the
    tokenizer's (they differ for recently assigned characters):

    - whitespace runs become one space and the ends are trimmed (the pre-tokenizer splits on them);
    - lowercasing is per character, as the tokenizer does it: ``str.lower`` turns a word-final
      capital sigma into final sigma (U+03C2), where the tokenizer gives U+03C3, another token;
    - accents (U+0300-U+036F after NFD) are dropped only from texts written entirely in Latin, Greek,
      Cyrillic and general punctuation, whose decompositions have been fixed for decades.

    NFKC is not applied: it maps "²" to "2" and "ﬁ" to "fi", which the tokenizer keeps apart (3,403
    such characters). tests/unit/cache/test_keys.py checks every code point against the real tokenizer.
    """
    if norm == "exact":
        return text
    if text.isascii():
        return _SPACE.sub(" ", text.lower()).strip(" ")
    text = _SPACE.sub(" ", text).strip(" ")
    text = "".join(ch.lower() for ch in text) if "\u03a3" in text else text.lower()
    if _ACCENTABLE.fullmatch(text):
        text = _ACCENTS.sub("", unicodedata.normalize("NFD", text))
    return text


def options_hash(options: Mapping[str, Any] | None) -> str:
    """Short stable hash of the request options that change the output (e.g. max_tokens, top_k)."""
    if not options:
        return "0"
    blob = json.dumps(dict(options), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _check(name: str, value: str) -> str:
    if not _FIELD.match(value):
        raise ValueError(f"{name} must match {_FIELD.pattern}, got {value!r}")
    return value


def _check_model(model_id: str) -> str:
    # model_id is "name@revision:quant": ':' is fine (the fields after it are fixed and colon-free).
    if not model_id or any(ch.isspace() for ch in model_id) or len(model_id) > 200:
        raise ValueError(f"model_id must be non-empty, without whitespace, got {model_id!r}")
    return model_id


def cache_key(
    task: str,
    text: str,
    model_id: str,
    tenant: str,
    *,
    options: Mapping[str, Any] | None = None,
    norm: TextNorm = "bert_uncased",
) -> str:
    """The Redis key of one text's result: ``xz:v1:{task}:{model_id}:{tenant}:{opts}:{norm}{sha256}``.

    Everything that can change the value is in the key, so a new model revision, another
    quantization, another tenant or other options never read each other's entries and no
    invalidation is ever needed: old keys simply age out under TTL and allkeys-lru.

    Args:
        task: what the value is ("nlu", "embed", "answer"); letters, digits, ``_.-``.
        text: the input text as the client sent it.
        model_id: the replica's ``PredictResult.model_id`` (``name@revision:quant``).
        tenant: isolates customers; same alphabet as ``task``.
        options: request options that change the output; none gives ``0``.
        norm: text normalisation; must match the model's tokenizer (see ``norm_for_tokenizer``).

    Raises:
        ValueError: a field holds characters that would make keys ambiguous.
    """
    digest = hashlib.sha256(normalise_text(text, norm).encode("utf-8", "surrogatepass")).hexdigest()
    return (
        f"xz:v{SCHEMA}:{_check('task', task)}:{_check_model(model_id)}:{_check('tenant', tenant)}"
        f":{options_hash(options)}:{_NORM_CODE[norm]}{digest}"
    )


def semantic_namespace(task: str, model_id: str, tenant: str) -> str:
    """Namespace of semantic entries: embeddings from another model or tenant are never compared."""
    return f"xz:v{SCHEMA}:sem:{_check('task', task)}:{_check_model(model_id)}:{_check('tenant', tenant)}"


def norm_for_tokenizer(tokenizer_json: Path) -> TextNorm:
    """``bert_uncased`` only when tokenizer.json declares exactly the steps that make it safe.

    Reads the JSON config rather than importing ``tokenizers``: the ingress has no model code.
    Any other normaliser (cased, NFKC, custom) falls back to ``exact``, which is always safe.
    """
    config = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    normalizer = config.get("normalizer") or {}
    pre = config.get("pre_tokenizer") or {}
    uncased = (
        normalizer.get("type") == "BertNormalizer"
        and normalizer.get("lowercase") is True
        and normalizer.get("strip_accents") in (None, True)
        and pre.get("type") == "BertPreTokenizer"
    )
    return "bert_uncased" if uncased else "exact"
