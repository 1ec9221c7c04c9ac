"""The runnable experiment files (`experiments/*.py`), found by glob so that a new one is covered by
every test that iterates over them, and their Config classes, imported from the file path."""
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(REPO.glob("experiments/*.py"))


def load_module(path: Path):
    name = f"_experiment_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up while the class is built
        spec.loader.exec_module(mod)
    return sys.modules[name]
