"""Small-face recall: how many faces of each height the detector finds in wide shots, with and without tiles.

Wide shots are generated from the real demo clips (``tests/helpers/face_scenes.py``): a demo head, cut out around its
face, is scaled so its face is ``H`` pixels tall and pasted at a random place on a plain frame. The true box is the face
the detector finds in the unscaled cut-out, scaled the same way; a face counts as found when a detected box overlaps
it by IoU >= 0.3. Three ways to detect are compared:

* ``reference``: the whole frame, with the reference's face filter (80 px tall at least): what the pack did before;
* ``whole``: the whole frame, filter from 32 px;
* ``tiles``: the whole frame plus 640-px tiles (`latentsync.face.search.FaceSearch`), filter from 32 px.

    python scripts/measure_face_recall.py --assets ../shared/fixtures/assets       # prints a Markdown table
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from helpers.face_scenes import Head, Placement, compose, head_frames  # noqa: E402

from latentsync.face.detectors import FaceFilter, create_face_detector  # noqa: E402
from latentsync.face.search import FaceSearch, box_iou  # noqa: E402
from latentsync.media import VideoReader  # noqa: E402

HEIGHTS = (40, 50, 60, 80, 100, 150, 200, 300, 400)
FRAME_SIZES = ((640, 360), (1280, 720), (1920, 1080))
MIN_IOU = 0.3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=Path, default=REPO_ROOT.parent / "shared" / "fixtures" / "assets")
    parser.add_argument("--samples", type=int, default=12, help="placements per face height and frame size")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def true_boxes(head: Head, search: FaceSearch) -> list[np.ndarray | None]:
    """The face box of each unscaled head frame, as the detector sees it."""
    boxes = []
    for image in head.frames:
        faces = search.detector.detect(image)
        boxes.append(faces[0].box if faces else None)
    return boxes


def main(argv=None) -> None:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    small = FaceFilter.for_min_height(32)
    searches = {
        "reference": (FaceSearch(create_face_detector("mediapipe")), False),
        "whole": (FaceSearch(create_face_detector("mediapipe", face_filter=small)), False),
        "tiles": (FaceSearch(create_face_detector("mediapipe", face_filter=small)), True),
    }
    heads = [head_frames(args.assets, name, 50) for name in ("demo1", "demo2")]
    references = [true_boxes(head, searches["whole"][0]) for head in heads]

    found = {(mode, size, height): 0 for mode in searches for size in FRAME_SIZES for height in HEIGHTS}
    seconds = {(mode, size): 0.0 for mode in searches for size in FRAME_SIZES}
    counts = {size: 0 for size in FRAME_SIZES}
    for size in FRAME_SIZES:
        for height in HEIGHTS:
            if height > 0.8 * size[1]:
                continue
            for _ in range(args.samples):
                which = int(rng.integers(len(heads)))
                index = int(rng.integers(len(heads[which].frames)))
                truth = references[which][index]
                if truth is None:
                    continue
                head = Head(heads[which].frames[index : index + 1], truth)
                margin = 0.6 * height
                centre = (rng.uniform(margin, size[0] - margin), rng.uniform(margin, size[1] - margin))
                frame, (box,) = compose(size, [(head.frames[0], head, Placement(height, centre))])
                counts[size] += 1
                for mode, (search, tiles) in searches.items():
                    start = time.perf_counter()
                    faces = search.find(frame, tiles=tiles)
                    seconds[mode, size] += time.perf_counter() - start
                    found[mode, size, height] += any(box_iou(face.box, box) >= MIN_IOU for face in faces)

    print(f"recall over {args.samples} placements per cell (face height in px, rows; frame and mode, columns)\n")
    columns = [(size, mode) for size in FRAME_SIZES for mode in searches]
    print("| face height | " + " | ".join(f"{w}x{h} {mode}" for (w, h), mode in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for height in HEIGHTS:
        cells = []
        for size, mode in columns:
            cells.append("—" if height > 0.8 * size[1] else f"{found[mode, size, height] / args.samples:.2f}")
        print(f"| {height} | " + " | ".join(cells) + " |")
    print("| ms per frame | " + " | ".join(f"{1000 * seconds[m, s] / counts[s]:.0f}" for s, m in columns) + " |")

    # a close-up (demo1's 1080 x 1920 frame 0): the tile pass must not run
    with VideoReader(args.assets / "demo1_video.mp4") as reader:
        closeup = next(iter(reader.frames()))[1]
    search = searches["tiles"][0]
    for label, call in (("detector alone", lambda: search.detector.detect(closeup)),
                        ("search with tiles", lambda: search.find(closeup, tiles=True))):  # fmt: skip
        times = []
        for _ in range(20):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        print(f"close-up 1080x1920, {label}: {1000 * min(times):.1f} ms (min of 20)")


if __name__ == "__main__":
    main()
