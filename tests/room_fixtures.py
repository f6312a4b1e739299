"""A small S3DIS release written by tests: the layout users download, with the release's flaws and worse."""

from __future__ import annotations

import os

import numpy as np

# room -> class files (in name order); each file gets a few points
ROOMS = {
    "Area_1/conferenceRoom_1": ["ceiling_1", "chair_1", "chair_2", "floor_1", "stairs_1", "table_1", "wall_1",
                                "wall_2"],
    "Area_1/hallway_1": ["board_1", "ceiling_1", "door_1", "floor_1"],         # board_1 line 2: no numbers
    "Area_1/office_1": [],                                                     # no Annotations folder
    "Area_2/office_1": ["bookcase_1", "ceiling_1", "column_1", "floor_1"],     # column_1 is empty
    "Area_2/office_2": ["beam_1", "clutter_1", "floor_1", "sofa_1", "window_1"],
    "Area_2/storage_1": ["clutter_1", "floor_1", "wall_1"],
    "Area_5/hallway_6": ["ceiling_1", "floor_1", "wall_1"],                    # ceiling_1 line 3: a stray \x10
    "Area_5/office_1": ["chair_1", "floor_1", "table_1"],
    "Area_5/office_2": ["clutter_1", "clutter_2", "floor_1"],
}
BAD_LINE = ("Area_1/hallway_1", "board_1", 2, "x y z r g b")
EMPTY = ("Area_2/office_1", "column_1")
NO_ANNOTATIONS = "Area_1/office_1"
STRAY = ("Area_5/hallway_6", "ceiling_1", 3)
STRAY_Z = "103.0\x100000"  # a control character inside a number, as the non-aligned release has in Area_5/office_19


def _values(rng: np.random.Generator, n: int) -> np.ndarray:
    xyz = np.round(rng.uniform(-5, 40, (n, 3)), 3)
    return np.column_stack([xyz, rng.integers(0, 256, (n, 3))])


def _line(v: np.ndarray) -> str:
    return "%.3f %.3f %.3f %d %d %d" % tuple(v)


def write_s3dis(root: str) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Write the release under ``root``; returns room id -> [(class file stem, (n, 6) values read back)] for
    every room whose files all hold points (the stray line's value as repaired)."""
    rng = np.random.default_rng(7)
    expected: dict[str, list[tuple[str, np.ndarray]]] = {}
    for room, stems in ROOMS.items():
        folder = os.path.join(root, room)
        os.makedirs(folder)
        with open(os.path.join(folder, f"{room.split('/')[1]}.txt"), "w") as f:
            f.write("0 0 0 0 0 0\n")  # the room's own file: the union of its class files, never read
        if room == NO_ANNOTATIONS:
            continue
        os.makedirs(os.path.join(folder, "Annotations"))
        files = []
        for stem in stems:
            values = _values(rng, int(rng.integers(3, 9)))
            lines = [_line(v) for v in values]
            if (room, stem) == EMPTY:
                values, lines = values[:0], []
            if (room, stem) == BAD_LINE[:2]:
                lines[BAD_LINE[2] - 1] = BAD_LINE[3]
            if (room, stem) == STRAY[:2]:
                values[STRAY[2] - 1, 2] = 103.0
                x, y, _, r, g, b = values[STRAY[2] - 1]
                lines[STRAY[2] - 1] = f"{x:.3f} {y:.3f} {STRAY_Z} {r:.0f} {g:.0f} {b:.0f}"
            with open(os.path.join(folder, "Annotations", f"{stem}.txt"), "w") as f:
                f.write("".join(line + "\n" for line in lines))
            files.append((stem, values))
        expected[room] = files
    for area in ("Area_1", "Area_2", "Area_5"):  # what else the download holds: never rooms
        open(os.path.join(root, area, ".DS_Store"), "w").close()
        open(os.path.join(root, area, f"{area}_alignmentAngle.txt"), "w").close()
    os.makedirs(os.path.join(root, "Area_5", ".hidden_room"))
    open(os.path.join(root, "Area_5", "office_1", "Annotations", "._chair_1.txt"), "wb").close()  # macOS copy
    return expected
