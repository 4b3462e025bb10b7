"""check_task: every problem in a task's folder is refused before training, named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xz_serve.artifacts.data import DataError, TaskData, check_task


def rows(spec: dict[str, int]) -> list[dict[str, str]]:
    """``{label: n}`` -> n distinct texts per label."""
    return [{"text": f"{label} example {i}", "label": label} for label, n in spec.items() for i in range(n)]


def write(path: Path, lines: list[object]) -> Path:
    """Each item a line: a dict as JSON, a str as given (to write broken lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def check(folder: Path, **kw: float) -> TaskData:
    return check_task(folder, int(kw.get("min_examples", 3)), kw.get("max_mb", 1.0), kw.get("share", 0.0))


def problems(folder: Path, **kw: float) -> list[str]:
    with pytest.raises(DataError) as err:
        check(folder, **kw)
    return err.value.problems


GOOD = rows({"alarm_set": 3, "music_play": 3})


def test_a_good_folder_gives_sorted_names_rows_with_their_lines_and_no_val(tmp_path: Path) -> None:
    write(tmp_path / "train.jsonl", [*GOOD[3:], "", *GOOD[:3]])  # a blank line is skipped, not an error
    task = check(tmp_path)
    assert task.names == ("alarm_set", "music_play") and not task.has_oos
    assert task.val is None and task.warnings == ()
    assert [r.line for r in task.train] == [1, 2, 3, 5, 6, 7]
    assert task.labelled(task.train).labels == [1, 1, 1, 0, 0, 0]


def test_oos_is_an_ordinary_optional_label(tmp_path: Path) -> None:
    write(tmp_path / "train.jsonl", GOOD + rows({"oos": 3}))
    assert check(tmp_path).has_oos


def test_missing_folder_and_missing_train_file(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope") == [f"{tmp_path / 'nope'}: no such folder"]
    write(tmp_path / "val.jsonl", GOOD)
    assert problems(tmp_path) == [f"{tmp_path / 'train.jsonl'}: missing (a task's folder needs train.jsonl)"]


def test_a_line_that_is_not_json_names_its_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", [*GOOD, '{"text": "set an alarm", "label": '])
    assert problems(tmp_path) == [f"{path}:7: not JSON (Expecting value at column 35)"]


def test_json_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", [*GOOD, '["set an alarm", "alarm_set"]'])
    assert problems(tmp_path) == [f'{path}:7: not a JSON object with "text" and "label"']


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", GOOD)
    with path.open("ab") as handle:
        handle.write(b'{"text": "caf\xe9", "label": "alarm_set"}\n')
    assert problems(tmp_path) == [f"{path}:7: not UTF-8 (byte 14 of the line)"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"label": "alarm_set"}, 'no "text"'),
        ({"text": "  ", "label": "alarm_set"}, '"text" is empty'),
        ({"text": 42, "label": "alarm_set"}, '"text" is int, not a string'),
        ({"text": "wake me up"}, 'no "label"'),
        ({"text": "wake me up", "label": ""}, '"label" is empty'),
        ({"text": "wake me up", "label": None}, '"label" is NoneType, not a string'),
    ],
)
def test_missing_or_empty_text_or_label(tmp_path: Path, line: dict[str, object], problem: str) -> None:
    path = write(tmp_path / "train.jsonl", [*GOOD, line])
    assert problems(tmp_path) == [f"{path}:7: {problem}"]


def test_every_bad_line_is_listed_at_once_train_and_val(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", ["nope", *GOOD, {"text": ""}])
    val = write(tmp_path / "val.jsonl", [{"label": "alarm_set"}])
    assert problems(tmp_path) == [
        f"{train}:1: not JSON (Expecting value at column 1)",
        f'{train}:8: "text" is empty',
        f'{train}:8: no "label"',
        f'{val}:1: no "text"',
    ]


def test_a_label_with_too_few_examples_names_its_first_line_and_the_setting(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", [*GOOD, *rows({"timer_set": 2})])
    assert problems(tmp_path, min_examples=3) == [
        f"{path}:7: label 'timer_set' has 2 examples, fewer than 3 (build.min_examples_per_label)"
    ]
    write(tmp_path / "train.jsonl", [*GOOD, *rows({"timer_set": 1})])
    assert "'timer_set' has 1 example," in problems(tmp_path, min_examples=3)[0]


def test_one_label_is_not_a_classifier(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", rows({"alarm_set": 5}))
    assert problems(tmp_path) == [f"{path}: one label ('alarm_set'); a classifier needs two or more"]


def test_val_labels_absent_from_train_name_the_first_line_and_count_the_rest(tmp_path: Path) -> None:
    write(tmp_path / "train.jsonl", GOOD)
    val = write(tmp_path / "val.jsonl", [GOOD[0], *rows({"timer_set": 3}), *rows({"oos": 1})])
    assert problems(tmp_path) == [
        f"{val}:2: label 'timer_set' is not in train.jsonl (and 2 more lines)",
        f"{val}:5: label 'oos' is not in train.jsonl",
    ]


def test_the_same_text_with_two_labels_names_both_places(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", [*GOOD, {"text": "Alarm_set  EXAMPLE 0", "label": "music_play"}])
    val = write(tmp_path / "val.jsonl", [{"text": "music_play example 1", "label": "alarm_set"}])
    assert problems(tmp_path) == [
        f"{tmp_path}: 2 texts with conflicting labels, over the 0.00% of 8 rows tolerated "
        "(build.max_conflict_share):",
        f"{train}:7: text 'Alarm_set  EXAMPLE 0' is labelled 'music_play' here and 'alarm_set' at line 1",
        f"{val}:1: text 'music_play example 1' is labelled 'alarm_set' here and 'music_play' at {train}:5",
    ]


def test_a_few_conflicts_under_the_tolerated_share_are_kept_as_warnings(tmp_path: Path) -> None:
    many = rows({"alarm_set": 600, "music_play": 400})
    write(tmp_path / "train.jsonl", [*many, {"text": "alarm_set example 0", "label": "music_play"}])
    task = check(tmp_path, share=0.001)  # 1 conflict in 1,001 rows
    assert len(task.train) == 1001 and len(task.warnings) == 1
    assert "is labelled 'music_play' here and 'alarm_set' at line 1" in task.warnings[0]
    write(tmp_path / "train.jsonl", [*many, *({"text": f"alarm_set example {i}", "label": "music_play"}
                                             for i in range(2))])  # fmt: skip
    assert "2 texts with conflicting labels" in problems(tmp_path, share=0.001)[0]


def test_the_same_text_twice_with_one_label_is_fine(tmp_path: Path) -> None:
    write(tmp_path / "train.jsonl", [*GOOD, GOOD[0]])
    write(tmp_path / "val.jsonl", [GOOD[0]])
    assert len(check(tmp_path).train) == 7


def test_a_file_over_the_size_bound_is_refused_unread(tmp_path: Path) -> None:
    write(tmp_path / "train.jsonl", GOOD)
    val = write(tmp_path / "val.jsonl", [{"text": "x" * 3000, "label": "alarm_set"}] * 400)
    assert problems(tmp_path, max_mb=1.0) == [f"{val}: 1.2 MB, over the 1 MB bound (build.max_data_mb)"]


def test_too_many_problems_are_counted_not_all_printed(tmp_path: Path) -> None:
    write(tmp_path / "train.jsonl", ["nope"] * 25)
    with pytest.raises(DataError) as err:
        check(tmp_path)
    assert len(err.value.problems) == 25
    assert str(err.value).splitlines()[-1] == "... and 5 more"
