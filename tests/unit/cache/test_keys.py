"""cache_key isolates models, tenants and options; normalisation never changes the tokenizer's ids."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from xz_serve.cache.keys import cache_key, norm_for_tokenizer, normalise_text, semantic_namespace

TOKENIZER = Path(__file__).parents[3] / "artifacts" / "tokenizer.json"
MODEL = "xz-minilm-nlu@14edab6fe274:int8"


def key(text: str, **kw: object) -> str:
    args: dict[str, object] = {"task": "nlu", "model_id": MODEL, "tenant": "acme", **kw}
    return cache_key(text=text, **args)  # type: ignore[arg-type]


def test_layout() -> None:
    k = key("Hello")
    prefix, digest = k.rsplit(":", 1)
    assert prefix == f"xz:v1:nlu:{MODEL}:acme:0"
    assert digest.startswith("u") and len(digest) == 65


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is my balance?", "what is my BALANCE?"),
        ("  what\tis my\n\nbalance? ", "what is my balance?"),
        ("café au lait", "CAFE AU LAIT"),
        ("Ωμέγα", "ωμεγα"),
        ("ΟΔΟΣ", "οδοσ"),
        ("a\u00a0b\u3000c", "a b c"),
    ],
)
def test_equivalent_texts_share_a_key(a: str, b: str) -> None:
    assert key(a) == key(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("ΟΔΟΣ", "οδος"),  # per-char lowercase keeps sigma apart from final sigma, as the tokenizer does
        ("x²", "x2"),  # NFKC would merge these; the tokenizer does not
        ("a\x0bb", "a b"),  # \x0b is deleted by the tokenizer, not a space
        ("ﬁle", "file"),
        ("hello", "hello!"),
    ],
)
def test_different_texts_differ(a: str, b: str) -> None:
    assert key(a) != key(b)


def test_every_field_isolates() -> None:
    base = key("hi")
    assert key("hi", model_id="xz-minilm-nlu@000000000000:int8") != base
    assert key("hi", model_id=f"{MODEL[:-4]}fp32") != base
    assert key("hi", tenant="other") != base
    assert key("hi", task="embed") != base
    assert key("hi", options={"max_tokens": 64}) != base
    assert key("hi", options={"b": 1, "a": 2}) == key("hi", options={"a": 2, "b": 1})
    assert key("Hi", norm="exact") != key("hi", norm="exact")
    assert key("hi", norm="exact") != base  # the normaliser is part of the key


@pytest.mark.parametrize("tenant", ["", "a:b", "a b", "x" * 65, "ténant"])
def test_bad_fields_raise(tenant: str) -> None:
    with pytest.raises(ValueError):
        key("hi", tenant=tenant)
    with pytest.raises(ValueError):
        key("hi", model_id="has space")


def test_namespace_isolates() -> None:
    assert semantic_namespace("answer", MODEL, "a") != semantic_namespace("answer", MODEL, "b")
    assert semantic_namespace("answer", MODEL, "a") != semantic_namespace("answer", MODEL + "x", "a")


def test_norm_for_tokenizer(tmp_path: Path) -> None:
    uncased = tmp_path / "u.json"
    uncased.write_text(
        '{"normalizer": {"type": "BertNormalizer", "lowercase": true, "strip_accents": null},'
        ' "pre_tokenizer": {"type": "BertPreTokenizer"}}'
    )
    cased = tmp_path / "c.json"
    cased.write_text('{"normalizer": {"type": "BertNormalizer", "lowercase": false}, "pre_tokenizer": null}')
    assert norm_for_tokenizer(uncased) == "bert_uncased"
    assert norm_for_tokenizer(cased) == "exact"
    assert normalise_text(" A  B ", "exact") == " A  B "


@pytest.mark.skipif(not TOKENIZER.exists(), reason="needs built artifacts/tokenizer.json")
def test_normalisation_keeps_token_ids() -> None:
    """The proof, kept fast: every BMP code point in context, a sample of the rest, 5k random mixes.

    (The full sweep over all 1.1M code points in three contexts passed too; it takes ~30 s.)
    """
    from tokenizers import Tokenizer

    assert norm_for_tokenizer(TOKENIZER) == "bert_uncased"
    tok = Tokenizer.from_file(str(TOKENIZER))
    tok.no_padding()
    tok.no_truncation()
    rng = random.Random(7)
    chars = [chr(c) for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    chars += [chr(rng.randrange(0x10000, sys.maxunicode + 1)) for _ in range(20_000)]
    texts = [f"Ab{c}\u03a3 x{c}\u00c9" for c in chars]
    tricky = "  \t\nAa\u00c9\u00e9\u03a3\u03c3\u03c2\u00c5\u0301\u2019\u00a0"
    pool = chars[::50] + list(tricky) * 100
    texts += ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(5_000)]
    before = tok.encode_batch(texts)
    after = tok.encode_batch([normalise_text(t) for t in texts])
    bad = [t for t, x, y in zip(texts, before, after, strict=True) if x.ids != y.ids]
    assert not bad, [ascii(t) for t in bad[:5]]
