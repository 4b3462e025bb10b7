"""Which inference runtime serves the model here: the plan, the choice rule and its record.

``model.runtime: auto`` decides by measurement on the machine that serves, because the answer
depends on the CPU: on one with AMX, OpenVINO bf16 on the FP32 graph did 1.6x ONNX Runtime INT8's
texts/s at batch 32 but took twice as long for one text; on an AVX2-only CPU OpenVINO has no bf16
and ORT INT8 is the one to run. The trial (models/trial.py) times each candidate and checks its
accuracy against the FP32 graph under ORT; ``choose`` picks from those numbers alone, and the
result is recorded in ``runtime.json`` beside the artifacts, keyed by the CPU, the build revision,
the thread count and the library versions, so another machine (or another build) measures again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import platform
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

RUNTIME_FILE = "runtime.json"
LOCK_FILE = ".runtime.lock"
MAX_ACCURACY_DELTA = 0.003  # 0.3 points of intent accuracy, either way, against ORT FP32
LATENCY_SLACK = 1.25  # a candidate may be this much slower at batch 1 than the fastest one

Engine = Literal["onnxruntime", "openvino", "hybrid"]


@dataclass(frozen=True)
class Plan:
    """What to load: ``engine`` over the ``precision`` variant; a hybrid runs ORT INT8 for batches
    of at most ``cut`` texts and OpenVINO bf16 above."""

    engine: Engine
    precision: str  # int8 | fp32 (ORT); bf16 | fp32 (OpenVINO); int8+bf16 (hybrid)
    cut: int = 0
    reason: str = ""

    def tag(self) -> str:
        """The model id's suffix after ``@revision:``. ONNX Runtime keeps the bare precision
        (``int8``, ``fp32``): it is the reference runtime the build reports on, and its cache keys
        and ids stay what they were; every other runtime names itself."""
        if self.engine == "onnxruntime":
            return self.precision
        if self.engine == "openvino":
            return f"{self.precision}-openvino"
        return "int8-onnxruntime+bf16-openvino"


@dataclass(frozen=True)
class Trial:
    """One candidate as measured: speed at batch 1 and at the full batch, and its accuracy."""

    name: str
    batch1_ms: float
    full_batch: int
    full_texts_per_s: float
    intent_accuracy: float
    sentiment_accuracy: float
    intent_agreement: float  # share of intent argmaxes equal to ORT FP32's
    batch_ms: dict[int, float] = field(default_factory=dict)  # median pass time by batch size
    cut: int = 0  # hybrids only


@dataclass(frozen=True)
class Verdict:
    """The choice and why, with every trial and whether it passed the accuracy guard."""

    choice: str
    reason: str
    reference_intent_accuracy: float
    trials: list[Trial]
    refused: dict[str, str]


def guard(trial: Trial, reference_accuracy: float, max_delta: float = MAX_ACCURACY_DELTA) -> str | None:
    """Why ``trial`` is refused (None: it passes): intent accuracy off ORT FP32's by more than
    ``max_delta``. Both directions count: the guard asks for the same model, not a lucky one."""
    delta = trial.intent_accuracy - reference_accuracy
    if abs(delta) > max_delta + 1e-12:
        return f"intent accuracy {trial.intent_accuracy:.4f} is {delta * 100:+.2f} points off FP32's"
    return None


def hybrid_cut(small: dict[int, float], large: dict[int, float]) -> int:
    """The largest batch size up to which ``small`` was faster at every measured size (0: never).

    Sizes are those both were timed at; the cut stops at the first size where ``large`` wins, so
    a noisy win of ``small`` at a big size does not send mid-sized batches its way."""
    cut = 0
    for size in sorted(small.keys() & large.keys()):
        if small[size] > large[size]:
            break
        cut = size
    return cut


def hybrid_trial(small: Trial, large: Trial) -> Trial | None:
    """The hybrid of two measured candidates, or None when one of them wins at every size.

    Its speed is ``small``'s up to the cut and ``large``'s above it, exactly what HybridNluModel
    runs; its accuracy is that of whichever part is further from the reference's, so it passes
    the guard only when both parts do (the detector and the cache see both)."""
    cut = hybrid_cut(small.batch_ms, large.batch_ms)
    if cut == 0 or cut >= max(large.batch_ms, default=0):
        return None
    batch_ms = {s: small.batch_ms[s] if s <= cut else large.batch_ms[s] for s in small.batch_ms}
    worst = min((small, large), key=lambda t: t.intent_accuracy)
    return Trial(
        name="hybrid",
        batch1_ms=small.batch1_ms,
        full_batch=large.full_batch,
        full_texts_per_s=large.full_texts_per_s,
        intent_accuracy=worst.intent_accuracy,
        sentiment_accuracy=min(small.sentiment_accuracy, large.sentiment_accuracy),
        intent_agreement=min(small.intent_agreement, large.intent_agreement),
        batch_ms=batch_ms,
        cut=cut,
    )


def choose(
    trials: list[Trial],
    reference_accuracy: float,
    fallback: str,
    max_delta: float = MAX_ACCURACY_DELTA,
    latency_slack: float = LATENCY_SLACK,
) -> Verdict:
    """The fastest candidate at the full batch among those that pass the guard and answer one
    text within ``latency_slack`` of the quickest passing one; ``fallback`` when none passes.

    Why throughput first: under load a replica runs full batches, and that bounds its req/s; the
    slack keeps a candidate that would double the latency of a quiet replica out of the running.
    """
    refused = {t.name: why for t in trials if (why := guard(t, reference_accuracy, max_delta))}
    passing = [t for t in trials if t.name not in refused]
    if not passing:
        reason = f"no candidate passed the accuracy guard; serving {fallback}"
        return Verdict(fallback, reason, reference_accuracy, trials, refused)
    quickest = min(t.batch1_ms for t in passing)
    eligible = [t for t in passing if t.batch1_ms <= quickest * latency_slack]
    best = max(eligible, key=lambda t: (t.full_texts_per_s, -t.batch1_ms))
    reason = (
        f"{best.name}: {best.full_texts_per_s:.0f} texts/s at batch {best.full_batch}, "
        f"{best.batch1_ms:.2f} ms at batch 1 (quickest passing: {quickest:.2f} ms)"
    )
    return Verdict(best.name, reason, reference_accuracy, trials, refused)


# ----------------------------------------------------------------------------- the record


def cpu_fingerprint(cpuinfo: str | None = None) -> dict[str, str]:
    """The CPU as /proc/cpuinfo names it: model name and the sorted flags of the first processor
    (the flags are what decide bf16, AMX and VNNI kernels). Elsewhere: platform's description."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key in ("model name", "flags", "Features") and key not in fields:
            fields[key] = value.strip()
    flags = fields.get("flags") or fields.get("Features") or ""
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "flags": " ".join(sorted(set(flags.split()))),
        "machine": platform.machine(),
    }


