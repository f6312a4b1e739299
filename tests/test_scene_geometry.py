"""Scene geometry: projection on analytic cases, the nuScenes transform chain with ego motion, KITTI calib."""

from __future__ import annotations

import numpy as np
import pytest
from scene_fixtures import KITTI_P2, KITTI_TR, write_nuscenes, write_semantickitti
from scipy.spatial.transform import Rotation

from cache_schema.cameras import project_points, unproject_pixels
from preprocess.scene_sources import list_scene_source, load_frame
from preprocess.scene_sources.demo_scenes import DemoSceneConfig
from preprocess.scene_sources.nuscenes import lidar_to_camera
from preprocess.scene_sources.semantickitti import read_calib


def test_point_ahead_of_a_camera_lands_on_the_principal_point_and_comes_back():
    cfg = DemoSceneConfig()
    K = cfg.K()
    T = cfg.world_to_camera(0.0) @ cfg.lidar_to_world()
    cam = np.asarray(cfg.camera_position)
    # 10 m straight ahead of the front camera at its height, in the LiDAR frame (LiDAR at z = 1.8)
    point = np.array([[cam[0] + 10.0, cam[1], cam[2] - cfg.lidar_height]])
    uv, depth = project_points(point, K, T)
    np.testing.assert_allclose(uv[0], [K[0, 2], K[1, 2]], atol=1e-9)
    assert depth[0] == pytest.approx(10.0)
    # 1 m to the left and 0.5 m up at 10 m: u = cx - f/10, v = cy - 0.5 f/10 (x right, y down)
    uv, _ = project_points(point + [[0, 1.0, 0.5]], K, T)
    f = K[0, 0]
    np.testing.assert_allclose(uv[0], [K[0, 2] - f / 10, K[1, 2] - 0.5 * f / 10], atol=1e-9)
    # a camera looking left (yaw +90) sees a point on +y at its principal point
    uv, depth = project_points(np.array([[cam[0], 7.0, cam[2] - cfg.lidar_height]]), K,
                               cfg.world_to_camera(90.0) @ cfg.lidar_to_world())
    np.testing.assert_allclose(uv[0], [K[0, 2], K[1, 2]], atol=1e-9)
    rng = np.random.default_rng(0)
    pts = rng.uniform([2, -5, -1], [30, 5, 3], (50, 3))
    uv, depth = project_points(pts, K, T)
    np.testing.assert_allclose(unproject_pixels(uv, depth, K, T), pts, atol=1e-9)


def _devkit_style(points, lidar_calib, lidar_ego, cam_calib, cam_ego):
    """The nuScenes devkit's sequence of point transforms (rotate, translate ... inverse), step by step."""
    def rot(r):
        return Rotation.from_quat(r["rotation"], scalar_first=True)

    p = rot(lidar_calib).apply(points) + lidar_calib["translation"]   # lidar -> ego at lidar time
    p = rot(lidar_ego).apply(p) + lidar_ego["translation"]              # -> global
    p = rot(cam_ego).inv().apply(p - cam_ego["translation"])            # -> ego at camera time
    return rot(cam_calib).inv().apply(p - cam_calib["translation"])     # -> camera


def test_nuscenes_transform_chain_applies_ego_motion(tmp_path):
    tables = write_nuscenes(str(tmp_path), ego_motion=0.5)
    catalog = list_scene_source("nuscenes", str(tmp_path))
    item = catalog.items[0]
    frame = load_frame(item)
    cal = {r["token"]: r for r in tables["calibrated_sensor"]}
    ego = {r["token"]: r for r in tables["ego_pose"]}
    pts = frame.points[:, :3].astype(np.float64)
    for cam_index, cam in enumerate(frame.cameras):
        expected = _devkit_style(pts, cal["c-lidar"], ego["ego-lidar-0"], cal[f"c-{cam.name}"],
                                 ego[f"ego-{cam.name}-0"])
        got = pts @ cam.T_lidar_to_cam[:3, :3].T + cam.T_lidar_to_cam[:3, 3]
        np.testing.assert_allclose(got, expected, atol=1e-9)
    # without the ego motion between the two timestamps the pixels move by more than a pixel
    still = lidar_to_camera(cal["c-lidar"], ego["ego-lidar-0"], cal["c-CAM_FRONT"], ego["ego-lidar-0"])
    front = frame.cameras[0]
    uv_moving, d = project_points(pts, front.K, front.T_lidar_to_cam)
    uv_still, _ = project_points(pts, front.K, still)
    seen = (d > 1) & (uv_moving[:, 0] >= 0) & (uv_moving[:, 0] < 160) & (uv_moving[:, 1] >= 0) & (uv_moving[:, 1] < 90)
    assert seen.sum() > 10
    assert np.median(np.linalg.norm(uv_moving[seen] - uv_still[seen], axis=1)) > 1.0


