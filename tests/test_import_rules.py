"""The import direction of the code base, read from the source with ``ast`` (imports inside functions count too).

jobs/ -> training/ -> pipeline/ -> blt_model/; blt_model never imports Ray. Inside pipeline/ (``a <- b``: b may
import a): io <- dataset <- ingest <- preprocess; dataset <- stream; dataset <- stats; and the training stream
never imports Ray (not even through ``pipeline.io.ray_runtime``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# package -> the pipeline sub-packages it may import (itself always allowed)
PIPELINE_LAYERS: dict[str, set[str]] = {
    "io": set(),
    "dataset": {"io"},
    "ingest": {"io", "dataset"},
    "preprocess": {"io", "dataset", "ingest"},
    "stream": {"io", "dataset"},
    "stats": {"io", "dataset"},
}
FORBIDDEN: dict[str, tuple[str, ...]] = {  # module prefix -> imports it must never make
    "blt_model": ("ray", "pipeline", "training", "jobs"),
    "pipeline": ("training", "jobs"),
    "pipeline.stream": ("ray", "pipeline.io.ray_runtime"),
}


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module an import statement in ``source`` names (relative imports resolved against ``module``)."""
    names = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # ``from pipeline import io``
    return names


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(module: str, imports: set[str]) -> list[str]:
    """The rule each import breaks, as ``module -> import (rule)``."""
    found = []
    for prefix, banned in FORBIDDEN.items():
        if _within(module, prefix):
            found += [f"{module} -> {name} (never {bad})" for name in sorted(imports) for bad in banned
                      if _within(name, bad)]
    parts = module.split(".")
    if parts[0] == "pipeline" and len(parts) > 2 and parts[1] in PIPELINE_LAYERS:
        allowed = PIPELINE_LAYERS[parts[1]] | {parts[1]}
        for name in sorted(imports):
            other = name.split(".")
            if other[0] == "pipeline" and len(other) > 1 and other[1] in PIPELINE_LAYERS and other[1] not in allowed:
                found.append(f"{module} -> {name} (pipeline.{parts[1]} may import only {sorted(allowed)})")
    return found


def source_modules() -> list[tuple[str, Path]]:
    out = []
    for top in ("blt_model", "pipeline"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out.append((".".join(parts), path))
    return out


def test_every_import_follows_the_rules():
    modules = source_modules()
    assert len(modules) > 20 and any(m.startswith("pipeline.stream.") for m, _ in modules)
    broken = [v for module, path in modules
              for v in violations(module, imported_modules(path.read_text(), module, path.name == "__init__.py"))]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize(("module", "source", "rule"), [
    ("pipeline.stream.loader", "import ray\n", "never ray"),
    ("pipeline.stream.loader", "def f():\n    from pipeline.io import ray_runtime\n", "never pipeline.io.ray_runtime"),
    ("pipeline.stream.blocks", "from pipeline.preprocess.driver import run_preprocess\n", "may import only"),
    ("pipeline.stream.blocks", "from ..stats import aggregate\n", "may import only"),
    ("pipeline.io.storage", "from pipeline.dataset import layout\n", "may import only"),
    ("pipeline.dataset.manifest", "from pipeline.ingest.readers import ReaderConfig\n", "may import only"),
    ("pipeline.stats.aggregate", "from pipeline.preprocess.calibrate import count_patches\n", "may import only"),
    ("pipeline.preprocess.driver", "from training.config import TrainConfig\n", "never training"),
    ("blt_model.patching", "from pipeline.io.storage import join\n", "never pipeline"),
    ("blt_model.model", "import ray.train\n", "never ray"),
])
def test_a_broken_rule_is_caught(module, source, rule):
    found = violations(module, imported_modules(source, module))
    assert found and all(rule in v for v in found), found


def test_allowed_imports_pass():
    source = "from pipeline.dataset.layout import input_url_of\nfrom ..io.storage import join\nimport numpy\n"
    assert violations("pipeline.preprocess.driver", imported_modules(source, "pipeline.preprocess.driver")) == []
    assert violations("pipeline.stream.loader", imported_modules("from . import blocks\n", "pipeline.stream.loader")) == []
