"""Built-in demo rooms: procedural furnished rooms with every one of the 13 S3DIS classes, no download.

A room (3-7 m x 3-6 m x 2.6-3.2 m) has a floor, a ceiling and four walls, a
beam under the ceiling from wall to wall, a column against a wall, a door, a
window and a board on the walls (thin boxes slightly proud of the wall), a
bookcase and a sofa against walls, a table (top and four legs), 2-4 chairs
(seat, back, legs) beside it and a few clutter boxes on the floor and the
table. Furniture is placed by rejection (no two objects' bounds closer than
5 cm, nothing in front of the door). Points are drawn on the visible box
faces (faces lying on the floor, walls or ceiling are left out) with
probability proportional to area, exactly ``room_points`` per room, with
per-class colours, colour noise and 5 mm of position noise. Every object is an
instance; boxes follow the S3DIS rule (bounds of each box-class instance).

Every room is generated from (seed, room index) alone, so the same room is
identical on any worker. Rooms go round-robin into ``Area_1`` ... ``Area_A``
(``areas``); the last area is ``test`` unless ``test_area`` says otherwise.
Each room sits at its own offset in its area's coordinates, as S3DIS rooms do
(stored as given; a reader subtracts a room's minimum for room coordinates).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from preprocess.room_sources import BOX_CLASSES, S3DIS_CLASSES, RoomCatalog, RoomData, RoomItem, instance_boxes

C = {name: i for i, name in enumerate(S3DIS_CLASSES)}
COLOURS = np.array([[235, 235, 228], [150, 122, 92], [205, 198, 182], [185, 175, 155], [172, 172, 178],
                    [150, 200, 232], [132, 86, 48], [165, 115, 72], [62, 64, 74], [128, 44, 44], [112, 82, 52],
                    [244, 244, 244], [120, 150, 90]], np.float64)
MARGIN = 0.05       # free space kept between objects (m)
XYZ_NOISE = 0.005   # m
COLOUR_NOISE = 6.0  # per channel, on 0..255

Box = tuple[np.ndarray, np.ndarray]  # (lo, hi) corners, metres
# propose(rng, scale) -> (parts, boxes to keep free as well) or None: one candidate placement of an object
Proposer = Callable[[np.random.Generator, float], "tuple[list[Box], list[Box]] | None"]


def list_rooms(root: str | None = None, rooms: int = 24, room_points: int = 20000, areas: int = 3, seed: int = 0,
               test_area: int | None = None, **_: Any) -> RoomCatalog:
    """``rooms`` procedural rooms, round-robin in ``areas`` areas; ``test_area`` (default: the last) is test."""
    if rooms < 1 or areas < 1 or room_points < 1:
        raise ValueError(f"demo rooms need --rooms, --areas and --room-points >= 1 (got {rooms}, {areas}, "
                         f"{room_points})")
    test_area = areas if test_area is None else test_area
    if not 1 <= test_area <= areas:
        raise ValueError(f"--test-area {test_area}: the demo rooms have areas 1..{areas} (--areas)")
    where = sorted((i % areas + 1, i // areas + 1, i) for i in range(rooms))
    items = tuple(RoomItem(f"Area_{a}/room_{k}", "test" if a == test_area else "train", a,
                           {"dataset": "demo-rooms", "seed": seed, "index": i, "room_points": room_points})
                  for a, k, i in where)
    return RoomCatalog("demo-rooms", "builtin:procedural", S3DIS_CLASSES, BOX_CLASSES, test_area, items)


def load_room(item: RoomItem) -> RoomData:
    src = item.source
    return generate_room(src["seed"], src["index"], src["room_points"])


def generate_room(seed: int, index: int, room_points: int = 20000) -> RoomData:
    """Room ``index`` of the demo set with seed ``seed``: exactly ``room_points`` points."""
    rng = np.random.default_rng([seed, index])
    size, objects = room_objects(rng)
    origin, u, v, label, instance = surfaces(size, objects)
    area = np.linalg.norm(np.cross(u, v), axis=1)
    face = np.repeat(np.arange(len(area)), rng.multinomial(room_points, area / area.sum()))
    s, t = rng.random((2, len(face), 1))
    offset = np.array([rng.uniform(-10, 30), rng.uniform(-10, 30), 0.0])
    points = (origin[face] + s * u[face] + t * v[face] + offset
              + rng.normal(0, XYZ_NOISE, (len(face), 3))).astype(np.float32)
    tint = rng.uniform(0.85, 1.15, (int(instance.max()) + 1, 3))  # one shade per object
    colors = COLOURS[label[face]] * tint[instance[face]] + rng.normal(0, COLOUR_NOISE, (len(face), 3))
    labels, instances = label[face].astype(np.uint8), instance[face].astype(np.int32)
    boxes, box_labels = instance_boxes(points, labels, instances)
    return RoomData(points, np.clip(np.rint(colors), 0, 255).astype(np.uint8), labels, instances, boxes, box_labels)


# ---------------------------------------------------------------- surfaces


def surfaces(size: np.ndarray, objects: list[tuple[int, list[Box]]]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rectangles (origin, u, v: a point is origin + s u + t v) with their class and instance: the six room
    planes, then every face of every part not lying on a room plane (hidden in the floor, a wall, the ceiling)."""
    L, W, H = size
    rects: list[tuple[np.ndarray, np.ndarray, np.ndarray, int, int]] = []
    o, x, y, z = np.zeros(3), np.array([L, 0, 0]), np.array([0, W, 0]), np.array([0, 0, H])
    planes = [(C["floor"], o, x, y), (C["ceiling"], z, x, y), (C["wall"], o, x, z), (C["wall"], y, x, z),
              (C["wall"], o, y, z), (C["wall"], x, y, z)]
    for inst, (cls, org, a, b) in enumerate(planes):
        rects.append((org, a, b, cls, inst))
    for inst, (cls, parts) in enumerate(objects, len(planes)):
        for lo, hi in parts:
            d = hi - lo
            for axis in range(3):
                a, b = (axis + 1) % 3, (axis + 2) % 3
                ua, vb = np.eye(3)[a] * d[a], np.eye(3)[b] * d[b]
                for side in (lo, hi):
                    if d[a] * d[b] <= 0 or side[axis] in (0.0, size[axis]):
                        continue
                    org = lo.copy()
                    org[axis] = side[axis]
                    rects.append((org, ua, vb, cls, inst))
    origin, u, v, label, instance = zip(*rects)
    return np.array(origin), np.array(u), np.array(v), np.array(label), np.array(instance)


