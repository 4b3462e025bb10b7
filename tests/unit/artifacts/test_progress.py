"""progress(): a tqdm bar on a terminal; in a log (not a TTY), a few plain lines and no "\\r"."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from tqdm import tqdm

from xz_serve.artifacts import progress as progress_module
from xz_serve.artifacts.progress import LineProgress, progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module, "clock", fake)
    return fake


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_tenth_and_no_carriage_returns(clock: Clock) -> None:
    log = io.StringIO()
    bar = progress(range(1000), "encode intent train", file=log, unit="batch", leave=False)
    assert isinstance(bar, LineProgress)
    assert list(bar) == list(range(1000))
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10  # 10%, 20%, ... 90%, then the closing line
    assert lines[0] == "encode intent train: 100/1000 batch (10%), 0 s"
    assert lines[-1] == "encode intent train: done, 1000/1000 batch, 0 s"


def test_a_slow_loop_also_reports_every_interval(clock: Clock) -> None:
    log = io.StringIO()

    def slow() -> Iterator[int]:  # no len(): only the clock triggers lines
        for i in range(12):
            clock.now += 10
            yield i

    for _ in progress(slow(), "train", file=log, interval_s=30):
        pass
    assert log.getvalue().splitlines() == [
        "train: 3 it, 30 s", "train: 6 it, 60 s", "train: 9 it, 90 s", "train: 12 it, 120 s",
        "train: done, 12 it, 120 s",
    ]  # fmt: skip


def test_few_items_write_at_most_one_line_each(clock: Clock) -> None:
    log = io.StringIO()
    list(progress(["a", "b", "c"], "tiny", file=log))
    assert log.getvalue().splitlines() == [
        "tiny: 1/3 it (33%), 0 s", "tiny: 2/3 it (67%), 0 s", "tiny: done, 3/3 it, 0 s"
    ]  # fmt: skip


def test_set_postfix_rides_on_the_next_line_and_writes_nothing_itself(clock: Clock) -> None:
    log = io.StringIO()
    bar = progress(range(20), "epoch 1/3", file=log, unit="step")
    for i in bar:
        if i == 0:
            bar.set_postfix(loss="1.234")
            assert log.getvalue() == ""
    assert log.getvalue().splitlines()[0] == "epoch 1/3: 2/20 step (10%), 0 s, loss=1.234"


def test_a_loop_left_early_says_where_it_stopped(clock: Clock) -> None:
    log = io.StringIO()
    for i in progress(range(100), "eval", file=log):
        if i == 4:
            break
    assert log.getvalue().splitlines()[-1] == "eval: stopped, 4/100 it, 0 s"  # items finished, as tqdm counts


def test_a_terminal_gets_a_real_tqdm_bar() -> None:
    screen = Terminal()
    bar = progress(range(5), "encode", file=screen, unit="batch")
    assert isinstance(bar, tqdm)
    assert list(bar) == list(range(5))
    assert "encode" in screen.getvalue()
