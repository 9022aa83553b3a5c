"""Repository hygiene: the README's commands are the ones CI runs, and the library stays free of ComfyUI and of
torchvision/torchaudio."""

from __future__ import annotations

import ast
import os
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


def test_readme_main_command_needs_nothing_beside_the_clone(tmp_path):
    """Command 1 makes its own input (`make-demo-clip`) instead of reading files a user's clone does not have; its
    steps after the install run here as written, from a folder holding nothing else."""
    readme = (REPO_ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("bash scripts/install.sh && "))
    assert "../" not in command
    steps = command.split(" && ")
    assert steps[0] == "bash scripts/install.sh"
    for step in steps[1:]:
        arguments = step.split()
        assert arguments[:3] == [".venv/bin/python", "-m", "latentsync"], step
        if arguments[3] == "lipsync":
            arguments += ["--steps", "1", "--num-frames", "5", "--threads", "1", "--quiet"]  # the mechanics, quickly
        if arguments[3] == "make-demo-clip":
            arguments += ["--seconds", "0.4"]
        result = subprocess.run(
            [sys.executable, *arguments[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=900,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert result.returncode == 0, (step, result.stderr)
    assert (tmp_path / "output" / "demo_synced.mp4").is_file()


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


def test_install_script_passes_torch_spec_as_pip_arguments_and_installs_the_pack(tmp_path):
    """scripts/install.sh with a recording stand-in for .venv/bin/python (no network here): TORCH_SPEC may carry an
    index URL, torch is not imported before NumPy is installed, and the pack itself is installed (the `latentsync`
    command)."""
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    for name in ("scripts/install.sh", "requirements.txt", "requirements-test.txt", "requirements-train.txt"):
        (clone / name).write_text((REPO_ROOT / name).read_text())
    log = tmp_path / "calls.txt"
    python = clone / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\n"
        f'printf "%s|" "$@" >> {log}; echo >> {log}\n'
        f'if [ "$1" = "-c" ]; then exec {sys.executable} "$@"; fi\n'
    )
    python.chmod(0o755)
    index = "https://download.pytorch.org/whl/cu128"
    result = subprocess.run(
        ["bash", "scripts/install.sh"], cwd=clone, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TORCH_SPEC": f"torch==2.13.0 --index-url {index}"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    calls = [line.rstrip("|").split("|") for line in log.read_text().splitlines()]
    assert ["-m", "pip", "install", "--quiet", "torch==2.13.0", "--index-url", index] in calls
    version_check = next(call for call in calls if call[0] == "-c")
    assert "import torch" not in version_check[1]  # reading the version must not import torch (NumPy warning)
    assert ["-m", "pip", "install", "--quiet", "--no-deps", "--editable", "."] in calls