# ---------------------------------------------------------------- layout


class RoomPlan:
    """Objects placed so far, and the room's extent: what a new object must not overlap."""

    def __init__(self, size: np.ndarray) -> None:
        self.size = size
        self.taken: list[Box] = []
        self.objects: list[tuple[int, list[Box]]] = []

    def free(self, box: Box, among: list[Box] | None = None) -> bool:
        lo, hi = box
        if (lo < -1e-9).any() or (hi > self.size + 1e-9).any():
            return False
        return not any((lo < h + MARGIN).all() and (hi > lo2 - MARGIN).all() for lo2, h in
                       (self.taken if among is None else among))

    def place(self, rng: np.random.Generator, cls: int, propose: Proposer, tries: int = 200) -> bool:
        """Draw candidates (``propose(rng, scale)``, scale shrinking from 1 to 0.5 over the tries) until one is
        free; record its parts and keep its bounds and its keep-out boxes free. False when none fitted."""
        for t in range(tries):
            candidate = propose(rng, 1.0 - 0.5 * t / tries)
            if candidate is None:
                continue
            parts, keep_out = candidate
            bounds = (np.min([p[0] for p in parts], 0), np.max([p[1] for p in parts], 0))
            if all(self.free(b) for b in (bounds, *keep_out)):
                self.taken += [bounds, *keep_out]
                self.objects.append((cls, parts))
                return True
        return False


def wall_box(size: np.ndarray, wall: int, a0: float, a1: float, d0: float, d1: float, z0: float, z1: float) -> Box:
    """A box against ``wall`` (0: y=0, 1: x=L, 2: y=W, 3: x=0) from ``a0`` to ``a1`` along it, ``d0`` to ``d1``
    out from it into the room, ``z0`` to ``z1`` high."""
    L, W, _ = size
    if wall == 0:
        lo, hi = (a0, d0, z0), (a1, d1, z1)
    elif wall == 2:
        lo, hi = (a0, W - d1, z0), (a1, W - d0, z1)
    elif wall == 1:
        lo, hi = (L - d1, a0, z0), (L - d0, a1, z1)
    else:
        lo, hi = (d0, a0, z0), (d1, a1, z1)
    return np.array(lo, np.float64), np.array(hi, np.float64)


