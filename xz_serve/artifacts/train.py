"""Multi-task fine-tuning of the top encoder layers with intent and sentiment heads.

The frozen bottom layers run once over every text (``precompute``); each step then back-propagates
through the top ``trainable_layers`` only, which makes CPU training about 3x cheaper. A distillation
term keeps the pooled embedding close to the original MiniLM's, so similarity search (embeddings
endpoint, semantic cache) keeps its quality while the heads gain accuracy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from xz_serve.artifacts.network import NluNetwork
from xz_serve.artifacts.progress import progress
from xz_serve.models.spec import BuildSpec

TokenLists = list[list[int]]


@dataclass
class Prefixed:
    """Frozen-prefix hidden states (one ``[len, hidden]`` tensor per text) and original embeddings."""

    hidden: list[torch.Tensor]
    original_embedding: torch.Tensor


@dataclass
class TaskSet:
    """One task's training or validation texts, already run through the frozen prefix."""

    task: str
    prefixed: Prefixed
    labels: torch.Tensor


def pad(hidden: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length hidden states into a zero-padded batch and its attention mask."""
    longest = max(h.shape[0] for h in hidden)
    batch = torch.zeros(len(hidden), longest, hidden[0].shape[1])
    mask = torch.zeros(len(hidden), longest, dtype=torch.long)
    for row, h in enumerate(hidden):
        batch[row, : h.shape[0]] = h
        mask[row, : h.shape[0]] = 1
    return batch, mask


def pad_ids(token_lists: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists to padded ``input_ids`` and ``attention_mask`` (BERT's pad id is 0)."""
    longest = max(len(t) for t in token_lists)
    ids = torch.zeros(len(token_lists), longest, dtype=torch.long)
    mask = torch.zeros(len(token_lists), longest, dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids, mask


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length: little padding, still a random order of batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


@torch.no_grad()
def precompute(network: NluNetwork, tokens: TokenLists, stop: int, desc: str) -> Prefixed:
    """Run the frozen prefix (and, for the distillation target, the untouched top) once."""
    network.eval()
    hidden: list[torch.Tensor | None] = [None] * len(tokens)
    original = torch.zeros(len(tokens), network.intent_head.in_features)
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
    for start in progress(range(0, len(order), 128), desc, unit="batch", leave=False):
        idx = order[start : start + 128]
        ids, mask = pad_ids([tokens[i] for i in idx])
        prefix = network.encode_prefix(ids, mask, stop)
        embedding, _, _ = network.forward_from(prefix, mask, stop)
        for row, i in enumerate(idx):
            hidden[i] = prefix[row, : len(tokens[i])].clone()
        original[idx] = embedding
    return Prefixed([h for h in hidden if h is not None], original)


@torch.no_grad()
def evaluate(network: NluNetwork, data: TaskSet, stop: int) -> float:
    """Macro-averaged recall of the task's head on an already-prefixed set: each class counts the
    same whatever its share of the data (TweetEval's official sentiment metric)."""
    network.eval()
    predictions = []
    for start in range(0, len(data.labels), 256):
        hidden, mask = pad(data.prefixed.hidden[start : start + 256])
        _, intent, sentiment = network.forward_from(hidden, mask, stop)
        logits = intent if data.task == "intent" else sentiment
        predictions.append(logits.argmax(-1))
    predicted = torch.cat(predictions)
    recalls = [
        float((predicted[data.labels == label] == label).float().mean())
        for label in data.labels.unique()
    ]
    return float(np.mean(recalls))


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1), so the head learns no class prior from the training set.

    The sentiment data is SemEval-2017's test split (48% neutral, 19% positive); traffic, and
    TweetEval's own validation split (41% positive), have other priors. Balanced training targets
    macro recall instead of the training set's label mix.
    """
    counts = torch.bincount(labels, minlength=n_classes).float().clamp(min=1)
    weights = counts.sum() / (n_classes * counts)
    return weights / weights.mean()


@torch.no_grad()
def intent_probs(network: NluNetwork, data: TaskSet, stop: int) -> np.ndarray:
    """Softmax of the intent head over an already-prefixed set."""
    network.eval()
    parts = []
    for start in range(0, len(data.labels), 256):
        hidden, mask = pad(data.prefixed.hidden[start : start + 256])
        _, intent, _ = network.forward_from(hidden, mask, stop)
        parts.append(torch.softmax(intent, -1).numpy())
    return np.concatenate(parts)


def train(
    network: NluNetwork,
    train_sets: list[TaskSet],
    holdout_sets: list[TaskSet],
    val_sets: list[TaskSet],
    spec: BuildSpec,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Fine-tune the top layers and both heads, keeping the epoch with the best mean macro recall on
    the holdout sets (carved from training data: validation sets only report, never select).

    Returns:
        Per-epoch holdout and validation macro recall.
    """
    stop = len(network.layers) - spec.trainable_layers
    for param in network.parameters():
        param.requires_grad = False
    encoder_params = [p for layer in network.layers[stop:] for p in layer.parameters()]
    head_params = [*network.intent_head.parameters(), *network.sentiment_head.parameters()]
    for param in encoder_params + head_params:
        param.requires_grad = True
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": spec.encoder_lr}, {"params": head_params, "lr": spec.head_lr}],
        weight_decay=0.01,
    )
    rng = random.Random(spec.seed)
    criteria = {
        s.task: nn.CrossEntropyLoss(
            weight=class_weights(s.labels, int(s.labels.max()) + 1) if spec.balance_classes else None,
            label_smoothing=spec.label_smoothing,
        )
        for s in train_sets
    }
    steps_per_epoch = sum(math.ceil(len(s.labels) / spec.batch_size) for s in train_sets)
    total = steps_per_epoch * spec.epochs
    warmup = max(1, int(0.06 * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / (total - warmup)))
    )
    history: list[dict[str, float]] = []
    trainable = encoder_params + head_params
    best_score, best_state = -1.0, [p.detach().clone() for p in trainable]
    for epoch in range(spec.epochs):
        network.train()
        plan = [
            (task_set, batch)
            for task_set in train_sets
            for batch in length_batches(
                [h.shape[0] for h in task_set.prefixed.hidden], spec.batch_size, rng
            )
        ]
        rng.shuffle(plan)
        losses: list[float] = []
        bar = progress(plan, f"train epoch {epoch + 1}/{spec.epochs}", unit="step")
        for task_set, batch in bar:
            hidden, mask = pad([task_set.prefixed.hidden[i] for i in batch])
            embedding, intent, sentiment = network.forward_from(hidden, mask, stop)
            logits = intent if task_set.task == "intent" else sentiment
            loss = criteria[task_set.task](logits, task_set.labels[batch])
            target = task_set.prefixed.original_embedding[batch]
            loss = loss + spec.distill_weight * (1 - (embedding * target).sum(-1)).mean()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(encoder_params + head_params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss))
            if len(losses) % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        scores = {f"{s.task}_holdout_macro_recall": evaluate(network, s, stop) for s in holdout_sets}
        selection = float(np.mean(list(scores.values())))
        if selection > best_score:
            best_score, best_state = selection, [p.detach().clone() for p in trainable]
        scores |= {f"{s.task}_val_macro_recall": evaluate(network, s, stop) for s in val_sets}
        scores["epoch"] = epoch + 1
        scores["loss"] = float(np.mean(losses))
        history.append(scores)
        log(f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    with torch.no_grad():
        for param, saved in zip(trainable, best_state, strict=True):
            param.copy_(saved)
    log(f"kept the epoch with mean holdout macro recall {best_score:.4f}")
    network.eval()
    return history


def seed_everything(seed: int) -> None:
    """Same seed, same weights: Python, NumPy and torch generators all start from it."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
