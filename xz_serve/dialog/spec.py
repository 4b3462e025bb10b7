"""DialogSpec: sessions, policy file and LLM upstreams. Pure pydantic, nested in XzSettings as ``dialog``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class DialogSpec(BaseModel):
    """How /v1/chat keeps sessions and chooses replies."""

    model_config = ConfigDict(extra="forbid", frozen=True)
