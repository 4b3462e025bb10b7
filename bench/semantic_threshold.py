"""Choose the semantic cache's threshold and verifier, and fit the verifier, on the paraphrase sets.

Why: a semantic hit serves a stored answer to a different text, so a wrong hit is a wrong answer.
Cosine alone tops out near 0.92 precision on QQP, so a candidate must also pass the pair verifier
(xz_serve/cache/verify.py: vetoes, then a logistic regression over lexical statistics + cosine).
Everything runs on the served model's own embeddings:

- QQP pairs (5,000, 38% duplicates): a hit is ``cos(a, b) >= t`` and the verifier accepts; precision
  = share of hits labelled duplicate. The verifier's regression is fitted on QQP, so every QQP
  figure uses **held-out** probabilities: 5-fold cross-validation (stratified, seed 0), each pair
  scored by the model fitted on the other four folds. "QQP as a cache": every ``text_a`` stored,
  each ``text_b`` looked up (its candidates scored by its own pair's held-out model); a hit is right
  only if it returns its own pair's ``text_a`` and the pair is a duplicate.
- StackFAQ (60 FAQs x ~10 human rephrasings): the cache holds the 60 canonical questions plus every
  QQP question and CLINC150 val utterance as confusable distractors (>12k entries); each rephrasing
  is looked up and a hit is right if it returns its FAQ. "Absent": the same lookups with the FAQ's
  own entry removed (a question nobody asked yet): every hit is wrong. Scored by the shipped
  verifier (fitted on all of QQP; StackFAQ plays no part in the fit).

The decision rule is ``semantic.choose`` evaluated over each query's 8 nearest entries (vectorised):
the nearest entry must reach the threshold and pass the verifier, and no entry within the margin
may hold another answer unless a veto marks it as a different question from the query;
the chosen cell is replayed through a real (local-only) SemanticCache to check that they agree.

    python bench/semantic_threshold.py   # writes bench/results/semantic_threshold.{json,md} and prints
                                         # the verifier's coefficients to paste into verify.py if they moved
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

# bench/ is sys.path[0] when run as a script
from results_md import command_line
from semantic_fit import L2, auc, fit_logistic, predict, stratified_folds
from semantic_report import FOLDS, pick, write_results

from xz_serve.cache import verify
from xz_serve.cache.semantic import SemanticCache, unit_rows
from xz_serve.cache.verify import PairVerifier, feature_matrix
from xz_serve.kernel.redis import RedisGuard

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
THRESHOLDS = [round(0.60 + 0.01 * i, 2) for i in range(40)]
MARGINS = [0.0, 0.05, 0.1]
MIN_PROBABILITIES = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9]
FIT_MIN_COSINE = 0.6  # the verifier only ever sees candidates above the threshold: fit that region
TOP = 8  # candidates per query, as semantic._CANDIDATES


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
    from xz_serve.models.loading import load_onnx_model
    from xz_serve.models.manifest import read_manifest
    from xz_serve.settings import ModelSpec

    manifest = read_manifest(artifacts)
    if manifest is None:
        raise SystemExit(f"no manifest in {artifacts}")
    model_id = f"{manifest.model_id}@{manifest.revision}:{quantization}"  # as load_onnx_model names it
    digest = hashlib.sha256("\x1f".join([model_id, *texts]).encode()).hexdigest()[:12]
    cached = cache_dir / f"xz_semantic_{model_id.replace(':', '_').replace('@', '_')}_{digest}.npy"
    if cached.exists():
        return np.load(cached), model_id
    spec = ModelSpec.model_validate(
        {"artifacts_dir": artifacts, "build_if_missing": False, "quantization": quantization}
    )
    model = load_onnx_model(spec)
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


def ratio(a: int, b: int) -> float | None:
    """a/b to 4 places; None (null in JSON) when there is nothing to divide by."""
    return round(float(a) / float(b), 4) if b else None  # plain floats: numpy scalars are not JSON


def vetoed(pairs: list[tuple[str, str]]) -> np.ndarray:
    return np.array([verify.veto(a, b) is not None for a, b in pairs], dtype=bool)


class Candidates:
    """Each query's ``TOP`` nearest entries with what the decision rule needs about them."""

    def __init__(
        self,
        sims: np.ndarray,
        query_texts: list[str],
        entry_texts: list[str],
        value_ids: np.ndarray,
        models: list[PairVerifier],
        model_of_query: np.ndarray,
    ) -> None:
        rows = np.arange(len(sims))[:, None]
        top = np.argpartition(-sims, TOP - 1, axis=1)[:, :TOP]
        order = np.argsort(-sims[rows, top], axis=1)
        self.index = top[rows, order]
        self.sims = sims[rows, self.index]
        self.values = value_ids[self.index]
        pairs = [(query_texts[q], entry_texts[e]) for q in range(len(sims)) for e in self.index[q]]
        self.veto = vetoed(pairs).reshape(self.index.shape)
        feats = feature_matrix(pairs, self.sims.ravel().tolist())
        probs = np.zeros(len(pairs))
        owner = np.repeat(model_of_query, TOP)
        for m, model in enumerate(models):
            mask = owner == m
            probs[mask] = predict(model, feats[mask])
        self.prob = probs.reshape(self.index.shape)

    def accepted(self, mode: str, min_probability: float) -> np.ndarray:
        """Which candidates the verifier of ``mode`` accepts."""
        if mode == "cosine":
            return np.ones(self.sims.shape, dtype=bool)
        if mode == "vetoes":
            return ~self.veto
        return ~self.veto & (self.prob >= min_probability)

    def rivals(self, mode: str) -> np.ndarray:
        """Which candidates count against the margin: all but those a veto marks as another question."""
        return np.ones(self.sims.shape, dtype=bool) if mode == "cosine" else ~self.veto

    def served(self, accepted: np.ndarray, rivals: np.ndarray, threshold: float, margin: float) -> np.ndarray:
        """Entry index served per query (-1: miss): ``semantic.choose`` over the top candidates."""
        score = self.sims[:, :1]
        ok = accepted[:, 0] & (score[:, 0] >= threshold)
        close = rivals & (self.sims > score - margin) & (self.values != self.values[:, :1])
        return np.where(ok & ~close.any(axis=1), self.index[:, 0], -1)

    def served_with_fallback(self, accepted: np.ndarray, threshold: float, margin: float) -> np.ndarray:
        """The rule *not* shipped, for comparison: serve the nearest accepted entry even when nearer
        ones were refused, and let only accepted entries count against the margin."""
        rows = np.arange(len(self.sims))
        ok = accepted & (self.sims >= threshold)
        best = ok.argmax(axis=1)
        score = self.sims[rows, best][:, None]
        close = accepted & (self.sims > score - margin) & (self.values != self.values[rows, best][:, None])
        return np.where(ok.any(axis=1) & ~close.any(axis=1), self.index[rows, best], -1)


