"""docs/configuration.md is what ``xz-config-doc`` renders from XzSettings, field for field."""

from __future__ import annotations

from pathlib import Path

from xz_serve.config_doc import render
from xz_serve.settings import XzSettings

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_the_reference_matches_the_settings() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), "run `xz-config-doc` and commit docs/configuration.md"


def test_every_leaf_field_is_documented_with_its_env_name() -> None:
    text = render()
    assert "`XZ_CACHE__REDIS_URL`" in text and "`XZ_STORE__SESSION_TIMEOUT_MS`" in text
    assert "`XZ_MODEL__BUILD__EPOCHS`" in text  # nested two deep
    missing = [name for name, info in XzSettings.model_fields.items() if not info.description and
               not hasattr(info.annotation, "model_fields")]  # fmt: skip
    assert missing == []
