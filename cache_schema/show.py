"""Pictures of a cache, rendered to PNG on a CPU with no display (`cache show`).

Objects caches: a contact sheet, one row per shape: its rendered views (RGB and
depth), its points seen from two angles, its category and captions; failed
rows are listed with their reasons. Scenes caches: for one frame, every camera
image with its paired LiDAR points drawn at their stored pixels (coloured by
depth or by label) and a bird's-eye view of the frame. Rooms caches: one room
from above, coloured by class (with its boxes) and by its own colours.

matplotlib is needed (the ``viz`` extra); the contract itself does not need it.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np

from cache_schema.layout import DONE, FAILED
from cache_schema.reader import ObjectCache, RoomCache, SceneCache, open_cache

MAX_VIEWS = 4


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError("`cache show` draws with matplotlib: pip install 'teacher-cache[viz]'") from e
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def show(url: str, out: str, rows: int = 6, ids: list[str] | None = None, frame: int | None = None,
         color_by: str = "depth", dpi: int = 100, storage_options: dict | None = None) -> str:
    """Draw the sheet of the cache at ``url`` into the PNG ``out``; returns ``out``."""
    cache = open_cache(url, storage_options, allow_incomplete=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if isinstance(cache, ObjectCache):
        objects_sheet(cache, out, rows, ids, dpi)
    elif isinstance(cache, RoomCache):
        rooms_sheet(cache, out, frame, ids, dpi)
    else:
        scenes_sheet(cache, out, frame, ids, color_by, dpi)
    return out


def _select(cache, rows: int, ids: list[str] | None) -> list[int]:
    all_ids = [str(i) for i in cache.ids]
    if ids:
        missing = [i for i in ids if i not in all_ids]
        if missing:
            raise KeyError(f"{cache.loc.url} has no rows with ids {missing[:5]}")
        return [all_ids.index(i) for i in ids]
    done = np.flatnonzero(cache.status == DONE)
    if isinstance(cache, ObjectCache) and len(done):  # one shape per category first, then the rest in order
        labels = cache.labels[done]
        firsts = [int(done[np.flatnonzero(labels == c)[0]]) for c in np.unique(labels)]
        rest = [int(r) for r in done if int(r) not in set(firsts)]
        return (firsts + rest)[:rows]
    return [int(r) for r in done[:rows]]


# ---------------------------------------------------------------- objects


def view_points(points: np.ndarray, azimuth: float, elevation: float = 25.0) -> np.ndarray:
    """Points turned by ``azimuth`` about +y (up), then tilted by ``elevation``: x right, y up, z towards us."""
    a, e = np.deg2rad(azimuth), np.deg2rad(elevation)
    yaw = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
    tilt = np.array([[1, 0, 0], [0, np.cos(e), np.sin(e)], [0, -np.sin(e), np.cos(e)]])
    return points @ yaw @ tilt


def objects_sheet(cache: ObjectCache, out: str, rows: int = 6, ids: list[str] | None = None, dpi: int = 100) -> None:
    plt = _pyplot()
    selected = _select(cache, rows, ids)
    has_rgb = "views/rgb" in {a.path for a in cache.layout.arrays}
    has_depth = "views/depth" in {a.path for a in cache.layout.arrays}
    views = min(MAX_VIEWS, cache.array("views/camera").shape[0]) if "views/camera" in cache.group else 0
    cols = views * (has_rgb + has_depth) + 3
    failed = np.flatnonzero(cache.status == FAILED)
    fail_lines = min(len(failed), 15)
    height = 1.9 * max(len(selected), 1) + (0.25 * fail_lines + 0.6 if len(failed) else 0) + 0.6
    fig = plt.figure(figsize=(1.9 * cols + 1.5, height), dpi=dpi)
    top = 1 - 0.6 / height
    bottom = (0.25 * fail_lines + 0.6) / height if len(failed) else 0.02
    grid = fig.add_gridspec(max(len(selected), 1), cols, left=0.02, right=0.95, top=top, bottom=bottom,
                            wspace=0.25, hspace=0.45, width_ratios=[1] * (cols - 1) + [2.5])
    fig.suptitle(f"{cache.loc.url}: {len(selected)} of {cache.num_rows} shapes "
                 f"({int((cache.status == DONE).sum())} done, {len(failed)} failed)", fontsize=12)
    labels, names = cache.labels, cache.label_names
    depth_range = (0.0, 1.0)
    if has_depth and selected:
        d = cache.array("views/depth").oindex[sorted(selected), :views].astype(np.float32)
        depth_range = (float(d[d > 0].min()), float(d[d > 0].max())) if (d > 0).any() else depth_range
    for r, row in enumerate(selected):
        col = 0
        rgb = cache.array("views/rgb")[row, :views] if has_rgb else None
        depth = cache.array("views/depth")[row, :views].astype(np.float32) if has_depth else None
        for v in range(views if has_rgb else 0):
            ax = fig.add_subplot(grid[r, col])
            ax.imshow(rgb[v])
            ax.set_title(f"view {v} RGB", fontsize=8)
            ax.axis("off")
            col += 1
        for v in range(views if has_depth else 0):
            ax = fig.add_subplot(grid[r, col])
            im = ax.imshow(np.ma.masked_equal(depth[v], 0), cmap="viridis", vmin=depth_range[0], vmax=depth_range[1])
            ax.set_title(f"view {v} depth", fontsize=8)
            ax.axis("off")
            col += 1
        points = cache.points([row])[0]
        points = points[np.random.default_rng(0).permutation(len(points))[:2048]]
        for angle in (30, 120):
            ax = fig.add_subplot(grid[r, col])
            p = view_points(points, angle)
            order = np.argsort(p[:, 2])
            ax.scatter(p[order, 0], p[order, 1], c=p[order, 2], s=1, cmap="magma")
            ax.set_aspect("equal")
            ax.set_xlim(-1.05, 1.05)
            ax.set_ylim(-1.05, 1.05)
            ax.set_title(f"points (az {angle}°, el 25°)", fontsize=8)
            ax.set_xlabel("x (unit sphere)", fontsize=7)
            ax.set_ylabel("y (up)", fontsize=7)
            ax.tick_params(labelsize=6)
            col += 1
        ax = fig.add_subplot(grid[r, col])
        ax.axis("off")
        has_captions = "captions" in cache.group  # points caches have none
        caption_lines = [textwrap.shorten(str(c), 70) for c in cache.captions([row])[0]][:4] if has_captions else []
        category = names[int(labels[row])] if names else str(labels[row])
        ax.text(0, 1, f"{cache.ids[row]}\ncategory: {category}\n" + "\n".join(f"• {c}" for c in caption_lines),
                va="top", ha="left", fontsize=8, family="monospace", transform=ax.transAxes)
    if has_depth and views and selected:
        cax = fig.add_axes((0.962, bottom + 0.05, 0.006, top - bottom - 0.1))
        cbar = fig.colorbar(im, cax=cax)
        cbar.set_label("depth (unit-sphere units)", fontsize=8)
        cbar.ax.tick_params(labelsize=7)
    if len(failed):
        reasons = cache.array(cache.layout.status_path + "_reason")[:]
        text = "\n".join(f"{cache.ids[i]}: {textwrap.shorten(str(reasons[i]), 140)}" for i in failed[:15])
        more = f"\n... and {len(failed) - 15} more" if len(failed) > 15 else ""
        fig.text(0.02, bottom - 0.1 / height, f"failed rows ({len(failed)}):\n{text}{more}", va="top", fontsize=8,
                 family="monospace", color="darkred")
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


# ---------------------------------------------------------------- scenes


def overlay_image(image: np.ndarray, uv: np.ndarray, colors: np.ndarray, radius: int = 1) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 with a (2r+1)-pixel square of ``colors`` (n, 3) uint8 at each ``uv``.

    Points are drawn in the array itself (not as plot markers) so they sit on
    exactly the pixels the cache stores: pixel (row, col) = (floor(v), floor(u)).
    """
    out = image.copy()
    h, w = out.shape[:2]
    cols, rows = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            r, c = rows + dy, cols + dx
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            out[r[ok], c[ok]] = colors[ok]
    return out


