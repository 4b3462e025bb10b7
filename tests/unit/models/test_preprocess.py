"""spell_symbols: emoji and other symbols become their Unicode names; everything else is kept."""

from __future__ import annotations

from xz_serve.models.preprocess import spell_symbols


def test_ascii_text_is_returned_unchanged() -> None:
    text = "Transfer $50 to Bob :) #now"
    assert spell_symbols(text) is text


def test_an_emoji_becomes_its_lower_cased_name_and_the_variation_selector_goes() -> None:
    spelled = spell_symbols("stuck ☹️")
    assert spelled.split() == ["stuck", "white", "frowning", "face"]
    assert "\ufe0f" not in spelled


def test_skin_tone_modifiers_are_spelled_too() -> None:
    assert spell_symbols("👍🏽 ok").split() == [
        "thumbs", "up", "sign", "emoji", "modifier", "fitzpatrick", "type-4", "ok"
    ]  # fmt: skip


def test_the_zero_width_joiner_becomes_a_space() -> None:
    assert spell_symbols("a\u200db") == "a b"


def test_letters_and_currency_signs_are_not_symbols_to_spell() -> None:
    assert spell_symbols("café") == "café"
    assert spell_symbols("€5 für dich") == "€5 für dich"  # € is Sc, not So/Sk
