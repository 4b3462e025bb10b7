"""Choose the semantic cache's similarity threshold (and margin rule) on the shared paraphrase sets.

Why: a semantic hit serves a stored answer to a different text, so a wrong hit is a wrong answer.
The threshold is set by precision first, hit rate second, on the served model's own embeddings:

- QQP pairs (5,000, 38% duplicates): a hit is ``cos(a, b) >= t``; precision = share of hits labelled
  duplicate. Also "QQP as a cache": every ``text_a`` is stored, each ``text_b`` is looked up; a hit
  is right only if it returns its own pair's ``text_a`` and the pair is a duplicate.
- StackFAQ (60 FAQs x ~10 human rephrasings): the cache holds the 60 canonical questions plus every
  QQP question and CLINC150 val utterance as confusable distractors (>12k entries); each rephrasing
  is looked up and a hit is right if it returns its FAQ. "Absent": the same lookups with the FAQ's
  own entry removed, the common production case of a question nobody asked yet: every hit is wrong.

The rule is the one ``SemanticCache`` applies (``semantic.choose``); the chosen rule is re-run
through a real (local-only) SemanticCache to check that library and benchmark agree.

    python bench/semantic_threshold.py            # writes bench/results/semantic_threshold.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xz_serve.cache.guard import RedisGuard
from xz_serve.cache.semantic import SemanticCache, choose, unit_rows

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
THRESHOLDS = [round(0.60 + 0.01 * i, 2) for i in range(40)]
MARGINS = [0.0, 0.02, 0.05, 0.1]
TARGETS = {"faq_hit_rate": 0.50, "faq_precision": 0.98, "qqp_precision": 0.95}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_for_artifacts(artifacts: Path, poll_s: float = 60, limit_s: float = 25 * 60) -> None:
    """Block until a manifest exists and no ``xz-build`` runs: never embed with half-written files."""
    deadline = time.monotonic() + limit_s
    while True:
        building = subprocess.run(["pgrep", "-f", "xz-build"], capture_output=True).returncode == 0
        if (artifacts / "manifest.json").exists() and not building:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"no finished build in {artifacts} after {limit_s:.0f} s")
        print(f"waiting for the artifacts (build running: {building})", flush=True)
        time.sleep(poll_s)


def embed(texts: list[str], artifacts: Path, quantization: str, cache_dir: Path) -> tuple[np.ndarray, str]:
    """Unit embeddings from the served model, cached on disk by model id and text list.

    The model id is read from the manifest first, so a re-run with cached vectors (e.g. to change
    the report) loads no model at all.
    """
    from xz_serve.artifacts.build import read_manifest
    from xz_serve.models.loading import load_model
    from xz_serve.settings import ModelSpec

    manifest = read_manifest(artifacts)
    if manifest is None:
        raise SystemExit(f"no manifest in {artifacts}")
    model_id = f"{manifest.model_id}@{manifest.revision}:{quantization}"  # as load_model names it
    digest = hashlib.sha256("\x1f".join([model_id, *texts]).encode()).hexdigest()[:12]
    cached = cache_dir / f"xz_semantic_{model_id.replace(':', '_').replace('@', '_')}_{digest}.npy"
    if cached.exists():
        return np.load(cached), model_id
    spec = ModelSpec.model_validate(
        {"artifacts_dir": artifacts, "build_if_missing": False, "quantization": quantization}
    )
    model = load_model(spec)
    assert model.model_id == model_id, (model.model_id, model_id)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
    out = np.zeros((len(texts), 0), dtype=np.float32)
    started = time.perf_counter()
    for lo in range(0, len(order), 64):
        idx = order[lo : lo + 64]
        vectors = model.predict([texts[i] for i in idx]).embeddings
        if out.shape[1] == 0:
            out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        out[idx] = vectors
    print(f"embedded {len(texts)} texts in {time.perf_counter() - started:.1f} s", flush=True)
    out = unit_rows(out)
    np.save(cached, out)
    return out, model_id


def wilson_low(successes: int, n: int, z: float = 1.96) -> float | None:
    """Lower end of the 95% Wilson interval: how low the precision could plausibly be."""
    if n == 0:
        return None
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


_NEGATIONS = frozenset(["not", "no", "never", "nothing", "nobody", "none", "without", "cannot"])
_STOP_WORDS = (
    "a an the is are was were be been do does did i me my we our you your he she it its they them "
    "their what which who this that these those am of to in for on at by with from as about into "
    "can will should could would how why when where there here and or but if so than too very just"
)
_STOP = frozenset(_STOP_WORDS.split())


def lexical_agrees(a: str, b: str) -> bool:
    """Cheap checks a cosine misses: same numbers, same negation, and not the same words reordered.

    Catches QQP's "train no. 19708" vs "19707", "score of 40" vs "45", "Apple better than Samsung"
    vs the reverse. Evaluated here only: SemanticCache does not apply it (the table shows why).
    """
    ta = re.findall(r"[a-z0-9]+", a.lower().replace("n't", " not"))
    tb = re.findall(r"[a-z0-9]+", b.lower().replace("n't", " not"))
    if sorted(re.findall(r"\d+", a)) != sorted(re.findall(r"\d+", b)):
        return False
    if bool(_NEGATIONS.intersection(ta)) != bool(_NEGATIONS.intersection(tb)):
        return False
    ca = [w.removesuffix("s") for w in ta if w not in _STOP]
    cb = [w.removesuffix("s") for w in tb if w not in _STOP]
    return not (sorted(ca) == sorted(cb) and ca != cb)


def decisions(sims: np.ndarray, values: list[bytes], threshold: float, margin: float) -> list[int | None]:
    """Entry served per query row (or None), with the library's own decision rule."""
    out: list[int | None] = []
    for row in sims:
        picked = choose(row, values, threshold, margin)
        out.append(None if picked is None else picked[0])
    return out


