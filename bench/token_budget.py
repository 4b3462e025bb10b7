"""Batching by texts or by tokens: what each gives the model when the queue is never empty.

Why: a pass's cost follows its tokens, not its texts, so a cap of 32 texts lets a pass of tweets
cost several times a pass of short commands. Text-embeddings-inference cuts batches by a token
budget (``max_batch_tokens``) instead. This measures, on the raw INT8 model and the bench's text
mix, whether that pays here: each policy takes texts from the head of one fixed arrival order
until its cap, as a replica under saturation would, and runs the pass the way the replica does
(``EncoderModel.predict``: sorted into length buckets, one padded run per bucket). Policies are
interleaved round by round, so drift on a shared machine hits them alike.

    python bench/token_budget.py --rounds 5 --threads 2   # writes bench/results/token_budget.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from raw_model import bench_spec, percentiles_ms  # bench/ is sys.path[0] when run as a script
from texts import REPO_ROOT, load_texts

from xz_serve.models.loading import load_onnx_model
from xz_serve.models.preprocess import spell_symbols

RESULTS = REPO_ROOT / "bench" / "results" / "token_budget.json"
Policy = Callable[[list[int], int], int]  # (token counts, start) -> end of the next pass


def by_texts(cap: int) -> Policy:
    """Up to ``cap`` texts, whatever their length (what the replica does)."""
    return lambda lengths, start: min(len(lengths), start + cap)


def by_tokens(budget: int, max_texts: int = 256) -> Policy:
    """Texts while their tokens sum within ``budget`` (at least one text)."""

    def cut(lengths: list[int], start: int) -> int:
        end, used = start, 0
        while (
            end < len(lengths) and end - start < max_texts and (used + lengths[end] <= budget or end == start)
        ):
            used += lengths[end]
            end += 1
        return end

    return cut


def run_policy(
    model: Any, texts: list[str], lengths: list[int], policy: Policy, n: int, offset: int
) -> dict[str, Any]:
    """``n`` texts from ``offset`` (wrapping) through ``policy``: pass times, texts and tokens."""
    order = [(offset + i) % len(texts) for i in range(n)]
    stream, stream_lengths = [texts[i] for i in order], [lengths[i] for i in order]
    passes: list[float] = []
    sizes: list[int] = []
    tokens: list[int] = []
    start = 0
    began = time.perf_counter()
    while start < n:
        end = policy(stream_lengths, start)
        t0 = time.perf_counter()
        model.predict(stream[start:end])
        passes.append(time.perf_counter() - t0)
        sizes.append(end - start)
        tokens.append(sum(stream_lengths[start:end]))
        start = end
    elapsed = time.perf_counter() - began
    return {"elapsed_s": elapsed, "passes": passes, "sizes": sizes, "tokens": tokens}


def with_paragraphs(texts: list[str], share: float, seed: int = 0) -> list[str]:
    """``texts`` with ``share`` of them, at seeded places, replaced by five texts joined."""
    rng = random.Random(seed)
    out = list(texts)
    for i in rng.sample(range(len(out)), round(share * len(out))):
        out[i] = " ".join(rng.sample(texts, 5))
    return out


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    passes = [p for r in runs for p in r["passes"]]
    sizes = [s for r in runs for s in r["sizes"]]
    tokens = [t for r in runs for t in r["tokens"]]
    per_round = [sum(r["sizes"]) / r["elapsed_s"] for r in runs]
    return {
        "texts_per_s": round(sum(sizes) / sum(r["elapsed_s"] for r in runs), 1),
        "texts_per_s_by_round": [round(x, 1) for x in per_round],
        "passes": len(passes),
        "texts_per_pass": {"mean": round(float(np.mean(sizes)), 1), "max": int(max(sizes))},
        "tokens_per_pass": {"mean": round(float(np.mean(tokens)), 1), "max": int(max(tokens))},
        "pass_ms": percentiles_ms(passes) | {"max": round(max(passes) * 1000, 3)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts-per-round", type=int, default=960)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--artifacts", type=Path, default=REPO_ROOT / "artifacts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--long-share",
        type=float,
        default=0.0,
        help="this share of the texts become five texts joined (a paragraph of 80-130 tokens), "
        "for a length mix with a heavy tail",
    )
    args = parser.parse_args()

    texts = with_paragraphs(load_texts(1500), args.long_share)
    model = load_onnx_model(bench_spec(args.artifacts, args.threads))
    lengths = [len(e.ids) for e in model.tokenizer.encode_batch([spell_symbols(t) for t in texts])]
    mean_tokens = float(np.mean(lengths))
    policies: dict[str, Policy] = {"texts<=32": by_texts(32)}
    for per_text in (32, 64):  # budgets the size of 32 and 64 average texts, then round ones
        policies[f"tokens<={round(per_text * mean_tokens)}"] = by_tokens(round(per_text * mean_tokens))
    for budget in (256, 512, 2048):
        policies[f"tokens<={budget}"] = by_tokens(budget)
    policies["texts<=64"] = by_texts(64)

    model.predict(texts[:64])  # warm-up: allocation and kernel choice
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in policies}
    names = list(policies)
    for r in range(args.rounds):
        offset = r * args.texts_per_round
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            run = run_policy(model, texts, lengths, policies[name], args.texts_per_round, offset)
            runs[name].append(run)
            rate = sum(run["sizes"]) / run["elapsed_s"]
            print(f"round {r + 1}/{args.rounds} {name}: {rate:.1f} texts/s", flush=True)

    table = {name: summary(rs) for name, rs in runs.items()}
    base = table["texts<=32"]["texts_per_s"]
    for row in table.values():
        row["throughput_vs_texts32"] = round(row["texts_per_s"] / base, 3)
    record = {
        "what": "bench/token_budget.py: raw INT8 model, one arrival order, passes cut by texts or tokens",
        "threads": args.threads,
        "texts": len(texts),
        "long_share": args.long_share,
        "tokens_per_text": {
            "mean": round(mean_tokens, 1),
            "p50": float(np.percentile(lengths, 50)),
            "p99": float(np.percentile(lengths, 99)),
            "max": int(max(lengths)),
        },
        "rounds": args.rounds,
        "texts_per_round": args.texts_per_round,
        "policies": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(
        json.dumps(
            {
                k: {
                    "texts_per_s": v["texts_per_s"],
                    "vs": v["throughput_vs_texts32"],
                    "pass_ms": v["pass_ms"],
                    "per_pass": v["texts_per_pass"],
                }
                for k, v in table.items()
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