def floor_box(x0: float, y0: float, x1: float, y1: float, z0: float, z1: float) -> Box:
    return np.array([min(x0, x1), min(y0, y1), z0]), np.array([max(x0, x1), max(y0, y1), z1])


def room_objects(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, list[Box]]]]:
    """The room's size (L, W, H) and its objects: (class, parts) in placement order."""
    size = np.array([rng.uniform(3, 7), rng.uniform(3, 6), rng.uniform(2.6, 3.2)])
    L, W, H = size
    room = RoomPlan(size)

    def on_wall(width: tuple[float, float], depth: float, z: tuple[float, float], clear: float = 0.0) -> Proposer:
        """Something against a random wall; ``clear``: metres kept free in front of it (the door's)."""
        def propose(rng: np.random.Generator, scale: float) -> tuple[list[Box], list[Box]] | None:
            wall = int(rng.integers(4))
            length = L if wall % 2 == 0 else W
            w = rng.uniform(*width) * scale
            if w > length - 0.2:
                return None
            a = rng.uniform(0.1, length - 0.1 - w)
            keep_out = [wall_box(size, wall, a, a + w, depth, clear, z[0], z[1])] if clear else []
            return [wall_box(size, wall, a, a + w, 0.0, depth, *z)], keep_out
        return propose

    # a beam under the ceiling, wall to wall (everything else but the column stays below 2.1 m)
    depth = rng.uniform(0.25, min(0.5, H - 2.15))
    width = rng.uniform(0.25, 0.45)
    if rng.random() < 0.5:
        y = rng.uniform(0.5, W - 0.5 - width)
        beam = (np.array([0.0, y, H - depth]), np.array([L, y + width, H]))
    else:
        x = rng.uniform(0.5, L - 0.5 - width)
        beam = (np.array([x, 0.0, H - depth]), np.array([x + width, W, H]))
    room.taken.append(beam)
    room.objects.append((C["beam"], [beam]))
    side = rng.uniform(0.3, 0.6)
    room.place(rng, C["column"], on_wall((side, side), rng.uniform(0.3, 0.6), (0.0, H)))
    door_top = rng.uniform(2.0, 2.1)
    room.place(rng, C["door"], on_wall((0.8, 1.0), 0.05, (0.0, door_top), clear=1.0))
    sill = rng.uniform(0.85, 1.0)
    room.place(rng, C["window"], on_wall((0.8, 2.0), 0.04, (sill, sill + rng.uniform(0.9, 1.1))))
    room.place(rng, C["board"], on_wall((1.2, 2.5), 0.03, (0.9, rng.uniform(1.9, 2.05))))
    room.place(rng, C["bookcase"], on_wall((0.8, 1.2), rng.uniform(0.3, 0.4), (0.0, rng.uniform(1.6, 2.0))))
    room.place(rng, C["sofa"], _sofa(size))
    if room.place(rng, C["table"], _table(size)):
        table = room.objects[-1][1][0]  # its top
        for _ in range(int(rng.integers(2, 5))):
            if not room.place(rng, C["chair"], _chair(size, table), tries=60):
                room.place(rng, C["chair"], _chair(size))
        on_table: list[Box] = []
        for _ in range(int(rng.integers(1, 3))):
            _clutter_on(rng, room, table, on_table)
    for _ in range(int(rng.integers(2, 5))):
        room.place(rng, C["clutter"], _clutter_floor(size), tries=50)
    return size, room.objects


def _sofa(size: np.ndarray) -> Proposer:
    def propose(rng: np.random.Generator, scale: float) -> tuple[list[Box], list[Box]]:
        wall = int(rng.integers(4))
        length = size[0] if wall % 2 == 0 else size[1]
        w, d = min(rng.uniform(1.5, 2.2), 0.7 * length) * scale, rng.uniform(0.8, 0.9) * max(scale, 0.8)
        a = rng.uniform(0.1, length - 0.1 - w)
        back, arm = 0.2, 0.15
        return [wall_box(size, wall, a, a + w, back, d, 0.0, 0.42),          # seat
                wall_box(size, wall, a, a + w, 0.0, back, 0.0, 0.8),         # back
                wall_box(size, wall, a, a + arm, back, d, 0.42, 0.6),        # arms
                wall_box(size, wall, a + w - arm, a + w, back, d, 0.42, 0.6)], []
    return propose


