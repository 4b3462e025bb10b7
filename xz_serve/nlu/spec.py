"""BatchSpec: how a model replica batches, applied through Serve's ``user_config``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchSpec(_Spec):
    """Serve batching knobs, applied through ``user_config`` so retuning needs no restart."""

    max_batch_size: int = Field(32, ge=1, le=512, description="Texts per encoder pass at most.")
    batch_wait_timeout_s: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Longest a partial batch waits for company, and only while the model is busy "
        "with the previous pass (it waits until that pass should end, at most this long): a call "
        "that finds the model idle runs at once.",
    )
    queue_batches: float = Field(
        32,
        ge=1,
        le=1024,
        description="Admission bound per model replica, in full batches: a call is refused at once "
        "(503 + Retry-After) while more than `queue_batches * max_batch_size` texts are pending, so "
        "an overload queues at most that many passes (about 2 s of work at batch 32 on 2 cores) "
        "instead of piling up until deadlines pass. Large enough by default to absorb a burst of "
        "hundreds of requests; lower it (2 = one batch running, one forming) to trade burst "
        "tolerance for a tight latency bound under sustained overload.",
    )
