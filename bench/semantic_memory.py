"""What the reply cache holds in one replica's memory for the soak's fresh LLM questions.

Why: in a soak every "chat_llm" request asks a question nobody asked before, and every replica keeps
each answer in its semantic reply cache (bounded by ``cache.semantic_max_bytes``, 64 MiB by
default). This stores the same entries (the soak's two question templates with a fresh number,
the OpenAI stand-in's reply, a 384-dim embedding, four namespaces as two tenants x two rules) into a
``SemanticCache`` with no Redis and reports the cache's own accounting beside what tracemalloc and
RSS see, per entry.

    python bench/semantic_memory.py --entries 4500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tracemalloc
from pathlib import Path

import numpy as np
from openai_standin import reply_for  # bench/ is sys.path[0] when run as a script

from xz_serve.cache.semantic import SemanticCache
from xz_serve.cache.verify import PairVerifier
from xz_serve.kernel.redis import RedisGuard

QUESTIONS = ("how do i jump start my car in {n} steps", "how do i change a flat tire in {n} minutes")


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


async def measure(entries: int) -> dict[str, float]:
    cache = SemanticCache(RedisGuard(None, role="cache"), threshold=0.9, verifier=PairVerifier(0.5))
    rng = np.random.default_rng(0)
    tracemalloc.start()
    rss0 = rss_mib()
    for i in range(entries):
        question = QUESTIONS[i % 2].format(n=i)
        reply, _ = reply_for([{"role": "user", "content": question}], None)
        value = json.dumps({"reply": reply, "tokens": 120}).encode()
        vector = rng.standard_normal(384).astype(np.float32)
        await cache.store(f"tenant{i % 4 // 2}:rule{i % 2}", vector, value, text=question)
    traced, _ = tracemalloc.get_traced_memory()
    return {
        "entries": cache.entries,
        "accounted_mib": round(cache.nbytes / 2**20, 2),
        "traced_mib": round(traced / 2**20, 2),
        "rss_growth_mib": round(rss_mib() - rss0, 2),
        "traced_kib_per_entry": round(traced / entries / 1024, 2),
        "value_bytes": len(value),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=4500, help="about a 20-minute soak's LLM questions")
    print(json.dumps(asyncio.run(measure(parser.parse_args().entries))))


if __name__ == "__main__":
    main()
