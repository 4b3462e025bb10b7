"""Out-of-scope detection on a built model, without retraining: which detector, which operating point.

Why: the classifier's own ``oos`` class and a confidence floor catch under half of CLINC150's
out-of-scope requests. This study embeds the texts once with the built model (both variants; the
detector is fitted on the INT8 outputs, as the build does) and fits the detector of
``xz_serve/models/detector.py`` with the build's own code (``xz_serve/artifacts/oos.py``):

- class means and the tied, shrunk covariance on the training texts the encoder trained on (the
  build's split: ``split_holdout(train, 0.1, seed)``);
- the logistic combination on the 10% train holdout (in-scope against its ``oos`` texts) plus
  out-of-domain negatives (TweetEval tweets, QQP and StackFAQ questions, ``negative_texts``; one
  fixed half of each fits, the other half only reports);
- the threshold on the holdout's in-scope texts: the lowest that keeps ``keep`` of their accuracy.

Variants: each feature alone and combinations (a logistic fit on the chosen columns, same data);
the full detector at several covariance shrinkages. Every fit and threshold uses the holdout (and
the negatives' fitting half) only; the val columns report. AUROC (val in-scope against val oos) is
threshold-free and also only reports.

    python bench/oos_study.py   # writes bench/results/oos_study.{json,md,png}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

# bench/ is sys.path[0] when run as a script
from results_md import command_line, write_markdown

from xz_serve.artifacts import data as ds
from xz_serve.artifacts import oos
from xz_serve.models.base import NluModel
from xz_serve.models.detector import OosDetector
from xz_serve.models.loading import load_onnx_model
from xz_serve.models.spec import ModelSpec
from xz_serve.settings import XzSettings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CACHE = Path("/tmp/xz-oos-study")
KEEPS = (1.0, 0.998, 0.995, 0.993, 0.99, 0.985, 0.98, 0.97, 0.95)
SUBSETS = {
    "confidence (max in-scope probability)": ("confidence",),
    "oos class probability": ("oos_prob",),
    "Mahalanobis distance": ("distance",),
    "distance + confidence": ("distance", "confidence"),
    "distance + confidence + oos probability (the build's)": ("distance", "confidence", "oos_prob"),
}
SHRINKAGES = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)


def embed(model: NluModel, texts: list[str]) -> dict[str, np.ndarray]:
    parts = [model.predict(texts[i : i + 64]) for i in range(0, len(texts), 64)]
    return {
        "emb": np.concatenate([p.embeddings for p in parts]),
        "probs": np.concatenate([p.intent_probs for p in parts]),
    }


def load_outputs(
    spec: ModelSpec, texts: dict[str, list[str]], quantization: str
) -> tuple[str, dict[str, Any]]:
    """Each set's embeddings and intent probabilities under one variant, cached per model revision."""
    model = load_onnx_model(spec.model_copy(update={"quantization": quantization}))
    cache = CACHE / f"{model.model_id.replace(':', '_').replace('@', '_')}.npz"
    if cache.exists():
        print(f"{quantization}: embeddings from {cache}")
        flat = dict(np.load(cache))
        return model.model_id, {k: {"emb": flat[f"{k}|emb"], "probs": flat[f"{k}|probs"]} for k in texts}
    out: dict[str, Any] = {}
    for name, items in texts.items():
        started = time.perf_counter()
        out[name] = embed(model, items)
        print(f"{quantization}: embedded {name}, {len(items)} texts in {time.perf_counter() - started:.0f} s")
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{f"{k}|{f}": v[f] for k, v in out.items() for f in ("emb", "probs")})
    return model.model_id, out


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of a random out-of-scope text > that of a random in-scope one), ties half."""
    both = np.concatenate([inside, outside])
    ranks = both.argsort().argsort().astype(np.float64) + 1
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]  # average ranks for ties
    n_out, n_in = len(outside), len(inside)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def subset_scorer(
    full: OosDetector, columns: tuple[str, ...], x_fit: np.ndarray, y: np.ndarray, w: np.ndarray
) -> Any:
    """A logistic fit on some of the detector's feature columns; returns features -> scores."""
    idx = [full.feature_names.index(c) for c in columns]
    mean, scale, coef, bias = oos.fit_logistic(x_fit[:, idx], y, w)

    def score(features: np.ndarray) -> np.ndarray:
        z = ((features[:, idx] - mean) / scale) @ coef + bias
        return np.asarray(1 / (1 + np.exp(-np.clip(z, -60, 60))))

    return score


def scored(scores: np.ndarray, probs: np.ndarray, gold: np.ndarray | None, oos_index: int) -> oos.Scored:
    return oos.Scored(scores=scores, argmax=probs.argmax(1), gold=gold, oos_index=oos_index)