def rounded(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def ratio(a: int, b: int) -> float | None:
    """a/b to 4 places; None (null in JSON) when there is nothing to divide by."""
    return round(float(a) / float(b), 4) if b else None  # plain floats: numpy scalars are not JSON


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--quantization", default="int8", choices=["int8", "fp32"])
    parser.add_argument("--out", type=Path, default=RESULTS / "semantic_threshold")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp"))
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a running build")
    args = parser.parse_args()
    if not args.no_wait:
        wait_for_artifacts(args.artifacts)

    qqp = read_jsonl(args.data / "paraphrase" / "qqp_pairs_dev.jsonl")
    faq = read_jsonl(args.data / "paraphrase" / "stackfaq_dev.jsonl")
    clinc = [r["text"] for r in read_jsonl(args.data / "intent_clinc150" / "val.jsonl")]
    canon = [f["question"] for f in faq]
    queries = [(q, i) for i, f in enumerate(faq) for q in f["rephrasings"]]
    qqp_texts = list(dict.fromkeys([r["text_a"] for r in qqp] + [r["text_b"] for r in qqp]))
    distractors = list(dict.fromkeys(t for t in qqp_texts + clinc if t not in set(canon)))
    texts = list(dict.fromkeys(canon + [q for q, _ in queries] + qqp_texts + clinc))
    index = {t: i for i, t in enumerate(texts)}
    vectors, model_id = embed(texts, args.artifacts, args.quantization, args.cache_dir)

    def vec(items: list[str]) -> np.ndarray:
        return vectors[[index[t] for t in items]]

    # QQP pairwise
    pair_sims = np.einsum("ij,ij->i", vec([r["text_a"] for r in qqp]), vec([r["text_b"] for r in qqp]))
    labels = np.array([r["label"] for r in qqp])
    # QQP as a cache: all distinct text_a stored, text_b looked up
    a_texts = list(dict.fromkeys(r["text_a"] for r in qqp))
    a_sims = vec([r["text_b"] for r in qqp]) @ vec(a_texts).T
    a_values = [t.encode() for t in a_texts]
    # StackFAQ: canonical questions + distractors
    entries = canon + distractors
    entry_values = [f"faq{i}".encode() for i in range(len(canon))] + [
        f"d{i}".encode() for i in range(len(distractors))
    ]
    q_vecs = vec([q for q, _ in queries])
    faq_sims = q_vecs @ vec(entries).T
    truth = np.array([i for _, i in queries])
    absent_sims = faq_sims.copy()
    absent_sims[np.arange(len(queries)), truth] = -np.inf  # each query's own FAQ not cached

    lexical_memo: dict[tuple[str, str], bool] = {}

    def lexical(a: str, b: str) -> bool:
        if (a, b) not in lexical_memo:
            lexical_memo[a, b] = lexical_agrees(a, b)
        return lexical_memo[a, b]

    pair_lexical = np.array([lexical(r["text_a"], r["text_b"]) for r in qqp])
    query_texts = [q for q, _ in queries]
    qqp_b = [r["text_b"] for r in qqp]

    def checked(picks: list[int | None], queries_: list[str], entries_: list[str]) -> list[int | None]:
        return [
            p if p is None or lexical(q, entries_[p]) else None for p, q in zip(picks, queries_, strict=True)
        ]

    grid: list[dict[str, Any]] = []
    for verify in ("none", "lexical"):
        for margin in MARGINS:
            for t in THRESHOLDS:
                hits = pair_sims >= t
                if verify == "lexical":
                    hits &= pair_lexical
                n_hits, n_dup = int(hits.sum()), int((hits & (labels == 1)).sum())
                faq_pick = decisions(faq_sims, entry_values, t, margin)
                absent_pick = decisions(absent_sims, entry_values, t, margin)
                cache_pick = decisions(a_sims, a_values, t, margin)
                if verify == "lexical":
                    faq_pick = checked(faq_pick, query_texts, entries)
                    absent_pick = checked(absent_pick, query_texts, entries)
                    cache_pick = checked(cache_pick, qqp_b, a_texts)
                faq_hits = sum(p is not None for p in faq_pick)
                faq_right = sum(p is not None and p == q for p, q in zip(faq_pick, truth, strict=True))
                absent_hits = sum(p is not None for p in absent_pick)
                cache_hits = sum(p is not None for p in cache_pick)
                cache_right = sum(
                    p is not None and a_texts[p] == r["text_a"] and r["label"] == 1
                    for p, r in zip(cache_pick, qqp, strict=True)
                )
                grid.append(
                    {
                        "threshold": t,
                        "margin": margin,
                        "verify": verify,
                        "qqp_hit_rate": ratio(n_hits, len(qqp)),
                        "qqp_precision": ratio(n_dup, n_hits),
                        "qqp_precision_low95": rounded(wilson_low(n_dup, n_hits)),
                        "qqp_dup_recall": ratio(n_dup, int(labels.sum())),
                        "qqp_cache_hit_rate": ratio(cache_hits, len(qqp)),
                        "qqp_cache_precision": ratio(cache_right, cache_hits),
                        "faq_hit_rate": ratio(faq_hits, len(queries)),
                        "faq_precision": ratio(faq_right, faq_hits),
                        "faq_precision_low95": rounded(wilson_low(faq_right, faq_hits)),
                        "faq_absent_false_hit_rate": ratio(absent_hits, len(queries)),
                        "faq_mixed_precision": ratio(faq_right, faq_hits + absent_hits),
                    }
                )
    meta = {
        "model_id": model_id,
        "quantization": args.quantization,
        "faq_entries": len(entries),
        "faq_canonical": len(canon),
        "faq_distractors": len(distractors),
        "faq_queries": len(queries),
        "qqp_pairs": len(qqp),
    }
    meta["notes"] = findings(grid)
    chosen = write_results(args.out, grid, meta)
    if chosen is not None:
        meta["library_check"] = asyncio.run(library_agrees(chosen, entries, entry_values, vec, queries))
        write_results(args.out, grid, meta)
    print(json.dumps({"chosen": chosen, **meta}), flush=True)


def findings(grid: list[dict[str, Any]]) -> list[str]:
    """What the grid says, in sentences computed from it (so they stay true when the model changes)."""
    notes = ["## Findings", ""]
    for verify in ("none", "lexical"):
        rows = [r for r in grid if r["verify"] == verify and r["qqp_precision"] is not None]
        top = max(rows, key=lambda r: r["qqp_precision"])
        faq_ok = [r for r in rows if r["faq_hit_rate"] >= TARGETS["faq_hit_rate"]]
        best_qqp_usable = max((r["qqp_precision"] for r in faq_ok), default=None)
        notes.append(
            f"- verify={verify}: the highest QQP precision anywhere is {top['qqp_precision']} "
            f"(t={top['threshold']}, QQP hit rate {top['qqp_hit_rate']}, StackFAQ hit rate "
            f"{top['faq_hit_rate']}); wherever StackFAQ hit rate >= {TARGETS['faq_hit_rate']}, QQP "
            f"precision is at most {best_qqp_usable}."
        )
    notes += [
        "- QQP's high-similarity non-duplicates are partly label noise (\"How do I overcome my inferiority "
        'complex ?" vs the same without the space; "What is the song playing in this video?" vs "What '
        'song is playing in this video?") and partly one-detail differences (train 19708 vs 19707, '
        '"Apple better than Samsung" vs the reverse). No cosine threshold separates those from the '
        "reworded StackFAQ rephrasings, which sit at 0.7-0.9.",
        "- The margin rule (best entry must beat the best entry with another value) lowers StackFAQ's "
        "false hits, mostly in the absent case, at a small cost in hits; it cannot change pairwise QQP.",
        "- StackFAQ 50/50 precision: right hits / (hits with the FAQ cached + false hits with it absent), "
        "i.e. precision when half the lookups have their answer in the cache.",
    ]
    return notes


async def library_agrees(
    chosen: dict[str, Any],
    entries: list[str],
    values: list[bytes],
    vec: Callable[[list[str]], np.ndarray],
    queries: list[tuple[str, int]],
) -> dict[str, Any]:
    """Replay the chosen rule through a real (local-only) SemanticCache: same hits as the sweep?"""
    cache = SemanticCache(
        RedisGuard(None), threshold=chosen["threshold"], margin=chosen["margin"], max_entries=len(entries)
    )
    for text, value in zip(entries, values, strict=True):
        await cache.store("bench", vec([text])[0], value, key=text)
    hits = await cache.lookup_many("bench", vec([q for q, _ in queries]))
    right = sum(
        h is not None and h.value == f"faq{i}".encode() for h, (_, i) in zip(hits, queries, strict=True)
    )
    n_hits = sum(h is not None for h in hits)
    return {
        "faq_hit_rate": ratio(n_hits, len(queries)),
        "faq_precision": ratio(right, n_hits),
        "agrees": ratio(n_hits, len(queries)) == chosen["faq_hit_rate"]
        and ratio(right, n_hits) == chosen["faq_precision"],
    }


def meets(row: dict[str, Any], targets: dict[str, float]) -> bool:
    """Every target in ``targets``, on the point estimates."""
    return all(row[k] is not None and row[k] >= v for k, v in targets.items())


def pick(grid: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, bool]:
    """The rule to ship, and whether it meets every target.

    If some cells meet every target: the most StackFAQ hits, then the fewest absent-FAQ false hits,
    then the higher threshold. If none does (QQP's precision tops out near 0.91 even for near-identical
    texts; its labels are noisy), keep the StackFAQ targets, which are the cache's reason to exist,
    and among those cells take the highest QQP precision, then the fewest absent false hits: the
    safest setting that still serves half of the rephrasings.
    """
    grid = [r for r in grid if r["verify"] == "none"]  # the rules SemanticCache implements
    full = [r for r in grid if meets(r, TARGETS)]
    if full:
        best = max(full, key=lambda r: (r["faq_hit_rate"], -r["faq_absent_false_hit_rate"], r["threshold"]))
        return best, True
    faq_targets = {k: v for k, v in TARGETS.items() if k.startswith("faq")}
    usable = [r for r in grid if meets(r, faq_targets)]
    if not usable:
        return None, False
    best = max(
        usable, key=lambda r: (r["qqp_precision"], -r["faq_absent_false_hit_rate"], r["faq_precision"])
    )
    return best, False


COLUMNS = [
    ("threshold", "t"), ("margin", "margin"), ("qqp_hit_rate", "QQP hit rate"),
    ("qqp_precision", "QQP precision"), ("qqp_cache_precision", "QQP-as-cache precision"),
    ("faq_hit_rate", "StackFAQ hit rate"), ("faq_precision", "StackFAQ precision"),
    ("faq_precision_low95", "StackFAQ precision, 95% low"),
    ("faq_absent_false_hit_rate", "StackFAQ absent: false-hit rate"),
    ("faq_mixed_precision", "StackFAQ 50/50 precision"),
]  # fmt: skip


def table(rows: list[dict[str, Any]], chosen: dict[str, Any] | None) -> list[str]:
    lines = ["| " + " | ".join(c[1] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        mark = "**" if row is chosen else ""
        lines.append("| " + " | ".join(f"{mark}{row[k]}{mark}" for k, _ in COLUMNS) + " |")
    return lines


def write_results(out: Path, grid: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any] | None:
    """JSON with every cell, and Markdown tables around the chosen rule."""
    chosen, met_all = pick(grid)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {**meta, "targets": TARGETS, "chosen": chosen, "meets_all_targets": met_all, "grid": grid}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    margin = chosen["margin"] if chosen else 0.0
    lines = [
        "# Semantic cache threshold",
        "",
        f"Model `{meta['model_id']}`. StackFAQ: {meta['faq_entries']} cache entries "
        f"({meta['faq_canonical']} canonical questions + {meta['faq_distractors']} distractors: every QQP "
        f"question and CLINC150 val utterance), {meta['faq_queries']} rephrasings looked up. QQP: "
        f"{meta['qqp_pairs']} pairs. Made by `bench/semantic_threshold.py` (definitions in its docstring).",
        "",
        f"Targets: StackFAQ hit rate >= {TARGETS['faq_hit_rate']} at precision >= "
        f"{TARGETS['faq_precision']}; QQP precision >= {TARGETS['qqp_precision']}.",
        "",
    ]
    if chosen:
        verdict = "meets every target" if met_all else "meets the StackFAQ targets only; no cell meets QQP's"
        lines += [
            f"**Chosen: threshold {chosen['threshold']}, margin {chosen['margin']}** ({verdict}): StackFAQ "
            f"hit rate {chosen['faq_hit_rate']} at precision {chosen['faq_precision']}, absent-FAQ false-hit "
            f"rate {chosen['faq_absent_false_hit_rate']}; QQP precision {chosen['qqp_precision']}.",
            "",
        ]
    else:
        lines += ["**No cell meets the StackFAQ targets on this model.**", ""]
    plain = [r for r in grid if r["verify"] == "none"]
    lines += [f"## Thresholds at margin {margin}", ""]
    lines += table([r for r in plain if r["margin"] == margin], chosen)
    if chosen:
        lines += ["", f"## Margins at threshold {chosen['threshold']}", ""]
        lines += table([r for r in plain if r["threshold"] == chosen["threshold"]], chosen)
    lines += ["", f"## With the lexical check too (numbers, negation, word order), margin {margin}", ""]
    lines += table([r for r in grid if r["verify"] == "lexical" and r["margin"] == margin], chosen)
    lines += ["", *meta.get("notes", [])]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return chosen


if __name__ == "__main__":
    main()