def modes() -> list[tuple[str, float]]:
    return [("cosine", 0.0), ("vetoes", 0.0)] + [("verifier", p) for p in MIN_PROBABILITIES]


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
    started = time.perf_counter()

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

    # QQP pairs: cosine, vetoes, features; held-out probabilities by 5-fold cross-validation.
    pairs = [(r["text_a"], r["text_b"]) for r in qqp]
    labels = np.array([r["label"] for r in qqp], dtype=float)
    cos = np.einsum("ij,ij->i", vec([a for a, _ in pairs]), vec([b for _, b in pairs]))
    veto = vetoed(pairs)
    feats = feature_matrix(pairs, cos.tolist())
    folds = stratified_folds(labels, FOLDS)
    trainable = ~veto & (cos >= FIT_MIN_COSINE)
    fold_models = [
        fit_logistic(feats[trainable & (folds != f)], labels[trainable & (folds != f)]) for f in range(FOLDS)
    ]
    held_out = np.zeros(len(pairs))
    for f, model in enumerate(fold_models):
        held_out[folds == f] = predict(model, feats[folds == f])
    shipped = fit_logistic(feats[trainable], labels[trainable])
    fit = {
        "features": list(verify.FEATURES),
        "train_pairs": int(trainable.sum()),
        "train_duplicates": int(labels[trainable].sum()),
        "fit_min_cosine": FIT_MIN_COSINE,
        "l2": L2,
        "coef": shipped.coef,
        "intercept": shipped.intercept,
        "mean": shipped.mean,
        "scale": shipped.scale,
        "code_matches_fit": bool(
            np.allclose(verify.COEF, shipped.coef, atol=1e-4)
            and abs(verify.INTERCEPT - shipped.intercept) < 1e-4
        ),
        "held_out_auc_candidates": auc(held_out[trainable], labels[trainable]),
    }

    # QQP as a cache: text_a stored, text_b looked up; each query scored by its own pair's fold model.
    a_texts = list(dict.fromkeys(a for a, _ in pairs))
    a_ids = np.arange(len(a_texts))
    a_index = {t: i for i, t in enumerate(a_texts)}
    own_a = np.array([a_index[a] for a, _ in pairs])
    qqp_cache = Candidates(
        vec([b for _, b in pairs]) @ vec(a_texts).T, [b for _, b in pairs], a_texts, a_ids, fold_models, folds
    )
    # StackFAQ: canonical questions + distractors, and the same without each query's own FAQ.
    entries = canon + distractors
    entry_ids = np.arange(len(entries))
    entry_ids[: len(canon)] = np.arange(len(canon))  # value id = FAQ number for canonical entries
    truth = np.array([i for _, i in queries])
    query_texts = [q for q, _ in queries]
    faq_sims = vec(query_texts) @ vec(entries).T
    no_fold = np.zeros(len(queries), dtype=int)
    faq_cands = Candidates(faq_sims, query_texts, entries, entry_ids, [shipped], no_fold)
    absent_sims = faq_sims.copy()
    absent_sims[np.arange(len(queries)), truth] = -np.inf
    absent_cands = Candidates(absent_sims, query_texts, entries, entry_ids, [shipped], no_fold)

    grid: list[dict[str, Any]] = []
    for mode, p in modes():
        pair_ok = np.ones(len(pairs), dtype=bool) if mode == "cosine" else ~veto
        if mode == "verifier":
            pair_ok &= held_out >= p
        cands = {"q": qqp_cache, "f": faq_cands, "a": absent_cands}
        acc = {name: (c.accepted(mode, p), c.rivals(mode)) for name, c in cands.items()}
        for margin in MARGINS:
            for t in THRESHOLDS:
                hits = (cos >= t) & pair_ok
                n_hits, n_dup = int(hits.sum()), int((hits & (labels == 1)).sum())
                cache_pick = qqp_cache.served(*acc["q"], t, margin)
                cache_right = int(((cache_pick == own_a) & (labels == 1)).sum())
                cache_hits = int((cache_pick >= 0).sum())
                faq_pick = faq_cands.served(*acc["f"], t, margin)
                faq_hits = int((faq_pick >= 0).sum())
                faq_right = int((faq_pick == truth).sum())
                absent_hits = int((absent_cands.served(*acc["a"], t, margin) >= 0).sum())
                grid.append(
                    {
                        "verify": mode,
                        "min_probability": p if mode == "verifier" else None,
                        "threshold": t,
                        "margin": margin,
                        "qqp_hit_rate": ratio(n_hits, len(pairs)),
                        "qqp_precision": ratio(n_dup, n_hits),
                        "qqp_precision_low95": rounded(wilson_low(n_dup, n_hits)),
                        "qqp_dup_recall": ratio(n_dup, int(labels.sum())),
                        "qqp_cache_hit_rate": ratio(cache_hits, len(pairs)),
                        "qqp_cache_precision": ratio(cache_right, cache_hits),
                        "faq_hit_rate": ratio(faq_hits, len(queries)),
                        "faq_precision": ratio(faq_right, faq_hits),
                        "faq_precision_low95": rounded(wilson_low(faq_right, faq_hits)),
                        "faq_absent_false_hit_rate": ratio(absent_hits, len(queries)),
                        "faq_mixed_precision": ratio(faq_right, faq_hits + absent_hits),
                    }
                )
    meta: dict[str, Any] = {
        "qqp_label_ceiling": label_ceiling(pairs, labels, cos, veto),
        "model_id": model_id,
        "quantization": args.quantization,
        "faq_entries": len(entries),
        "faq_canonical": len(canon),
        "faq_distractors": len(distractors),
        "faq_queries": len(queries),
        "qqp_pairs": len(qqp),
        "qqp_vetoed": {"pairs": int(veto.sum()), "duplicates": int(labels[veto].sum())},
        "fit": fit,
    }
    chosen, _ = pick(grid)
    if chosen is not None:
        meta["library_check"] = asyncio.run(library_agrees(chosen, shipped, entries, entry_ids, vec, queries))
        ok = (cos >= chosen["threshold"]) & (
            np.ones(len(pairs), dtype=bool) if chosen["verify"] == "cosine" else ~veto
        )
        if chosen["verify"] == "verifier":
            ok &= held_out >= chosen["min_probability"]
        meta["chosen_qqp_precision_by_fold"] = [
            ratio(int((ok & (folds == f) & (labels == 1)).sum()), int((ok & (folds == f)).sum()))
            for f in range(FOLDS)
        ]
        if chosen["verify"] == "verifier":
            t, m, p = chosen["threshold"], chosen["margin"], chosen["min_probability"]
            picks = faq_cands.served_with_fallback(faq_cands.accepted("verifier", p), t, m)
            absent = absent_cands.served_with_fallback(absent_cands.accepted("verifier", p), t, m)
            meta["fallback_rule"] = {
                "faq_hit_rate": ratio(int((picks >= 0).sum()), len(queries)),
                "faq_precision": ratio(int((picks == truth).sum()), int((picks >= 0).sum())),
                "faq_absent_false_hit_rate": ratio(int((absent >= 0).sum()), len(queries)),
            }
        wrong = np.flatnonzero(ok & (labels == 0))
        wrong = wrong[np.argsort(-held_out[wrong])][:8]  # the verifier's most confident mistakes
        meta["chosen_qqp_false_hits"] = [
            {"a": pairs[i][0], "b": pairs[i][1], "cosine": rounded(cos[i]), "p": rounded(held_out[i])}
            for i in wrong
        ]
    meta["seconds"] = round(time.perf_counter() - started, 1)
    write_results(args.out, grid, meta, command_line("python bench/semantic_threshold.py"))
    print(json.dumps({"chosen": chosen, **meta}, indent=1), flush=True)
    print("\n# paste into xz_serve/cache/verify.py if code_matches_fit is false:")
    for name in ("coef", "intercept", "mean", "scale"):
        print(f"{name.upper()} = {fit[name]!r}")