def row(name: str, keep: float, holdout: oos.Scored, val: oos.Scored, neg: oos.Scored) -> dict[str, Any]:
    threshold = oos.threshold_for(holdout, keep)
    h, v = oos.OperatingPoint.at(holdout, threshold), oos.OperatingPoint.at(val, threshold)
    inside = val.in_scope
    return {
        "variant": name,
        "keep": keep,
        "threshold": round(threshold, 5),
        "holdout_in_scope_accuracy": round(h.in_scope_accuracy or 0, 4),
        "val_in_scope_accuracy": round(v.in_scope_accuracy or 0, 4),
        "val_oos_recall": round(v.oos_recall or 0, 4),
        "val_accuracy": round(v.accuracy, 4),
        "negatives_recall": round(float(neg.flagged(threshold).mean()), 4),
        "val_auroc": round(auroc(val.scores[inside], val.scores[~inside]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    started = time.perf_counter()
    spec = XzSettings().model
    build = spec.build
    intent = ds.check_task(
        spec.intent_dir(), build.min_examples_per_label, build.max_data_mb, build.max_conflict_share
    )
    oos_index = intent.names.index(ds.OOS_LABEL)
    assert intent.val is not None
    train, holdout = ds.split_holdout(intent.labelled(intent.train), 0.1, build.seed)
    val = intent.labelled(intent.val)
    exclude = {ds.text_key(r.text) for r in intent.train + intent.val}
    negatives = ds.negative_texts(spec.data_dir, build.oos_negatives_per_source, build.seed, exclude)
    fit_neg, eval_neg = oos.halve_sources(negatives, build.seed)
    texts = {
        "train": train.texts,
        "holdout": holdout.texts,
        "val": val.texts,
        "neg_fit": [t for v in fit_neg.values() for t in v],
        "neg_eval": [t for v in eval_neg.values() for t in v],
    }
    gold = {"train": np.array(train.labels), "holdout": np.array(holdout.labels), "val": np.array(val.labels)}
    variants: dict[str, dict[str, Any]] = {}
    model_ids = {}
    for quant in ("int8", "fp32"):
        model_ids[quant], variants[quant] = load_outputs(spec, texts, quant)
    out = variants["int8"]

    def fit(shrinkage: float, source: dict[str, Any]) -> OosDetector:
        return oos.fit_detector(
            source["train"]["emb"], gold["train"], source["holdout"]["emb"], source["holdout"]["probs"],
            gold["holdout"], source["neg_fit"]["emb"], source["neg_fit"]["probs"], oos_index,
            build.oos_keep_in_scope, shrinkage,
        )  # fmt: skip

    def scored_sets(det: OosDetector, source: dict[str, Any]) -> tuple[oos.Scored, oos.Scored, oos.Scored]:
        return (
            oos.Scored.of(det, source["holdout"]["emb"], source["holdout"]["probs"], gold["holdout"]),
            oos.Scored.of(det, source["val"]["emb"], source["val"]["probs"], gold["val"]),
            oos.Scored.of(det, source["neg_eval"]["emb"], source["neg_eval"]["probs"], None),
        )

    rows: list[dict[str, Any]] = []
    # Feature subsets, on the default shrinkage's geometry.
    full = fit(oos.DEFAULT_SHRINKAGE, out)
    splits = ("holdout", "val", "neg_fit", "neg_eval")
    feats = {k: full.features(out[k]["emb"], out[k]["probs"]) for k in splits}
    y = np.concatenate([gold["holdout"] == oos_index, np.ones(len(texts["neg_fit"]), dtype=bool)])
    y = y.astype(float)
    w = np.where(y > 0, 1 / y.sum(), 1 / (len(y) - y.sum())) * len(y) / 2
    x_fit = np.concatenate([feats["holdout"], feats["neg_fit"]])
    for name, columns in SUBSETS.items():
        score = subset_scorer(full, columns, x_fit, y, w)
        h = scored(score(feats["holdout"]), out["holdout"]["probs"], gold["holdout"], oos_index)
        v = scored(score(feats["val"]), out["val"]["probs"], gold["val"], oos_index)
        n = scored(score(feats["neg_eval"]), out["neg_eval"]["probs"], None, oos_index)
        rows += [{"study": "features", **row(name, keep, h, v, n)} for keep in KEEPS]
    for shrinkage in SHRINKAGES:
        det = fit(shrinkage, out)
        h, v, n = scored_sets(det, out)
        rows += [{"study": "shrinkage", **row(f"shrinkage {shrinkage:g}", keep, h, v, n)} for keep in KEEPS]
    # INT8 against FP32: the INT8-fitted detector on FP32 outputs, as the build reports it.
    h, v, n = scored_sets(full, variants["fp32"])
    rows += [{"study": "variant", **row("FP32 outputs, INT8-fitted detector", k, h, v, n)} for k in KEEPS]
    h, v, n = scored_sets(full, out)
    rows += [{"study": "variant", **row("INT8 outputs, INT8-fitted detector", k, h, v, n)} for k in KEEPS]
    chosen = next(r for r in rows if r["study"] == "variant" and r["variant"].startswith("INT8")
                  and r["keep"] == build.oos_keep_in_scope)  # fmt: skip
    argmax = oos.OperatingPoint.at(v, np.inf)
    result = {
        "model": model_ids,
        "data": {
            "train": len(train.texts),
            "holdout": len(holdout.texts),
            "val": len(val.texts),
            "holdout_oos": int((gold["holdout"] == oos_index).sum()),
            "val_oos": int((gold["val"] == oos_index).sum()),
            "negatives_fit": {k: len(t) for k, t in fit_neg.items()},
            "negatives_eval": {k: len(t) for k, t in eval_neg.items()},
        },
        "detector": {
            "features": list(full.feature_names),
            "weights": full.weights.round(4).tolist(),
            "bias": round(full.bias, 4),
            "shrinkage": oos.DEFAULT_SHRINKAGE,
        },
        "argmax_only": dataclasses.asdict(argmax),
        "chosen": chosen,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    body = markdown(result, build.oos_keep_in_scope)
    print(body)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "oos_study.json").write_text(json.dumps(result, indent=1))
        command = command_line("python bench/oos_study.py")
        write_markdown(RESULTS / "oos_study.md", body, command, extra=" and `.png`")
        plot(rows, RESULTS / "oos_study.png", build.oos_keep_in_scope)


def markdown(result: dict[str, Any], keep: float) -> str:
    c, a, d = result["chosen"], result["argmax_only"], result["data"]
    lines = [
        "# Out-of-scope detection: the study behind the build's detector",
        "",
        f"Model `{result['model']['int8']}` (the built artifacts; no retraining). CLINC150: {d['train']} "
        f"training texts (class means, covariance), a {d['holdout']}-text train holdout "
        f"({d['holdout_oos']} of them `oos`) that fits the weights and every threshold, and val "
        f"({d['val']}, {d['val_oos']} `oos`) that only reports. Out-of-domain negatives: "
        f"{d['negatives_fit']} fit, {d['negatives_eval']} held back. Made by `bench/oos_study.py` "
        f"in {result['seconds']} s (embeddings are cached per model revision under {CACHE}; the "
        "first run embeds about 50,000 texts, a few minutes on 2 cores).",
        "",
        f"**At the build's default (keep {keep:g} of the holdout's in-scope accuracy), INT8, val:** "
        f"out-of-scope recall {c['val_oos_recall']:.1%}, in-scope accuracy "
        f"{c['val_in_scope_accuracy']:.2%}, accuracy over all 151 labels {c['val_accuracy']:.2%}; "
        f"held-back negatives flagged {c['negatives_recall']:.1%}. The argmax alone (the `oos` "
        f"class only): recall {a['oos_recall']:.1%}, in-scope {a['in_scope_accuracy']:.2%}, "
        f"all {a['accuracy']:.2%}.",
        "",
        f"Detector weights (standardised features {result['detector']['features']}): "
        f"{result['detector']['weights']}, bias {result['detector']['bias']}.",
        "",
    ]
    header = ("| variant | keep | threshold | holdout in-scope | val in-scope | val oos recall | val all | "
              "negatives flagged | val AUROC |")  # fmt: skip
    studies = [
        ("features", "Features (shrinkage 0.2)"),
        ("shrinkage", "Covariance shrinkage (all three features)"),
        ("variant", "INT8 against FP32 outputs (one detector, fitted on INT8)"),
    ]
    for study, title in studies:
        lines += [f"## {title}", "", header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["rows"]:
            if r["study"] != study:
                continue
            mark = "**" if r["keep"] == keep else ""
            lines.append(
                f"| {r['variant']} | {mark}{r['keep']:g}{mark} | {r['threshold']:.4f} | "
                f"{r['holdout_in_scope_accuracy']:.2%} | {r['val_in_scope_accuracy']:.2%} | "
                f"{r['val_oos_recall']:.1%} | {r['val_accuracy']:.2%} | {r['negatives_recall']:.1%} | "
                f"{r['val_auroc']:.4f} |"
            )
        lines.append("")
    lines += ["![out-of-scope recall against in-scope accuracy](oos_study.png)", ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, keep: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=120)
    for name in [n for n in SUBSETS] + ["FP32 outputs, INT8-fitted detector"]:
        pts = [r for r in rows if r["variant"] == name]
        style = "--" if name.startswith("FP32") else "-"
        ax.plot([r["val_in_scope_accuracy"] for r in pts], [r["val_oos_recall"] for r in pts], style + "o",
                markersize=3, label=name)  # fmt: skip
    chosen = [r for r in rows if r["study"] == "variant" and r["variant"].startswith("INT8")
              and r["keep"] == keep]  # fmt: skip
    ax.plot([chosen[0]["val_in_scope_accuracy"]], [chosen[0]["val_oos_recall"]], "k*", markersize=10,
            label=f"default: keep {keep:g}")  # fmt: skip
    ax.axvline(0.96, color="grey", linestyle=":", linewidth=0.8)
    ax.axhline(0.85, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("CLINC150 val in-scope accuracy (INT8; thresholds from the train holdout)")
    ax.set_ylabel("CLINC150 val out-of-scope recall")
    ax.set_xlim(0.9, 0.98)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
