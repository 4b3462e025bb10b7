"""NluNetwork: MiniLM encoder + mean pooling + intent and sentiment heads, one pass, three outputs."""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertModel

OUTPUT_NAMES = ("embedding", "intent_logits", "sentiment_logits")


def additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Eager attention adds this to its scores: 0 for tokens, a large negative for padding."""
    return (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -10000.0


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average over real tokens only, as sentence-transformers does for all-MiniLM-L6-v2."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class NluNetwork(nn.Module):
    """The deployed graph: tokens in; L2-normalised embedding, intent logits, sentiment logits out.

    The encoder can be run in two parts (``encode_prefix`` then ``forward_from``) so that training
    computes the frozen bottom layers once and back-propagates only through the top ones.
    """

    def __init__(self, bert: BertModel, n_intents: int, n_sentiments: int) -> None:
        super().__init__()
        hidden = bert.config.hidden_size
        self.embeddings = bert.embeddings
        self.layers = bert.encoder.layer
        self.dropout = nn.Dropout(0.1)
        self.intent_head = nn.Linear(hidden, n_intents)
        self.sentiment_head = nn.Linear(hidden, n_sentiments)

    def encode_prefix(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, stop: int
    ) -> torch.Tensor:
        """Hidden states after the first ``stop`` encoder layers."""
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        mask = additive_mask(attention_mask)
        for layer in self.layers[:stop]:
            hidden = layer(hidden, mask)
        return hidden

    def forward_from(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run layers ``start..`` and the heads on hidden states from ``encode_prefix``."""
        mask = additive_mask(attention_mask)
        for layer in self.layers[start:]:
            hidden = layer(hidden, mask)
        pooled = mean_pool(hidden, attention_mask)
        features = self.dropout(pooled)
        embedding = nn.functional.normalize(pooled, dim=-1)
        return embedding, self.intent_head(features), self.sentiment_head(features)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.forward_from(self.encode_prefix(input_ids, attention_mask, 0), attention_mask, 0)