def label_ceiling(
    pairs: list[tuple[str, str]], labels: np.ndarray, cos: np.ndarray, veto: np.ndarray
) -> dict[str, Any]:
    """How often QQP labels *near-identical* texts "not duplicate": the precision a cache that served
    only such pairs would score, i.e. what the labels let any verifier reach at a useful hit rate."""

    def spelled(text: str) -> tuple[str, ...]:  # words, ignoring case and ASCII punctuation only
        return tuple("".join(c if c.isalnum() or not c.isascii() else " " for c in text.lower()).split())

    def share(mask: np.ndarray) -> dict[str, Any]:
        n = int(mask.sum())
        return {"pairs": n, "labelled_duplicate": ratio(int(labels[mask].sum()), n)}

    same_words = np.array([spelled(a) == spelled(b) for a, b in pairs])
    same_content = np.array(
        [set(verify.facts(a).content) == set(verify.facts(b).content) for a, b in pairs]
    ) & ~veto
    order = np.argsort(-cos)
    ranks = np.empty(len(pairs), dtype=int)
    ranks[order] = np.arange(len(pairs))
    top = {n: share(ranks < n) for n in (100, 200, 400)}
    return {
        "same_words_ignoring_case_and_punctuation": share(same_words),
        "same_content_words_no_veto_cosine_095": share(same_content & (cos >= 0.95)),
        "top_by_cosine": top,
        "same_words_labelled_not_duplicate": [
            list(pairs[i]) for i in np.flatnonzero(same_words & (labels == 0))
        ],
    }