def _table(size: np.ndarray) -> Proposer:
    def propose(rng: np.random.Generator, scale: float) -> tuple[list[Box], list[Box]]:
        lx, ly = rng.uniform(0.8, 1.8) * scale, rng.uniform(0.6, 1.0) * max(scale, 0.7)
        if rng.random() < 0.5:
            lx, ly = ly, lx
        x, y = rng.uniform(0, size[0] - lx), rng.uniform(0, size[1] - ly)
        h, top, leg, inset = rng.uniform(0.72, 0.78), 0.04, 0.05, 0.03
        parts = [floor_box(x, y, x + lx, y + ly, h - top, h)]
        for cx in (x + inset, x + lx - inset - leg):
            for cy in (y + inset, y + ly - inset - leg):
                parts.append(floor_box(cx, cy, cx + leg, cy + leg, 0.0, h - top))
        return parts, []
    return propose


def _chair(size: np.ndarray, table: Box | None = None) -> Proposer:
    """A chair beside ``table`` facing it (anywhere, facing any way, without one)."""
    def propose(rng: np.random.Generator, scale: float) -> tuple[list[Box], list[Box]]:
        s = rng.uniform(0.42, 0.48)
        facing = int(rng.integers(4))  # the back is on this side: 0 -x, 1 +x, 2 -y, 3 +y
        if table is None:
            x, y = rng.uniform(0, size[0] - s), rng.uniform(0, size[1] - s)
        else:
            (tx0, ty0, _), (tx1, ty1, _) = table
            gap = rng.uniform(0.08, 0.3)
            if facing < 2:  # beside an x side of the table, back away from it
                x = tx0 - gap - s if facing == 0 else tx1 + gap
                y = rng.uniform(ty0 - s / 2, ty1 - s / 2)
            else:
                y = ty0 - gap - s if facing == 2 else ty1 + gap
                x = rng.uniform(tx0 - s / 2, tx1 - s / 2)
        seat, top, t, leg = rng.uniform(0.43, 0.47), rng.uniform(0.85, 0.95), 0.04, 0.04
        parts = [floor_box(x, y, x + s, y + s, seat - t, seat)]
        back = {0: (x, y, x + t, y + s), 1: (x + s - t, y, x + s, y + s), 2: (x, y, x + s, y + t),
                3: (x, y + s - t, x + s, y + s)}[facing]
        parts.append(floor_box(*back, seat, top))
        for cx in (x, x + s - leg):
            for cy in (y, y + s - leg):
                parts.append(floor_box(cx, cy, cx + leg, cy + leg, 0.0, seat - t))
        return parts, []
    return propose


def _clutter_floor(size: np.ndarray) -> Proposer:
    def propose(rng: np.random.Generator, scale: float) -> tuple[list[Box], list[Box]]:
        d = rng.uniform([0.1, 0.1, 0.1], [0.4, 0.4, 0.5])
        x, y = rng.uniform(0, size[0] - d[0]), rng.uniform(0, size[1] - d[1])
        return [floor_box(x, y, x + d[0], y + d[1], 0.0, d[2])], []
    return propose


def _clutter_on(rng: np.random.Generator, room: RoomPlan, table: Box, others: list[Box]) -> None:
    """A small box standing on the table top, clear of the other things on it."""
    (x0, y0, _), (x1, y1, z) = table
    for _ in range(30):
        d = rng.uniform([0.08, 0.08, 0.05], [0.3, 0.3, 0.3])
        if d[0] > x1 - x0 or d[1] > y1 - y0:
            continue
        x, y = rng.uniform(x0, x1 - d[0]), rng.uniform(y0, y1 - d[1])
        box = floor_box(x, y, x + d[0], y + d[1], z, z + d[2])
        if room.free(box, among=others):
            others.append(box)
            room.objects.append((C["clutter"], [box]))
            return
