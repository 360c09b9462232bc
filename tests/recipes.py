"""The packaged recipes the tests build: ``conf/model/<name>.yaml`` by name, and the repository root."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))


def model_recipe(name: str) -> Path:
    return ROOT / "conf" / "model" / f"{name}.yaml"
