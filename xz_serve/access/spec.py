"""AccessSpec: API keys, rate limits, deadlines. Pure pydantic, nested in XzSettings as ``access``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class AccessSpec(BaseModel):
    """Authentication, per-key limits and request deadlines."""

    model_config = ConfigDict(extra="forbid", frozen=True)
