"""The node pack imported as ComfyUI imports it: the repository root as a package, ``nodes/`` and the library as
its subpackages (the nodes import the library relatively).

ComfyUI loads the pack under a name made from its folder's path, which a CI clone does not fix, so the tests load
the root under the fixed name `PACKAGE` instead. Library values the nodes take or raise (errors, settings) must
come from the pack's own copy of the library: ``pack_module("latentsync.errors")``, not ``latentsync.errors``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from .files import REPO_ROOT

PACKAGE = "latentsync_comfy_pack"


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