def _colors(values: np.ndarray, cmap, vmin: float, vmax: float) -> np.ndarray:
    norm = np.clip((values - vmin) / max(vmax - vmin, 1e-9), 0, 1)
    return (np.asarray(cmap(norm))[:, :3] * 255).astype(np.uint8)


def scenes_sheet(cache: SceneCache, out: str, frame: int | None = None, ids: list[str] | None = None,
                 color_by: str = "depth", dpi: int = 100) -> None:
    plt = _pyplot()
    from matplotlib import cm
    from matplotlib.colors import ListedColormap, Normalize

    if color_by not in ("depth", "label"):
        raise ValueError(f"--color-by is depth or label, got {color_by!r}")
    if frame is None:
        frame = _select(cache, 1, ids[:1] if ids else None)[0] if (ids or (cache.status == DONE).any()) else 0
    f = cache.frame(frame)
    if color_by == "label" and f.labels is None:
        raise ValueError(f"{cache.loc.url} stores no labels; use --color-by depth")
    cams = len(f.K)
    names = cache.attrs.dataset.get("cameras", [f"camera {c}" for c in range(cams)])
    has_rgb = "cameras/rgb" in {a.path for a in cache.layout.arrays}
    label_names = tuple(cache.attrs.label_names)
    label_cmap = ListedColormap(cm.tab20(np.linspace(0, 1, 20))[: max(len(label_names), 1)])
    depth_cmap = cm.turbo
    cols = min(cams, 3)
    cam_rows = -(-cams // cols)
    w0, h0 = (int(x) for x in f.image_size.max(axis=0))
    panel_w = 5.0
    panel_h = panel_w * h0 / max(w0, 1)
    fig = plt.figure(figsize=(panel_w * cols + 1.2, panel_h * cam_rows + 6.5), dpi=dpi)
    grid = fig.add_gridspec(cam_rows + 1, cols, height_ratios=[panel_h] * cam_rows + [5.5], hspace=0.35,
                            wspace=0.15, left=0.05, right=0.92, top=0.93, bottom=0.05)
    fig.suptitle(f"{cache.loc.url}: frame {frame} ({f.id}), {len(f.points)} points, {len(f.pair_point)} "
                 f"point-pixel pairs, coloured by {color_by}", fontsize=12)
    xyz = f.points[:, :3].astype(np.float64)
    depth_max = 0.0
    for c in range(cams):
        sel = f.pair_camera == c
        w, h = (int(x) for x in f.image_size[c])
        image = cache.array("cameras/rgb")[frame, c, :h, :w] if has_rgb else np.full((h, w, 3), 235, np.uint8)
        pts = xyz[f.pair_point[sel]]
        T = f.T_lidar_to_cam[c].astype(np.float64)
        depth = pts @ T[:3, :3].T[:, 2] + T[2, 3]
        depth_max = max(depth_max, float(depth.max()) if len(depth) else 0.0)
        if color_by == "depth":
            colors = _colors(depth, depth_cmap, 0, 50)
        else:
            colors = (np.asarray(label_cmap(f.labels[f.pair_point[sel]] % label_cmap.N))[:, :3] * 255).astype(np.uint8)
            colors[f.labels[f.pair_point[sel]] == 255] = 128
        ax = fig.add_subplot(grid[c // cols, c % cols])
        ax.imshow(overlay_image(image, f.pair_uv[sel], colors, radius=1), extent=(0, w, h, 0))
        ax.set_title(f"{names[c] if c < len(names) else c}: {int(sel.sum())} pairs"
                     + ("" if has_rgb else " (no images stored: build with --images)"), fontsize=9)
        ax.set_xlabel("u (px)", fontsize=8)
        ax.set_ylabel("v (px)", fontsize=8)
        ax.tick_params(labelsize=7)
    bev = fig.add_subplot(grid[cam_rows, :])
    if color_by == "label":
        values, cmap, norm = np.where(f.labels == 255, -1, f.labels), label_cmap, Normalize(0, label_cmap.N - 1)
    else:
        values, cmap, norm = np.linalg.norm(xyz[:, :2], axis=1), depth_cmap, Normalize(0, 50)
    seen = np.zeros(len(xyz), bool)
    seen[f.pair_point] = True
    bev.scatter(xyz[~seen, 0], xyz[~seen, 1], s=0.3, c="lightgrey", label="not seen by a camera")
    sc = bev.scatter(xyz[seen, 0], xyz[seen, 1], s=0.6, c=values[seen], cmap=cmap, norm=norm)
    bev.set_aspect("equal")
    bev.set_title("bird's-eye view (LiDAR frame)", fontsize=10)
    bev.set_xlabel("x (m, forward)", fontsize=8)
    bev.set_ylabel("y (m, left)", fontsize=8)
    bev.tick_params(labelsize=7)
    bev.legend(loc="upper right", fontsize=7, markerscale=10)
    cax = fig.add_axes((0.935, 0.05, 0.012, 0.88))
    if color_by == "label":
        cbar = fig.colorbar(cm.ScalarMappable(norm=Normalize(-0.5, label_cmap.N - 0.5), cmap=label_cmap), cax=cax,
                            ticks=range(label_cmap.N))
        cbar.ax.set_yticklabels(list(label_names)[: label_cmap.N], fontsize=7)
        cbar.set_label("class (grey: ignored)", fontsize=8)
    else:
        cbar = fig.colorbar(sc, cax=cax)
        cbar.set_label("camera depth in images, range in the BEV (m)", fontsize=8)
        cbar.ax.tick_params(labelsize=7)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


MAX_SHOWN_POINTS = 200_000  # a room of a million points is drawn from an even subsample


def rooms_sheet(cache: RoomCache, out: str, room: int | None = None, ids: list[str] | None = None,
                dpi: int = 100) -> None:
    """One room from above: coloured by class with its boxes, and in its own colours."""
    plt = _pyplot()
    from matplotlib import cm
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.patches import Rectangle

    if room is None:
        room = _select(cache, 1, ids[:1] if ids else None)[0] if (ids or (cache.status == DONE).any()) else 0
    r = cache.room(room)
    keep = np.arange(len(r.points))
    if len(keep) > MAX_SHOWN_POINTS:
        keep = np.linspace(0, len(keep) - 1, MAX_SHOWN_POINTS).astype(int)
    xyz, labels, colors = r.points[keep], r.labels[keep], r.colors[keep]
    order = np.argsort(xyz[:, 2])  # higher points drawn last: the picture looks down through the ceiling-less room
    names = tuple(cache.label_names)
    cmap = ListedColormap(cm.tab20(np.linspace(0, 1, 20))[: max(len(names), 1)])
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5), dpi=dpi)
    fig.suptitle(f"{cache.loc.url}: room {room} ({r.id}), {len(r.points)} points, {len(r.boxes)} boxes"
                 + (f" (drawn: {len(keep)})" if len(keep) < len(r.points) else ""), fontsize=11)
    not_top = labels[order] != (names.index("ceiling") if "ceiling" in names else -1)
    shown = order[not_top]
    values = np.where(labels[shown] == 255, -1, labels[shown])
    axes[0].scatter(xyz[shown, 0], xyz[shown, 1], s=0.4, c=values, cmap=cmap, norm=Normalize(0, cmap.N - 1))
    box_names = cache.box_classes
    for (cx, cy, _, dx, dy, _), b in zip(r.boxes, r.box_labels):
        axes[0].add_patch(Rectangle((cx - dx / 2, cy - dy / 2), dx, dy, fill=False, lw=0.8, ec="black"))
        if b < len(box_names):
            axes[0].text(cx, cy, box_names[b], fontsize=6, ha="center", va="center")
    axes[0].set_title("by class, from above (ceiling hidden), boxes outlined", fontsize=9)
    axes[1].scatter(xyz[shown, 0], xyz[shown, 1], s=0.4, c=colors[shown] / 255.0)
    axes[1].set_title("its own colours, from above (ceiling hidden)", fontsize=9)
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)", fontsize=8)
        ax.set_ylabel("y (m)", fontsize=8)
        ax.tick_params(labelsize=7)
    cbar = fig.colorbar(cm.ScalarMappable(norm=Normalize(-0.5, cmap.N - 0.5), cmap=cmap), ax=axes[0],
                        ticks=range(cmap.N), fraction=0.04)
    cbar.ax.set_yticklabels(list(names)[: cmap.N], fontsize=7)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
