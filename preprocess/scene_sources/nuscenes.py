"""nuScenes: the JSON tables read directly (the devkit pins numpy<2), all six cameras.

Transforms are chained as nuScenes defines them: LiDAR -> ego at the LiDAR
timestamp -> global -> ego at the camera timestamp -> camera, so the ego
motion between the two timestamps is applied. Keyframes by default; with
``sweeps=True`` every LiDAR sweep is a frame, each camera taking its image
nearest in time. ``lidarseg`` labels (keyframes only) are mapped to the 16
classes of the nuScenes lidar segmentation benchmark.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from preprocess.errors import BadInput
from preprocess.input_files import checked_path
from preprocess.scene_sources import IGNORE_LABEL, CameraImage, Frame, FrameItem, SceneCatalog, read_image, \
    read_points_bin

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
LIDAR = "LIDAR_TOP"
LABEL_NAMES = ("barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
               "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain",
               "manmade", "vegetation")
# lidarseg category name -> benchmark class (names not listed are ignored: noise, animal, ego, ...)
CATEGORY_TO_CLASS = {
    "movable_object.barrier": "barrier", "vehicle.bicycle": "bicycle", "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus", "vehicle.car": "car", "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle", "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian", "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian", "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer", "vehicle.truck": "truck", "flat.driveable_surface": "driveable_surface",
    "flat.other": "other_flat", "flat.sidewalk": "sidewalk", "flat.terrain": "terrain",
    "static.manmade": "manmade", "static.vegetation": "vegetation",
}
MINI_SPLITS = {"train": ("scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077",
                         "scene-1094", "scene-1100"),
               "val": ("scene-0103", "scene-0916")}


def pose_matrix(translation: list[float], rotation_wxyz: list[float]) -> np.ndarray:
    """4x4 from a nuScenes translation and (w, x, y, z) quaternion."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(rotation_wxyz, scalar_first=True).as_matrix()
    T[:3, 3] = translation
    return T


def lidar_to_camera(lidar_calib: dict, lidar_ego: dict, cam_calib: dict, cam_ego: dict) -> np.ndarray:
    """LiDAR frame (at its timestamp) -> camera frame (at its timestamp), through the global frame."""
    lidar_to_global = pose_matrix(**_pose(lidar_ego)) @ pose_matrix(**_pose(lidar_calib))
    cam_to_global = pose_matrix(**_pose(cam_ego)) @ pose_matrix(**_pose(cam_calib))
    return np.linalg.inv(cam_to_global) @ lidar_to_global


def _pose(record: dict) -> dict:
    return {"translation": record["translation"], "rotation_wxyz": record["rotation"]}


def _table(root: str, version: str, name: str, required: bool = True) -> list[dict]:
    path = os.path.join(root, version, f"{name}.json")
    if not os.path.exists(path):
        if required:
            raise FileNotFoundError(f"nuScenes table {path} is missing (is --root the folder holding {version}/?)")
        return []
    with open(path) as f:
        return json.load(f)


