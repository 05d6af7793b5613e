"""The operator docs list every setting the server reads."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from chorus_server.settings import Settings

DOCS = Path(__file__).parents[2] / "docs" / "server.md"


def env_names(model: type[BaseModel], prefix: str = "CHORUS_") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names += env_names(field.annotation, f"{prefix}{name.upper()}__")
        else:
            names.append(f"{prefix}{name.upper()}")
    return names


def test_every_setting_is_documented():
    text = DOCS.read_text()
    missing = [name for name in env_names(Settings) if f"`{name}`" not in text]
    assert not missing, f"add these to docs/server.md: {missing}"
