"""Small nuScenes- and SemanticKITTI-layout datasets written by tests, with switches to break frames."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

NU_CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
NU_YAWS = (0, -60, -120, 180, 120, 60)
IMAGE_W, IMAGE_H = 160, 90
K_SMALL = np.array([[100.0, 0, 80], [0, 100.0, 45], [0, 0, 1]])


def quat(R: np.ndarray) -> list[float]:
    return Rotation.from_matrix(R).as_quat(scalar_first=True).tolist()


def yaw_matrix(deg: float) -> np.ndarray:
    return Rotation.from_euler("z", deg, degrees=True).as_matrix()


def camera_to_ego_rotation(yaw_deg: float) -> np.ndarray:
    """Columns: the OpenCV camera axes (right, down, forward) in ego coordinates."""
    a = np.deg2rad(yaw_deg)
    return np.column_stack([[np.sin(a), -np.cos(a), 0], [0, 0, -1], [np.cos(a), np.sin(a), 0]])


def ring_points(n: int = 720, radius: float = 10.0, seed: int = 0) -> np.ndarray:
    """(n, 5) float32 points on a cylinder around the sensor: x, y, z, intensity, ring."""
    rng = np.random.default_rng(seed)
    az = rng.uniform(0, 2 * np.pi, n)
    z = rng.uniform(-1.0, 1.0, n)
    return np.column_stack([radius * np.cos(az), radius * np.sin(az), z, rng.uniform(0, 1, n),
                            rng.integers(0, 32, n)]).astype(np.float32)


def write_nuscenes(root: str, broken: dict[int, str] | None = None, ego_motion: float = 0.5,
                   frames: int = 6) -> dict:
    """A v1.0-mini layout with ``frames`` keyframes in two scenes (train scene-0061, val scene-0103).

    ``broken``: frame index -> one of "missing_image", "truncated", "label_mismatch", "missing_calib",
    "no_points_in_camera". Returns the tables, for tests that recompute transforms.
    """
    broken = broken or {}
    version = os.path.join(root, "v1.0-mini")
    os.makedirs(version, exist_ok=True)
    sensors = [{"token": "s-lidar", "channel": "LIDAR_TOP", "modality": "lidar"}] + [
        {"token": f"s-{c}", "channel": c, "modality": "camera"} for c in NU_CAMERAS]
    calib = [{"token": "c-lidar", "sensor_token": "s-lidar", "translation": [0.9, 0.0, 1.8],
              "rotation": quat(yaw_matrix(5)), "camera_intrinsic": []}]
    for c, yaw in zip(NU_CAMERAS, NU_YAWS):
        calib.append({"token": f"c-{c}", "sensor_token": f"s-{c}", "translation": [1.5, 0.0, 1.6],
                      "rotation": quat(camera_to_ego_rotation(yaw)), "camera_intrinsic": K_SMALL.tolist()})
    scenes = [{"token": "scene-a", "name": "scene-0061"}, {"token": "scene-b", "name": "scene-0103"}]
    categories = [{"token": "cat-0", "name": "noise", "index": 0}, {"token": "cat-1", "name": "vehicle.car", "index": 17},
                  {"token": "cat-2", "name": "static.manmade", "index": 28}]
    samples, sample_data, ego_poses, lidarseg = [], [], [], []
    for f in range(frames):
        t = 1_000_000 + f * 500_000
        scene = "scene-a" if f < frames - 2 else "scene-b"
        samples.append({"token": f"sample-{f}", "timestamp": t, "scene_token": scene})
        heading = 20.0 + f
        pos = np.array([100.0 + 5 * f, 50.0, 0.0])
        ego_poses.append({"token": f"ego-lidar-{f}", "timestamp": t, "translation": pos.tolist(),
                          "rotation": quat(yaw_matrix(heading))})
        lidar_file = f"samples/LIDAR_TOP/frame{f}.pcd.bin"
        sample_data.append({"token": f"sd-lidar-{f}", "sample_token": f"sample-{f}", "ego_pose_token": f"ego-lidar-{f}",
                            "calibrated_sensor_token": "c-lidar", "filename": lidar_file, "fileformat": "pcd",
                            "is_key_frame": True, "timestamp": t, "width": 0, "height": 0})
        points = ring_points(seed=f)
        if broken.get(f) == "no_points_in_camera":
            points[:, 2] = 50.0  # all far above every camera's field of view
        os.makedirs(os.path.join(root, "samples/LIDAR_TOP"), exist_ok=True)
        raw = points.tobytes()
        if broken.get(f) == "truncated":
            raw = raw[: len(raw) - 7]
        with open(os.path.join(root, lidar_file), "wb") as fh:
            fh.write(raw)
        labels = np.where(np.abs(points[:, 1]) > 5, 17, 28).astype(np.uint8)
        labels[::50] = 0
        if broken.get(f) == "label_mismatch":
            labels = labels[:-3]
        os.makedirs(os.path.join(root, "lidarseg/v1.0-mini"), exist_ok=True)
        labels.tofile(os.path.join(root, f"lidarseg/v1.0-mini/sd-lidar-{f}_lidarseg.bin"))
        lidarseg.append({"token": f"ls-{f}", "sample_data_token": f"sd-lidar-{f}",
                         "filename": f"lidarseg/v1.0-mini/sd-lidar-{f}_lidarseg.bin"})
        for c in NU_CAMERAS:
            tc = t + 40_000
            cam_pos = pos + ego_motion * np.array([np.cos(np.deg2rad(heading)), np.sin(np.deg2rad(heading)), 0])
            ego_poses.append({"token": f"ego-{c}-{f}", "timestamp": tc, "translation": cam_pos.tolist(),
                              "rotation": quat(yaw_matrix(heading + 0.5))})
            cam_file = f"samples/{c}/frame{f}.jpg"
            calib_token = "c-missing" if broken.get(f) == "missing_calib" and c == "CAM_BACK" else f"c-{c}"
            sample_data.append({"token": f"sd-{c}-{f}", "sample_token": f"sample-{f}", "ego_pose_token": f"ego-{c}-{f}",
                                "calibrated_sensor_token": calib_token, "filename": cam_file, "fileformat": "jpg",
                                "is_key_frame": True, "timestamp": tc, "width": IMAGE_W, "height": IMAGE_H})
            if broken.get(f) == "missing_image" and c == "CAM_FRONT":
                continue
            os.makedirs(os.path.join(root, f"samples/{c}"), exist_ok=True)
            Image.fromarray(np.full((IMAGE_H, IMAGE_W, 3), 40 * f % 255, np.uint8)).save(os.path.join(root, cam_file))
    tables = {"sensor": sensors, "calibrated_sensor": calib, "scene": scenes, "sample": samples,
              "sample_data": sample_data, "ego_pose": ego_poses, "lidarseg": lidarseg, "category": categories}
    for name, rows in tables.items():
        with open(os.path.join(version, f"{name}.json"), "w") as fh:
            json.dump(rows, fh)
    return tables


KITTI_P2 = np.column_stack([K_SMALL, K_SMALL @ np.array([0.06, 0.0, 0.0])])
KITTI_TR = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.08], [1.0, 0.0, 0.0, -0.27]])


def write_semantickitti(root: str, broken: dict[tuple[str, int], str] | None = None) -> None:
    """Sequence 00 (train, 3 frames) and 08 (val, 1 frame); ``broken`` as for nuScenes plus "missing_calib"."""
    broken = broken or {}
    rng = np.random.default_rng(0)
    for seq, n in (("00", 3), ("08", 1)):
        base = os.path.join(root, "sequences", seq)
        for sub in ("velodyne", "labels", "image_2"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        if not any(s == seq and v == "missing_calib" for (s, _), v in broken.items()):
            with open(os.path.join(base, "calib.txt"), "w") as fh:
                for key, m in (("P0", KITTI_P2), ("P1", KITTI_P2), ("P2", KITTI_P2), ("P3", KITTI_P2),
                               ("Tr", KITTI_TR)):
                    fh.write(f"{key}: " + " ".join(f"{v:.12e}" for v in m.ravel()) + "\n")
        for i in range(n):
            kind = broken.get((seq, i))
            pts = np.column_stack([rng.uniform(5, 20, 400), rng.uniform(-4, 4, 400), rng.uniform(-1.5, 1, 400),
                                   rng.uniform(0, 1, 400)]).astype(np.float32)
            pts.tofile(os.path.join(base, "velodyne", f"{i:06d}.bin"))
            sem = np.where(pts[:, 2] < -1.0, 40, 50).astype(np.uint32)  # road below, building above
            sem[::40] = 252  # moving car -> car
            raw = (np.arange(400, dtype=np.uint32) % 7 << 16) | sem  # instance ids in the upper bits
            if kind == "label_mismatch":
                raw = raw[:-1]
            raw.tofile(os.path.join(base, "labels", f"{i:06d}.label"))
            if kind != "missing_image":
                Image.fromarray(np.full((IMAGE_H, IMAGE_W, 3), 90, np.uint8)).save(
                    os.path.join(base, "image_2", f"{i:06d}.png"))
