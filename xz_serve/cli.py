"""Command-line entry points that need the composed settings: ``xz-build`` and ``xz-config-doc``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_main(argv: list[str] | None = None) -> None:
    """``xz-build [--force] [--intent-data DIR] [--sentiment-data DIR] [--artifacts-dir DIR]
    [--data-dir DIR]``: check the data, train, export, quantize, calibrate, report, and choose the
    inference runtime for this machine.

    A data folder holds train.jsonl and optionally val.jsonl, one {"text", "label"} a line. Reruns
    only when an input changed; ``XZ_MODEL__*`` variables apply as they do for the service. Bad
    data stops the build before training, with exit status 2 and one ``file:line: problem`` a line.
    """
    from xz_serve.artifacts.build import build_and_report
    from xz_serve.artifacts.data import DataError
    from xz_serve.settings import XzSettings

    parser = argparse.ArgumentParser(prog="xz-build", description=build_main.__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if inputs are unchanged")
    parser.add_argument("--intent-data", type=Path, help="the intent set's folder (model.intent_data)")
    parser.add_argument(
        "--sentiment-data", type=Path, help="the sentiment set's folder (model.sentiment_data)"
    )
    parser.add_argument("--artifacts-dir", type=Path, help="where the artifacts go (model.artifacts_dir)")
    parser.add_argument("--data-dir", type=Path, help="the shared data folder (model.data_dir)")
    args = parser.parse_args(argv)
    spec = XzSettings().model
    updates = {
        "artifacts_dir": args.artifacts_dir,
        "data_dir": args.data_dir,
        "intent_data": args.intent_data,
        "sentiment_data": args.sentiment_data,
    }
    spec = spec.model_copy(update={k: v for k, v in updates.items() if v})
    try:
        build_and_report(spec, force=args.force)
    except DataError as err:
        print(f"xz-build: the training data has problems; nothing was trained:\n{err}", file=sys.stderr)
        raise SystemExit(2) from None
    # The runtime is chosen on the machine that serves, by measurement (models/loading.py); doing it
    # here too puts the trial in the build's output and leaves its record for the replicas. It is
    # kept apart from the build so that a new CPU or thread count never invalidates the model.
    from xz_serve.models.loading import choose_runtime, format_entry

    plan, entry = choose_runtime(spec)
    if entry is not None:
        print(format_entry(entry))
    print(f"runtime: {plan.tag()} ({plan.reason})")


def config_doc_main(argv: list[str] | None = None) -> None:
    """``xz-config-doc [--check] [PATH]``: write (or check) the configuration reference."""
    from xz_serve.config_doc import render

    parser = argparse.ArgumentParser(prog="xz-config-doc", description=config_doc_main.__doc__)
    parser.add_argument("path", nargs="?", type=Path, default=Path("docs/configuration.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if PATH differs from the settings")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.path.read_text(encoding="utf-8") if args.path.exists() else ""
        if current != text:
            print(f"{args.path} is out of date: run `xz-config-doc`", file=sys.stderr)
            raise SystemExit(1)
        return
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text, encoding="utf-8")
    print(f"wrote {args.path}")
