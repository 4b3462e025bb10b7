"""Progress for the build: a tqdm bar on a terminal, a few plain lines in a log.

A tqdm bar redraws itself with carriage returns; in a CI log or a container's captured stderr
those updates pile up into one unreadable line. When the stream is not a terminal, ``progress``
writes one ordinary line at each further tenth of the work and at least every ``interval_s`` while
it runs, then one line when it ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, Generic, TypeVar

from tqdm import tqdm

T = TypeVar("T")

clock = time.monotonic  # module attribute, so tests can drive the time


class LineProgress(Generic[T]):
    """Iterates ``iterable``, logging ``desc: n/total unit (pct), elapsed`` lines; never a ``\\r``.

    A line is written when the count passes the next tenth of ``total`` or ``interval_s`` after the
    previous line (the only trigger when the total is unknown), and a last one at the end.
    ``set_postfix`` values (a running loss) ride along on the next line; they write nothing.
    """

    def __init__(
        self, iterable: Iterable[T], desc: str, total: int | None, file: IO[str], interval_s: float, unit: str
    ) -> None:
        self.iterable = iterable
        self.desc = desc
        self.total = total
        self.file = file
        self.interval_s = interval_s
        self.unit = unit
        self.n = 0
        self.postfix = ""

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _line(self, text: str, elapsed: float) -> None:
        extra = f", {self.postfix}" if self.postfix else ""
        self.file.write(f"{self.desc}: {text}, {elapsed:.0f} s{extra}\n")
        self.file.flush()

    def __iter__(self) -> Iterator[T]:
        start = last = clock()
        total = self.total
        step = total / 10 if total else None
        next_mark = step
        finished = False
        try:
            for item in self.iterable:
                yield item
                self.n += 1
                now = clock()
                if total and self.n >= total:
                    continue  # the closing line reports it
                passed_mark = next_mark is not None and self.n >= next_mark
                if passed_mark or now - last >= self.interval_s:
                    if total:
                        self._line(f"{self.n}/{total} {self.unit} ({self.n / total:.0%})", now - start)
                    else:
                        self._line(f"{self.n} {self.unit}", now - start)
                    last = now
                    while step is not None and next_mark is not None and self.n >= next_mark:
                        next_mark += step
            finished = True
        finally:
            counted = f"{self.n}/{total}" if total else str(self.n)
            state = "done" if finished else "stopped"
            self._line(f"{state}, {counted} {self.unit}", clock() - start)


def progress(
    iterable: Iterable[T],
    desc: str,
    total: int | None = None,
    *,
    file: IO[str] | None = None,
    interval_s: float = 30.0,
    **kw: Any,
) -> tqdm[T] | LineProgress[T]:
    """``tqdm(iterable, desc=desc, total=total, **kw)`` when ``file`` (default stderr) is a
    terminal; otherwise a :class:`LineProgress` writing a line per tenth or per ``interval_s``.

    Both iterate ``iterable`` and take ``set_postfix``; tqdm-only keywords (``leave``, ...) are
    ignored by the plain variant, except ``unit``.
    """
    stream = sys.stderr if file is None else file
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(iterable, desc=desc, total=total, file=stream, **kw)
    return LineProgress(iterable, desc, total, stream, interval_s, kw.get("unit", "it"))