def rounded(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


async def library_agrees(
    chosen: dict[str, Any],
    shipped: PairVerifier,
    entries: list[str],
    entry_ids: np.ndarray,
    vec: Any,
    queries: list[tuple[str, int]],
) -> dict[str, Any]:
    """Replay the chosen cell through a real (local-only) SemanticCache: same StackFAQ hits?"""
    verifier = None
    if chosen["verify"] != "cosine":
        p = chosen["min_probability"] if chosen["verify"] == "verifier" else 0.0
        verifier = PairVerifier(p, shipped.coef, shipped.intercept, shipped.mean, shipped.scale)
    cache = SemanticCache(
        RedisGuard(None),
        threshold=chosen["threshold"],
        margin=chosen["margin"],
        max_entries=len(entries),
        verifier=verifier,
    )
    vectors = vec(entries)
    for n, (text, value) in enumerate(zip(entries, entry_ids, strict=True)):
        await cache.store("bench", vectors[n], str(int(value)).encode(), key=str(n), text=text)
    texts = [q for q, _ in queries]
    hits = await cache.lookup_many("bench", vec(texts), texts=texts)
    right = sum(h is not None and h.value == str(i).encode() for h, (_, i) in zip(hits, queries, strict=True))
    n_hits = sum(h is not None for h in hits)
    return {
        "faq_hit_rate": ratio(n_hits, len(queries)),
        "faq_precision": ratio(right, n_hits),
        "agrees": ratio(n_hits, len(queries)) == chosen["faq_hit_rate"]
        and ratio(right, n_hits) == chosen["faq_precision"],
    }


if __name__ == "__main__":
    main()
