"""Caches in front of the models: exact (L1 + Redis), coalescing, and semantic (near duplicates)."""

from xz_serve.cache.coalesce import Coalescer
from xz_serve.cache.codec import CodecError, decode_prediction, encode_prediction
from xz_serve.cache.exact import ExactCache
from xz_serve.cache.guard import cache_guard
from xz_serve.cache.keys import cache_key, norm_for_tokenizer, normalise_text, semantic_namespace
from xz_serve.cache.semantic import SemanticCache, SemanticHit
from xz_serve.cache.spec import CacheSpec
from xz_serve.cache.stats import CacheStats

__all__ = [
    "CacheSpec",
    "CacheStats",
    "Coalescer",
    "CodecError",
    "ExactCache",
    "SemanticCache",
    "SemanticHit",
    "cache_guard",
    "cache_key",
    "decode_prediction",
    "encode_prediction",
    "norm_for_tokenizer",
    "normalise_text",
    "semantic_namespace",
]
