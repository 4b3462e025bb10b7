"""Every broken rule of a classifier definition: a 4xx with a code and a message naming the example."""

from __future__ import annotations

import pytest

from xz_serve.classifiers.examples import check_definition
from xz_serve.classifiers.spec import ClassifierSpec
from xz_serve.kernel.errors import InvalidInputError, PayloadTooLargeError

SPEC = ClassifierSpec(
    max_examples=20, max_labels=3, max_text_chars=40, max_label_chars=10, max_head_bytes=20_000
)
GOOD = [("lights on", "on"), ("switch it on", "on"), ("lights off", "off"), ("switch it off", "off")]


def test_a_good_definition() -> None:
    definition = check_definition("lights", GOOD, "on or off", SPEC)
    assert definition.labels == ("off", "on")
    assert definition.y.tolist() == [1, 1, 0, 0]
    assert definition.counts() == {"off": 2, "on": 2}
    assert definition.texts == [t for t, _ in GOOD]


@pytest.mark.parametrize(
    ("examples", "code", "words"),
    [
        ([*GOOD, ("   ", "on")], "empty_text", "examples[4].text is empty"),
        ([*GOOD, ("dim", "")], "empty_label", "examples[4].label is empty"),
        ([*GOOD, ("dim", "  ")], "empty_label", "examples[4].label is empty"),
        ([*GOOD, ("dim", " dim")], "invalid_label", "examples[4].label"),
        ([*GOOD, ("bad \ud800 text", "on")], "invalid_text", "examples[4].text is not valid Unicode"),
        ([*GOOD, ("dim", "d\udfff")], "invalid_label", "examples[4].label is not valid Unicode"),
        ([*GOOD, ("dim the lights", "dim")], "too_few_examples", "'dim' has only one example (examples[4])"),
        ([*GOOD, ("Lights  ON", "off")], "conflicting_labels", "examples[4] repeats the text of examples[0]"),
        ([("a", "x"), ("b", "x")], "too_few_labels", "at least 2"),
        ([], "too_few_labels", "0 distinct label(s)"),
    ],
)
def test_bad_input_is_a_400_naming_the_example(
    examples: list[tuple[str, str]], code: str, words: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        check_definition("lights", examples, None, SPEC)
    assert caught.value.status == 400
    assert caught.value.code == code
    assert words in caught.value.message


@pytest.mark.parametrize(
    ("examples", "code"),
    [
        ([*GOOD, ("x" * 41, "on")], "text_too_long"),
        ([*GOOD, ("dim", "d" * 11), ("dimmer", "d" * 11)], "label_too_long"),
        ([*GOOD, ("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")], "too_many_labels"),
        (GOOD * 6, "too_many_examples"),
    ],
)
def test_limits_are_a_413(examples: list[tuple[str, str]], code: str) -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        check_definition("lights", examples, None, SPEC)
    assert (caught.value.status, caught.value.code) == (413, code)


def test_a_head_past_its_byte_bound_is_refused_before_any_work() -> None:
    spec = SPEC.model_copy(update={"max_labels": 100})
    examples = [(f"text {i}", f"l{i // 2}") for i in range(20)]  # 10 labels: ~31 kB of head
    with pytest.raises(PayloadTooLargeError) as caught:
        check_definition("big", examples, None, spec)
    assert caught.value.code == "head_too_large"


@pytest.mark.parametrize("name", ["", "has space", "-lead", "x" * 65, "semi;colon", "ü"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        check_definition(name, GOOD, None, SPEC)
    assert caught.value.code == "invalid_name"


def test_same_text_same_label_is_fine() -> None:
    assert check_definition("lights", [*GOOD, ("lights on", "on")], None, SPEC).counts()["on"] == 3
