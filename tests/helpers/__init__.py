"""What the tests share besides fixtures, imported as ``from helpers.<module> import ...`` (pytest puts ``tests/``
on ``sys.path``; the fixtures themselves live in ``tests/conftest.py``):

* `helpers.files`: where the repository and the conformance data are, and readers for the fixture files;
* `helpers.media`: synthetic clips and sounds for the media tests;
* `helpers.face_scenes`: scenes with several moving, speaking faces cut from the demo clips;
* `helpers.pipeline`: a synthetic talking-face clip, its detector and stand-in models for the pipeline tests;
* `helpers.pack`: the node pack imported as ComfyUI imports it.
"""
