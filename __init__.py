"""LatentSync for ComfyUI: the pack's entry point (V3 node schema).

ComfyUI imports this folder as a package and calls `comfy_entrypoint`. The nodes and the library are imported
relatively (``.nodes``, ``.latentsync``), never through ``sys.path``, so another pack that ships a top-level
``latentsync`` package cannot shadow ours. Importing this file alone needs no ComfyUI (pytest imports it, as the
repository root is a package).
"""


async def comfy_entrypoint():
    from .nodes.extension import LatentSyncExtension

    return LatentSyncExtension()
