"""ComfyUI nodes of the LatentSync pack.

`convert` and `data` import nothing from ComfyUI (the unit tests load them without it); every other module here
builds node classes on ``comfy_api.latest`` and is imported by the pack's ``comfy_entrypoint`` only.
"""
