"""Repository hygiene: the README's commands are the ones CI runs, and the library stays free of ComfyUI and of
torchvision/torchaudio."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from helpers.files import REPO_ROOT


def _python_files(folder: str):
    return sorted((REPO_ROOT / folder).rglob("*.py"))


def _imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci_lines = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert len(ci_lines) == 1, ci_lines
    assert ci_lines[0].strip() in readme, "README must show exactly the test command that .ci/run executes"


def test_library_never_imports_comfyui_or_torchvision():
    forbidden = {"comfy", "comfy_api", "folder_paths", "nodes", "server", "torchvision", "torchaudio"}
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(_imported_modules(path) & forbidden)
        for folder in ("latentsync", "train")
        for path in _python_files(folder)
        if _imported_modules(path) & forbidden
    }
    assert not offenders


def test_requirements_do_not_pull_torch_companions():
    for name in ("requirements.txt", "requirements-train.txt", "requirements-test.txt"):
        text = (REPO_ROOT / name).read_text().lower()
        assert not re.search(r"^\s*(torchvision|torchaudio)\b", text, re.M), name


def test_import_is_lazy():
    """`import latentsync` must not import diffusers or torch-heavy modules (the CLI and nodes stay snappy)."""
    code = "import sys, latentsync; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