def test_nuscenes_listing_keyframes_cameras_splits_and_labels(tmp_path):
    write_nuscenes(str(tmp_path))
    catalog = list_scene_source("nuscenes", str(tmp_path))
    assert [it.id for it in catalog.items] == [f"sd-lidar-{f}" for f in range(6)]
    assert [it.split for it in catalog.items] == ["train"] * 4 + ["val"] * 2  # the official mini split
    frame = load_frame(catalog.items[1])
    assert [c.name for c in frame.cameras] == list(catalog.camera_names) and len(frame.cameras) == 6
    assert frame.points.shape == (720, 4) and frame.cameras[0].image.shape == (90, 160, 3)
    names = catalog.label_names
    raw = np.fromfile(str(tmp_path / "lidarseg/v1.0-mini/sd-lidar-1_lidarseg.bin"), np.uint8)
    expected = np.select([raw == 17, raw == 28], [names.index("car"), names.index("manmade")], 255)
    np.testing.assert_array_equal(frame.labels, expected)


def test_semantickitti_projection_matches_p2_tr_and_labels_are_mapped(tmp_path):
    write_semantickitti(str(tmp_path))
    K, T = read_calib(str(tmp_path / "sequences/00/calib.txt"))
    rng = np.random.default_rng(1)
    pts = rng.uniform([5, -3, -1], [20, 3, 1], (30, 3))
    homog = (KITTI_P2 @ np.vstack([KITTI_TR, [0, 0, 0, 1]]) @ np.column_stack([pts, np.ones(30)]).T).T
    uv, depth = project_points(pts, K, T)
    np.testing.assert_allclose(uv, homog[:, :2] / homog[:, 2:], atol=1e-6)
    catalog = list_scene_source("semantickitti", str(tmp_path))
    assert [(it.id, it.split) for it in catalog.items] == [("00/000000", "train"), ("00/000001", "train"),
                                                           ("00/000002", "train"), ("08/000000", "val")]
    frame = load_frame(catalog.items[0])
    names = catalog.label_names
    raw = np.fromfile(str(tmp_path / "sequences/00/labels/000000.label"), np.uint32) & 0xFFFF
    expected = np.select([raw == 40, raw == 50, raw == 252], [names.index("road"), names.index("building"),
                                                              names.index("car")], 255)
    np.testing.assert_array_equal(frame.labels, expected)


def test_nuscenes_sweeps_are_frames_with_the_camera_images_nearest_in_time(tmp_path):
    import json
    import shutil

    tables = write_nuscenes(str(tmp_path), frames=4)
    sweep = dict(next(r for r in tables["sample_data"] if r["token"] == "sd-lidar-1"))
    sweep.update(token="sd-sweep", is_key_frame=False, timestamp=sweep["timestamp"] + 200_000,
                 filename="sweeps/LIDAR_TOP/sweep.pcd.bin")  # nearer to frame 1's images than to frame 2's
    (tmp_path / "sweeps/LIDAR_TOP").mkdir(parents=True)
    shutil.copy(tmp_path / "samples/LIDAR_TOP/frame1.pcd.bin", tmp_path / "sweeps/LIDAR_TOP/sweep.pcd.bin")
    with open(tmp_path / "v1.0-mini/sample_data.json", "w") as fh:
        json.dump([*tables["sample_data"], sweep], fh)
    assert len(list_scene_source("nuscenes", str(tmp_path)).items) == 4  # keyframes only by default
    catalog = list_scene_source("nuscenes", str(tmp_path), sweeps=True)
    ids = [it.id for it in catalog.items]
    assert ids == ["sd-lidar-0", "sd-lidar-1", "sd-sweep", "sd-lidar-2", "sd-lidar-3"]
    cams = catalog.items[2].source["cameras"]
    assert all(c["file"].endswith("frame1.jpg") for c in cams)
    frame = load_frame(catalog.items[2])
    assert len(frame.cameras) == 6 and frame.labels is None  # sweeps carry no lidarseg labels
