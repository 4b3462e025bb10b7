"""The codec round-trips a TextPrediction exactly and refuses bytes it did not write."""

from __future__ import annotations

import numpy as np
import pytest

from xz_serve.cache.codec import CodecError, decode_prediction, encode_prediction
from xz_serve.kernel.types import TextPrediction


def prediction(dim: int = 384) -> TextPrediction:
    rng = np.random.default_rng(0)
    vector = rng.normal(size=dim).astype(np.float32)
    return TextPrediction(
        intents=[("balance", 0.8123456789012345), ("transfer", 1e-30), ("oos", 0.1)],
        sentiment={"negative": 0.1, "neutral": 0.2, "positive": 0.7000000000000001},
        embedding=vector / np.linalg.norm(vector),
        tokens=17,
        out_of_scope=False,
        oos_score=0.123456789012345,
    )


def test_round_trip_is_exact() -> None:
    pred = prediction()
    back = decode_prediction(encode_prediction(pred))
    assert back.intents == pred.intents
    assert back.sentiment == pred.sentiment
    assert back.tokens == pred.tokens and back.out_of_scope is pred.out_of_scope
    assert back.oos_score == pred.oos_score
    assert back.embedding.dtype == np.float32 and back.embedding.flags.writeable
    assert back.embedding.tobytes() == pred.embedding.tobytes()


def test_compact() -> None:
    data = encode_prediction(prediction())
    assert len(data) < 384 * 4 + 300


def test_unicode_labels_and_oos() -> None:
    pred = TextPrediction([("café", 1.0)], {"😀": 1.0}, np.zeros(3, np.float32), 0, True, 0.9)
    back = decode_prediction(encode_prediction(pred))
    assert back.intents == [("café", 1.0)] and back.sentiment == {"😀": 1.0} and back.out_of_scope


@pytest.mark.parametrize("cut", [0, 2, 5, 20, -1])
def test_truncated_or_foreign_bytes_raise(cut: int) -> None:
    data = encode_prediction(prediction())
    with pytest.raises(CodecError):
        decode_prediction(data[:cut])
    with pytest.raises(CodecError):
        decode_prediction(b"not a prediction at all")


def test_a_value_of_the_previous_format_is_refused() -> None:
    # Values written before the out-of-scope score was stored must read as misses, not as a
    # prediction with a made-up score.
    data = encode_prediction(prediction())
    with pytest.raises(CodecError):
        decode_prediction(b"XZ\x01" + data[3:])
