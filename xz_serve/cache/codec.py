"""Compact bytes for a TextPrediction: a small JSON header followed by the raw float32 embedding."""

from __future__ import annotations

import json
import struct

import numpy as np

from xz_serve.kernel.types import TextPrediction

MAGIC = b"XZ\x02"  # format version 2; a value in another format decodes as a miss, never garbage
_HEADER_LEN = struct.Struct("<I")
_FLOAT32 = np.dtype("<f4")


class CodecError(ValueError):
    """Bytes that are not a TextPrediction in this format (corrupt, truncated or from another version)."""


def encode_prediction(pred: TextPrediction) -> bytes:
    """``MAGIC | u32 header length | JSON header | little-endian float32 embedding``.

    Raw vector bytes are 4 bytes a dimension (1,536 for 384 dims) against ~8-10 for JSON floats, and
    decode without parsing. Probabilities stay JSON: Python's float repr round-trips exactly.
    """
    vector = np.ascontiguousarray(pred.embedding, dtype=_FLOAT32).reshape(-1)
    header = json.dumps(
        {
            "i": [[label, prob] for label, prob in pred.intents],
            "s": pred.sentiment,
            "t": pred.tokens,
            "o": pred.out_of_scope,
            "q": pred.oos_score,
            "d": int(vector.shape[0]),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    return b"".join((MAGIC, _HEADER_LEN.pack(len(header)), header, vector.tobytes()))


def decode_prediction(data: bytes) -> TextPrediction:
    """The exact TextPrediction ``encode_prediction`` was given (embedding as native float32).

    Raises:
        CodecError: ``data`` is not a complete value in this format.
    """
    view = memoryview(data)
    start = len(MAGIC) + _HEADER_LEN.size
    if len(view) < start or view[: len(MAGIC)] != MAGIC:
        raise CodecError("not an xz prediction (bad magic)")
    (size,) = _HEADER_LEN.unpack_from(view, len(MAGIC))
    try:
        header = json.loads(bytes(view[start : start + size]))
        dim = int(header["d"])
        if len(view) != start + size + dim * _FLOAT32.itemsize:
            raise CodecError(f"expected {dim} float32 values after the header")
        embedding = np.frombuffer(view, dtype=_FLOAT32, count=dim, offset=start + size)
        return TextPrediction(
            intents=[(str(label), float(prob)) for label, prob in header["i"]],
            sentiment={str(k): float(v) for k, v in header["s"].items()},
            embedding=embedding.astype(np.float32),  # native order, writable, owns its memory
            tokens=int(header["t"]),
            out_of_scope=bool(header["o"]),
            oos_score=float(header["q"]),
        )
    except CodecError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CodecError(f"corrupt prediction header: {exc}") from exc


def is_prediction(data: bytes) -> bool:
    """True when ``data`` decodes as a TextPrediction (the exact cache's ``check``)."""
    try:
        decode_prediction(data)
    except CodecError:
        return False
    return True