def list_frames(root: str, version: str = "v1.0-mini", sweeps: bool = False, seed: int = 0,
                **_: Any) -> SceneCatalog:
    """Every keyframe (or sweep) LiDAR sample_data of ``version``, ordered by scene and time."""
    tables = {n: {r["token"]: r for r in _table(root, version, n)}
              for n in ("scene", "sample", "sample_data", "calibrated_sensor", "sensor", "ego_pose")}
    lidarseg = {r["sample_data_token"]: r["filename"] for r in _table(root, version, "lidarseg", required=False)}
    categories = _table(root, version, "category", required=False)
    channel_of = {}
    for sd in tables["sample_data"].values():
        cs = tables["calibrated_sensor"].get(sd["calibrated_sensor_token"])
        sensor = tables["sensor"].get(cs["sensor_token"]) if cs else None
        # without its calibration the channel still shows in the path: samples/<CHANNEL>/...
        channel_of[sd["token"]] = sensor["channel"] if sensor else sd["filename"].split("/")[1]
    scene_of_sample = {s["token"]: s["scene_token"] for s in tables["sample"].values()}
    # camera sample_data per (scene, channel), sorted by time, for nearest-in-time lookups
    cams: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for sd in tables["sample_data"].values():
        if channel_of[sd["token"]] in CAMERAS and (sweeps or sd["is_key_frame"]):
            cams[(scene_of_sample[sd["sample_token"]], channel_of[sd["token"]])].append(sd)
    for v in cams.values():
        v.sort(key=lambda r: r["timestamp"])
    scene_names = {t: s["name"] for t, s in tables["scene"].items()}
    split_of, unlisted = _splits(version, scene_names.values(), seed)
    lidar = [sd for sd in tables["sample_data"].values()
             if channel_of[sd["token"]] == LIDAR and (sweeps or sd["is_key_frame"])]
    lidar.sort(key=lambda r: (scene_names[scene_of_sample[r["sample_token"]]], r["timestamp"]))
    items, max_w, max_h = [], 0, 0
    for sd in lidar:
        scene = scene_of_sample[sd["sample_token"]]
        cameras = []
        for channel in CAMERAS:
            options = cams.get((scene, channel), [])
            if sweeps:
                cam = min(options, key=lambda r: abs(r["timestamp"] - sd["timestamp"]), default=None)
            else:
                cam = next((r for r in options if r["sample_token"] == sd["sample_token"]), None)
            cameras.append(None if cam is None else {
                "channel": channel, "file": os.path.join(root, cam["filename"]),
                "calib": tables["calibrated_sensor"].get(cam["calibrated_sensor_token"]),
                "ego": tables["ego_pose"].get(cam["ego_pose_token"])})
            if cam is not None:
                max_w, max_h = max(max_w, cam.get("width", 1600)), max(max_h, cam.get("height", 900))
        items.append(FrameItem(sd["token"], split_of[scene_names[scene]], {
            "dataset": "nuscenes", "root": os.path.abspath(root), "file": os.path.join(root, sd["filename"]),
            "calib": tables["calibrated_sensor"].get(sd["calibrated_sensor_token"]),
            "ego": tables["ego_pose"].get(sd["ego_pose_token"]),
            "lidarseg": os.path.join(root, lidarseg[sd["token"]]) if sd["token"] in lidarseg else None,
            "category_index": {c["name"]: c.get("index", i) for i, c in enumerate(categories)},
            "cameras": cameras}))
    notes = ()
    if unlisted:
        why = ("nuscenes-devkit is not installed, so the official trainval lists are unknown"
               if version != "v1.0-mini" and _devkit_splits() is None else f"the official {version} lists omit them")
        notes = (f"{len(unlisted)} of {len(scene_names)} scenes ({', '.join(unlisted[:5])}"
                 f"{', ...' if len(unlisted) > 5 else ''}) are in no official split ({why}); they were split "
                 f"train/val 80/20 by sha256(seed:scene name) with seed {seed}",)
        warnings.warn(notes[0], stacklevel=2)
    return SceneCatalog("nuscenes", os.path.abspath(root), LABEL_NAMES, CAMERAS, (max_w or 1600, max_h or 900),
                        bool(lidarseg), tuple(items), notes)


def _devkit_splits() -> dict[str, list[str]] | None:
    try:
        from nuscenes.utils.splits import create_splits_scenes
    except ImportError:
        return None
    return create_splits_scenes()


def _splits(version: str, names, seed: int = 0) -> tuple[dict[str, str], list[str]]:
    """Scene name -> split, and the scenes no official list names (they get a seeded hashed split).

    v1.0-mini has its own lists; v1.0-trainval/test use nuscenes-devkit's when it is installed. A scene no
    list names (a newer release, a custom subset) goes to train/val by a hash of the seed and its name.
    """
    from preprocess.sources import hashed_split

    if version == "v1.0-mini":
        official = {k: list(v) for k, v in MINI_SPLITS.items()}
    else:
        official = _devkit_splits() or {}
    listed = {n: s for s in ("train", "val", "test") for n in official.get(s, ())}
    unlisted = sorted(n for n in names if n not in listed)
    hashed = {n: "val" if hashed_split(f"{seed}:{n}") == "test" else "train" for n in unlisted}
    return {n: listed.get(n) or hashed[n] for n in names}, unlisted


def load_frame(item: FrameItem) -> Frame:
    src = item.source
    if not src["calib"] or not src["ego"]:
        raise BadInput(f"missing calibration entry: LiDAR sample_data {item.id} has no calibrated_sensor/ego_pose")
    raw = read_points_bin(src["file"], columns=5, root=src.get("root"), keep=5)
    points, rings = raw[:, :4].copy(), raw[:, 4].astype(np.int16)  # x, y, z, intensity; ring (laser) index
    labels = None
    if src["lidarseg"]:
        raw = np.fromfile(checked_path(src["lidarseg"], src.get("root")), dtype=np.uint8)
        if len(raw) != len(points):
            raise BadInput(f"label count mismatch: {src['lidarseg']} has {len(raw)} labels for {len(points)} points")
        lut = np.full(256, IGNORE_LABEL, np.uint8)
        for name, index in src["category_index"].items():
            if name in CATEGORY_TO_CLASS:
                lut[index] = LABEL_NAMES.index(CATEGORY_TO_CLASS[name])
        labels = lut[raw]
    cameras = []
    for cam in src["cameras"]:
        if cam is None:
            raise BadInput(f"missing camera image: frame {item.id} has no image for one of {CAMERAS}")
        if not cam["calib"] or not cam["ego"] or not cam["calib"].get("camera_intrinsic"):
            raise BadInput(f"missing calibration entry: {cam['channel']} of frame {item.id}")
        T = lidar_to_camera(src["calib"], src["ego"], cam["calib"], cam["ego"])
        cameras.append(CameraImage(cam["channel"], read_image(cam["file"], src.get("root")),
                                   np.asarray(cam["calib"]["camera_intrinsic"], np.float64), T))
    return Frame(points, labels, cameras, rings)
