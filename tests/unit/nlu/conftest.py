"""Run @serve.batch outside a replica: Serve only asks the replica context for a warning."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray import serve


@pytest.fixture(autouse=True)
def replica_context(monkeypatch: pytest.MonkeyPatch) -> None:
    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=1024))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
