"""The node pack as ComfyUI sees it, without ComfyUI: the repository root is a package whose ``__init__`` defines
only ``comfy_entrypoint``, and the pure node helpers import with the library as a relative subpackage.

`pack_module` is how the other ``test_nodes_*`` files import ``nodes/...``: ComfyUI loads the pack under a name
made from its folder's path, which a CI clone does not fix, so the tests load the root as a package under a fixed
name instead.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import importlib.util
import sys
from types import ModuleType

from conftest import REPO_ROOT

PACKAGE = "latentsync_comfy_pack"
NODE_MODULES_WITHOUT_COMFY = ("convert", "data")


def pack_module(name: str = "") -> ModuleType:
    """``<repo>/<name>`` (e.g. ``"nodes.convert"``) imported as a submodule of the pack package, or the package."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE}.{name}") if name else sys.modules[PACKAGE]


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
