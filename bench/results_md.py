"""The generated bench/results/<name>.md: a dated header, the generated body, a link to the notes.

A generator rewrites its whole .md on every run, so it writes the header itself (``Measured:`` with
the day of the run, and the command that reproduces it), and nothing hand-written lives in the
generated file: notes go in ``<name>.notes.md`` beside it, which no generator writes; the header
links it when it exists.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def command_line(base: str, argv: list[str] | None = None) -> str:
    """``base`` (how the script is started) with this run's arguments (``sys.argv[1:]`` by default)."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join([*shlex.split(base), *args])


def notes_path(md: Path) -> Path:
    """``<name>.notes.md`` beside ``<name>.md``: the hand-written notes no generator overwrites."""
    return md.with_name(f"{md.stem}.notes.md")


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def header(md: Path, command: str, extra: str = "") -> list[str]:
    """The first lines of ``md``: today's date, the reproducing command, and the notes link."""
    lines = [
        f"Measured: {time.strftime('%Y-%m-%d')}",
        "",
        f"Reproduce: `{command}` (writes `{_shown(md.with_suffix(''))}.{{json,md}}`{extra}).",
        "",
    ]
    notes = notes_path(md)
    if notes.exists():
        link = os.path.relpath(notes, md.parent)
        lines += [f"Notes (hand-written, kept across runs): [{notes.name}]({link}).", ""]
    return lines


def write_markdown(md: Path, body: str, command: str, extra: str = "") -> str:
    """Write ``md`` as the header followed by ``body``; returns the whole text."""
    text = "\n".join(header(md, command, extra)) + "\n" + body.rstrip("\n") + "\n"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text, encoding="utf-8")
    return text
