"""The node pack as ComfyUI sees it, without ComfyUI: the repository root is a package whose ``__init__`` defines
only ``comfy_entrypoint``, and the pure node helpers import with the library as a relative subpackage.
"""

from __future__ import annotations

import ast
import asyncio
import sys

from helpers.files import REPO_ROOT
from helpers.pack import PACKAGE, pack_module

NODE_MODULES_WITHOUT_COMFY = ("convert", "data")


def test_entry_point_is_v3_only():
    package = pack_module()
    assert asyncio.iscoroutinefunction(package.comfy_entrypoint)
    # ComfyUI prefers NODE_CLASS_MAPPINGS over comfy_entrypoint when both exist.
    assert not hasattr(package, "NODE_CLASS_MAPPINGS") and not hasattr(package, "NODE_DISPLAY_NAME_MAPPINGS")


def test_pure_helpers_import_without_comfyui():
    for name in NODE_MODULES_WITHOUT_COMFY:
        module = pack_module(f"nodes.{name}")
        assert module.__name__ == f"{PACKAGE}.nodes.{name}"
    assert not {"comfy", "comfy_api", "folder_paths"} & set(sys.modules)


def test_pack_never_touches_sys_path_or_imports_latentsync_absolutely():
    offenders = []
    for path in [REPO_ROOT / "__init__.py", *sorted((REPO_ROOT / "nodes").glob("*.py"))]:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            absolute = isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.startswith("latentsync")
            imported = isinstance(node, ast.Import) and any(a.name.split(".")[0] == "latentsync" for a in node.names)
            touches_path = (
                isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys"
            )
            if absolute or imported or touches_path:
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders
