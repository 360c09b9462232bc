from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))


@pytest.fixture
def conf() -> Path:
    """The packaged conf/ directory."""
    return ROOT / "conf"


def model_recipe(name: str) -> Path:
    return ROOT / "conf" / "model" / f"{name}.yaml"
