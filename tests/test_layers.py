"""The dependency direction, read from the code: launch → webui (tabs, api) → services → generators /
storage. Every import of every module is checked, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package → modules it must never import (a prefix matches the module and everything under it)
FORBIDDEN = {
    "generators": ("webui", "storage", "launch", "gradio"),
    "storage": ("webui", "generators", "launch", "gradio"),
    "webui/services": ("webui.settings", "webui.tabs", "webui.api", "webui.server", "webui.openai_routes",
                       "webui.guard", "launch", "gradio"),
}


def imports_of(path: Path, package: str) -> list[str]:
    """Absolute names of every module `path` imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:-node.level]  # (an __init__ counts as a module of its package)
                module = ".".join([*base, *([node.module] if node.module else [])])
                names += [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                names += [node.module or ""]
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_back_up_the_layers(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = [f"{path.relative_to(ROOT)} imports {name}"
             for path in files for name in imports_of(path, package)
             if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[package])]
    assert not wrong, "\n".join(wrong)