def record_key(cpu: dict[str, str], context: dict[str, Any]) -> str:
    """A short hash of the CPU and everything else the timings depend on (revision, threads,
    library versions, precision): a change of any of them means measuring again."""
    blob = json.dumps({"cpu": cpu, **context}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_record(artifacts_dir: Path, key: str) -> dict[str, Any] | None:
    """The recorded choice for ``key``, or None when there is none (or the file is unreadable)."""
    path = artifacts_dir / RUNTIME_FILE
    try:
        entries = json.loads(path.read_text(encoding="utf-8")).get("entries", {})
    except (OSError, ValueError, AttributeError):
        return None
    entry = entries.get(key)
    return entry if isinstance(entry, dict) and "choice" in entry else None


def write_record(artifacts_dir: Path, key: str, entry: dict[str, Any]) -> bool:
    """Add ``entry`` under ``key``, keeping other machines' entries; False when the directory is
    read-only (a baked image): the choice then holds for this process only."""
    path = artifacts_dir / RUNTIME_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError:
        data = {}
    entries = data.get("entries") if isinstance(data.get("entries"), dict) else {}
    entries[key] = entry
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps({"entries": entries}, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as err:
        log.warning("could not record the runtime choice in %s: %s", path, err)
        return False
    return True


def verdict_entry(verdict: Verdict, cpu: dict[str, str], context: dict[str, Any]) -> dict[str, Any]:
    """The JSON a record keeps for one key: the CPU, the context, the choice and every trial."""
    return {
        "cpu": cpu,
        **context,
        "choice": verdict.choice,
        "reason": verdict.reason,
        "reference_intent_accuracy": verdict.reference_intent_accuracy,
        "trials": [asdict(t) for t in verdict.trials],
        "refused": verdict.refused,
    }


@contextlib.contextmanager
def trial_lock(artifacts_dir: Path) -> Iterator[None]:
    """Replicas starting together measure once: the first holds the lock, the rest then read its
    record. A read-only directory gets no lock (and no record): each process measures alone."""
    try:
        handle = (artifacts_dir / LOCK_FILE).open("w")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
