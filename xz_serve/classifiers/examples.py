"""A classifier's definition checked before any encoder work: each broken rule a 4xx naming the example.

Nothing is embedded, trained or stored for a definition that fails here, so a bad request costs
neither the encoder nor the caller's text budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from xz_serve.classifiers.head import stored_size
from xz_serve.classifiers.spec import ClassifierSpec
from xz_serve.kernel.errors import InvalidInputError, PayloadTooLargeError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""What a classifier name may be: it is written in dialog policies and in URLs, so no spaces."""
_NAME = re.compile(NAME_PATTERN)
_SPACE = re.compile(r"\s+")
DIM = 384  # the encoder's embedding size: what a head's size is estimated with before training


@dataclass(frozen=True)
class Definition:
    """A checked classifier definition: texts in request order, label indices, label names."""

    name: str
    description: str
    texts: list[str]
    y: np.ndarray  # [n] label index per text
    labels: tuple[str, ...]  # sorted

    def counts(self) -> dict[str, int]:
        return dict(zip(self.labels, np.bincount(self.y, minlength=len(self.labels)).tolist(), strict=True))


def _invalid(message: str, code: str) -> InvalidInputError:
    return InvalidInputError(message, code=code)


def _valid_unicode(value: str) -> bool:
    if value.isascii():
        return True
    try:  # JSON may escape a lone surrogate (\ud800): no tokenizer, hash or store can take it
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_name(name: str) -> str:
    """The name, or a 400 saying what a name may be."""
    if not _NAME.fullmatch(name):
        raise _invalid(
            f"name must be 1 to 64 of A-Z a-z 0-9 _ . - starting with a letter or digit; got {name!r}",
            "invalid_name",
        )
    return name


def check_definition(
    name: str, examples: list[tuple[str, str]], description: str | None, spec: ClassifierSpec
) -> Definition:
    """The definition of a classifier from its ``(text, label)`` examples, or the first broken rule.

    Raises:
        InvalidInputError: a bad name, text or label (naming the example's index), fewer than 2
            labels, a label with one example, or one text under two labels (400).
        PayloadTooLargeError: too many examples or labels, a text, label or description too long, or
            a head past ``max_head_bytes`` (413).
    """
    check_name(name)
    description = description or ""
    if len(description) > spec.max_description_chars:
        raise PayloadTooLargeError(
            f"description has {len(description)} characters; at most {spec.max_description_chars}",
            code="description_too_long",
        )
    if not _valid_unicode(description):
        raise _invalid("description is not valid Unicode", "invalid_text")
    if len(examples) > spec.max_examples:
        raise PayloadTooLargeError(
            f"{len(examples)} examples given; at most {spec.max_examples} per classifier",
            code="too_many_examples",
        )
    seen: dict[str, tuple[int, str]] = {}  # normalised text -> (first index, its label)
    for index, (text, label) in enumerate(examples):
        _check_example(index, text, label, spec)
        key = _SPACE.sub(" ", text.strip()).casefold()
        first = seen.setdefault(key, (index, label))
        if first[1] != label:
            raise _invalid(
                f"examples[{index}] repeats the text of examples[{first[0]}] with another label "
                f"({label!r} vs {first[1]!r}); a text can have one label only",
                "conflicting_labels",
            )
    labels = tuple(sorted({label for _, label in examples}))
    if len(labels) < 2:
        raise _invalid(
            f"{len(labels)} distinct label(s) given; a classifier needs at least 2", "too_few_labels"
        )
    if len(labels) > spec.max_labels:
        raise PayloadTooLargeError(
            f"{len(labels)} distinct labels given; at most {spec.max_labels}", code="too_many_labels"
        )
    position = {label: i for i, label in enumerate(labels)}
    y = np.fromiter((position[label] for _, label in examples), dtype=np.int64, count=len(examples))
    counts = np.bincount(y, minlength=len(labels))
    for i in np.flatnonzero(counts < 2):
        index = next(j for j, (_, label) in enumerate(examples) if label == labels[i])
        raise _invalid(
            f"label {labels[i]!r} has only one example (examples[{index}]); each label needs at least 2 "
            "(one to learn from while the other is held out)",
            "too_few_examples",
        )
    size = stored_size(len(labels), DIM, sum(len(label) for label in labels))
    if size > spec.max_head_bytes:
        raise PayloadTooLargeError(
            f"a head of {len(labels)} labels takes about {size} bytes; at most {spec.max_head_bytes}",
            code="head_too_large",
        )
    return Definition(name, description, [text for text, _ in examples], y, labels)


def _check_example(index: int, text: str, label: str, spec: ClassifierSpec) -> None:
    where = f"examples[{index}]"
    if not text.strip():
        raise _invalid(f"{where}.text is empty", "empty_text")
    if not _valid_unicode(text):
        raise _invalid(f"{where}.text is not valid Unicode (a lone surrogate?)", "invalid_text")
    if len(text) > spec.max_text_chars:
        raise PayloadTooLargeError(
            f"{where}.text has {len(text)} characters; at most {spec.max_text_chars}", code="text_too_long"
        )
    if not label.strip():
        raise _invalid(f"{where}.label is empty", "empty_label")
    if label != label.strip():
        raise _invalid(f"{where}.label {label!r} has leading or trailing whitespace", "invalid_label")
    if not _valid_unicode(label):
        raise _invalid(f"{where}.label is not valid Unicode (a lone surrogate?)", "invalid_label")
    if len(label) > spec.max_label_chars:
        raise PayloadTooLargeError(
            f"{where}.label has {len(label)} characters; at most {spec.max_label_chars}",
            code="label_too_long",
        )
