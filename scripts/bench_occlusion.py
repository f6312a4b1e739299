"""How well the point-pixel occlusion filter removes LiDAR points a camera cannot see, on nuScenes-like geometry.

    .venv/bin/python scripts/bench_occlusion.py [--frames 8] [--width 1600]

Generates street scenes (buildings, low walls, poles, parked cars, barrels at
several distances), casts a nuScenes-like LiDAR into them (HDL-32E: 32 beams
from -30.67 to +10.67 degrees, 1084 azimuth steps, 2 cm range noise, at the
LIDAR_TOP position) and places the six cameras where nuScenes has them
relative to the LiDAR (up to 0.9 m away, 0.3 m lower; 1600x900, 70-degree
lenses, 110 at the back). Ground truth comes from pyrender: each camera's
rendered depth of the same geometry. A point is hidden from a camera when it
lies behind the rendered surface at its pixel by more than 1% + 10 cm.

Prints, for each filter setting, side by side on the same frames: how many of
the truly hidden points it removes (recall; target >= 80%) and how many truly
visible points it removes by mistake (target <= 2%).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from cache_schema.cameras import in_image, project_points
from preprocess.pairs import PairConfig, pair_points
from preprocess.render import choose_gl_platform

# nuScenes calibrated_sensor translations in the ego frame (metres) and camera yaws (degrees), scene-0061
LIDAR_EGO = np.array([0.943, 0.000, 1.841])
CAMERAS = {"CAM_FRONT": ((1.703, 0.016, 1.511), 0.0, 70.0), "CAM_FRONT_RIGHT": ((1.550, -0.493, 1.496), -55.0, 70.0),
           "CAM_FRONT_LEFT": ((1.521, 0.495, 1.509), 55.0, 70.0), "CAM_BACK": ((0.028, 0.003, 1.579), 180.0, 110.0),
           "CAM_BACK_LEFT": ((1.036, 0.485, 1.591), 110.0, 70.0),
           "CAM_BACK_RIGHT": ((1.048, -0.480, 1.563), -110.0, 70.0)}
SETTINGS = {
    "no filter": PairConfig(occlusion=False),
    "point depth buffer only (before)": PairConfig(surface=False),
    "LiDAR surface + point buffer (now)": PairConfig(),
}


def rig(width: int, height: int):
    """(DemoSceneConfig of the LiDAR, [(name, K, T_world_to_cam)]) with the LiDAR at world (0, 0, 1.841)."""
    from preprocess.scene_sources.demo_scenes import DemoSceneConfig

    lidar = DemoSceneConfig(lidar_height=float(LIDAR_EGO[2]), beams=32, elevation_deg=(-30.67, 10.67),
                            azimuth_steps=1084, max_range=70.0, range_noise=0.02)
    cams = []
    for name, (position, yaw, hfov) in CAMERAS.items():
        world = np.asarray(position) - LIDAR_EGO + np.array([0.0, 0.0, LIDAR_EGO[2]])
        cfg = dataclasses.replace(lidar, camera_position=tuple(world), hfov_deg=hfov, image_size=(width, height))
        cams.append((name, cfg.K(), cfg.world_to_camera(yaw)))
    return lidar, cams


def rendered_depth(primitives, cams, size: tuple[int, int]) -> list[np.ndarray]:
    """Per camera (H, W) depth of the scene's surfaces (0 where only sky shows)."""
    import pyrender

    from cache_schema.cameras import OPENGL_TO_OPENCV
    from preprocess.scene_sources.demo_scenes import street_scene

    scene, _ = street_scene(primitives)
    renderer = pyrender.OffscreenRenderer(*size)
    out = []
    for _, K, T in cams:
        node = scene.add(pyrender.IntrinsicsCamera(K[0, 0], K[1, 1], K[0, 2], K[1, 2], znear=0.05, zfar=500.0),
                         pose=np.linalg.inv(T) @ OPENGL_TO_OPENCV)
        out.append(renderer.render(scene, flags=pyrender.RenderFlags.DEPTH_ONLY))
        scene.remove_node(node)
    renderer.delete()
    return out


def truth(points: np.ndarray, K: np.ndarray, T: np.ndarray, depth_map: np.ndarray, min_depth: float):
    """(in-image point indices, their hidden flags) against the rendered depth."""
    h, w = depth_map.shape
    uv, depth = project_points(points.astype(np.float64), K, T)
    idx = np.flatnonzero(in_image(uv, depth, w, h, min_depth))
    u, v = np.floor(uv[idx]).astype(int).T
    surface = depth_map[v, u]
    hidden = (surface > 0) & (depth[idx] > surface * 1.01 + 0.10)
    return idx, hidden


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    choose_gl_platform("auto")
    from preprocess.scene_sources.demo_scenes import cast_lidar, scene_primitives

    size = (args.width, args.width * 9 // 16)
    lidar, cams = rig(*size)
    T_lidar = lidar.lidar_to_world()
    counts = {name: np.zeros(4) for name in SETTINGS}  # hidden removed, hidden, visible removed, visible
    seconds = dict.fromkeys(SETTINGS, 0.0)
    total_points = 0
    for frame in range(args.frames):
        primitives = scene_primitives(args.seed, frame)
        points, _ = cast_lidar(primitives, lidar, np.random.default_rng([args.seed, frame]))
        xyz = points[:, :3]
        total_points += len(xyz)
        depth_maps = rendered_depth(primitives, cams, size)
        cam_args = [(K, T @ T_lidar, size) for _, K, T in cams]
        for name, cfg in SETTINGS.items():
            t = time.perf_counter()
            pairs = pair_points(xyz, cam_args, cfg)
            seconds[name] += time.perf_counter() - t
            for c, (_, K, T) in enumerate(cams):
                idx, hidden = truth(xyz, K, T @ T_lidar, depth_maps[c], cfg.min_depth)
                kept = np.isin(idx, pairs.point[pairs.camera == c])
                counts[name] += [(hidden & ~kept).sum(), hidden.sum(), (~hidden & ~kept).sum(), (~hidden).sum()]
    print(f"{args.frames} street frames, {total_points / args.frames:,.0f} LiDAR points each, 6 cameras at "
          f"{size[0]}x{size[1]}; hidden = behind the rendered surface by > 1% + 10 cm\n")
    print("| filter | hidden points removed (recall) | visible points removed | ms per frame |")
    print("|---|---|---|---|")
    for name, (hr, h, vr, v) in counts.items():
        print(f"| {name} | {hr / max(h, 1):.1%} of {int(h):,} | {vr / max(v, 1):.2%} of {int(v):,} | "
              f"{1000 * seconds[name] / args.frames:.0f} |")


if __name__ == "__main__":
    main()
