"""Scene builder: turns a :class:`RoadMap` into pybullet geometry.

All static geometry (lane surfaces with their markings, shoulders, grass, barriers,
roadside objects) is merged into one textured mesh per spatial cell, sharing one
OpenCV-drawn texture atlas. pybullet's CPU renderer processes every triangle of every
visible body, so :meth:`Scene.update_visibility` hides the cells the camera cannot see
(a hidden body costs nothing to render). Barriers and roadside objects are static
triangle-mesh colliders; the ground is a collision plane at z = 0.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import pybullet as p

from common.config import require
from envs.maps.geometry import FloatArray
from envs.maps.road_map import Lane, Marking, RoadMap
from envs.sim import textures

#: Atlas tile size [px] (width, height); tiles sit side by side along the atlas width.
_TILE_W, _TILE_H = 64, 96


class SemanticClass(enum.IntEnum):
    """Semantic classes of scene objects (ids used by segmentation and collisions)."""

    OTHER = 0
    ROAD = 1
    LANE_MARKING = 2
    VEHICLE = 3
    PEDESTRIAN = 4
    STATIC = 5
    SIGNAL = 6


@dataclass(frozen=True)
class SceneConfig:
    """Scene-building parameters.

    Attributes:
        cell_m: Side of the square cells static geometry is merged into [m].
        view_distance_m: Cells farther than this from the camera are hidden [m].
        grass_band_m: Width of rendered grass beside the road [m].
        barrier_height_m: Height of crash barriers [m].
        barrier_width_m: Width of crash barriers [m].
    """

    cell_m: float = 60.0
    view_distance_m: float = 150.0
    grass_band_m: float = 50.0
    barrier_height_m: float = 0.8
    barrier_width_m: float = 0.4

    def __post_init__(self) -> None:
        require(self.cell_m >= 10.0, "scene.cell_m must be >= 10")
        require(self.view_distance_m > 10.0, "scene.view_distance_m must be > 10")
        require(self.grass_band_m >= 0.0, "scene.grass_band_m must be >= 0")


_MARK = {Marking.NONE: "N", Marking.DASHED: "D", Marking.SOLID: "S"}


def build_atlas(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, tuple[float, ...]]]:
    """Draw the texture atlas; return the RGB image and each tile's (u0, v0, u1, v1)."""
    tiles: dict[str, np.ndarray] = {}
    for left in Marking:
        for right in Marking:
            tiles[f"lane_{_MARK[left]}{_MARK[right]}"] = cv_resize(
                textures.lane_texture(rng, 3.75, left, right))
    tiles["grass"] = cv_resize(textures.grass(rng))
    tiles["concrete"] = cv_resize(textures.concrete(rng))
    solid = {"trunk": (95, 70, 45), "crown": (45, 105, 45), "sign": (30, 90, 170),
             "pole": (150, 150, 150), "building": (160, 140, 120), "dark": (40, 40, 40)}
    for name, rgb in solid.items():
        tile = np.empty((_TILE_H, _TILE_W, 3), np.uint8)
        tile[:] = rgb
        tile = np.clip(tile.astype(np.int16) + rng.integers(-6, 7, tile.shape), 0, 255)
        tiles[name] = tile.astype(np.uint8)
    atlas = np.concatenate(list(tiles.values()), axis=1)
    n = len(tiles)
    # Half-pixel inset keeps nearest-neighbour lookups inside their tile.
    du, dv = 0.5 / (n * _TILE_W), 0.5 / _TILE_H
    rects = {name: (i / n + du, dv, (i + 1) / n - du, 1.0 - dv) for i, name in enumerate(tiles)}
    return atlas, rects


def cv_resize(img: np.ndarray) -> np.ndarray:
    """Resize a texture to the atlas tile size (nearest, keeps painted lines crisp)."""
    import cv2

    return cv2.resize(img, (_TILE_W, _TILE_H), interpolation=cv2.INTER_NEAREST)


@dataclass
class _Mesh:
    vertices: list[FloatArray] = field(default_factory=list)
    uvs: list[FloatArray] = field(default_factory=list)
    normals: list[FloatArray] = field(default_factory=list)
    count: int = 0
    indices: list[np.ndarray] = field(default_factory=list)
    collide: bool = False

    def add(self, v: FloatArray, uv: FloatArray, nrm: FloatArray, idx: np.ndarray) -> None:
        self.vertices.append(v)
        self.uvs.append(uv)
        self.normals.append(nrm)
        self.indices.append(idx + self.count)
        self.count += len(v)


class _MeshSet:
    """Triangles grouped by spatial cell, split into visual-only and colliding sets."""

    def __init__(self, cell_m: float, rects: dict[str, tuple[float, ...]]) -> None:
        self.cell_m = cell_m
        self.rects = rects
        self.meshes: dict[tuple[int, int, bool], _Mesh] = {}

    def quads(self, corners: FloatArray, tile: str, collide: bool = False) -> None:
        """Add quads (K, 4, 3) whose corners run counter-clockwise seen from the visible side."""
        u0, v0, u1, v1 = self.rects[tile]
        uv = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]])
        e1 = corners[:, 1] - corners[:, 0]
        e2 = corners[:, 3] - corners[:, 0]
        nrm = np.cross(e1, e2)
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-9)
        centre = corners.mean(axis=1)
        keys = np.floor(centre[:, :2] / self.cell_m).astype(int)
        for key in {tuple(k) for k in keys.tolist()}:
            sel = np.all(keys == key, axis=1)
            c = corners[sel]
            k = len(c)
            mesh = self.meshes.setdefault((key[0], key[1], collide), _Mesh(collide=collide))
            base = (np.arange(k) * 4)[:, None]
            # Counter-clockwise seen from the front: TinyRenderer culls back faces.
            idx = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]], axis=1)
            mesh.add(c.reshape(-1, 3), np.tile(uv, (k, 1)), np.repeat(nrm[sel], 4, axis=0),
                     idx.reshape(-1))

    def box(self, x: float, y: float, z0: float, yaw: float, size: tuple[float, float, float],
            tile: str, collide: bool) -> None:
        """Add an oriented box (sides and top) with its base at height ``z0``."""
        length, width, height = size
        c, s = np.cos(yaw), np.sin(yaw)
        local = np.array([[length, width], [-length, width], [-length, -width], [length, -width]])
        xy = (local / 2.0) @ np.array([[c, s], [-s, c]]) + [x, y]
        lo = np.column_stack([xy, np.full(4, z0)])
        hi = np.column_stack([xy, np.full(4, z0 + height)])
        faces = [np.stack([lo[i], lo[(i + 1) % 4], hi[(i + 1) % 4], hi[i]]) for i in range(4)]
        faces.append(hi[[0, 1, 2, 3]])
        self.quads(np.stack(faces), tile, collide)


def _lane_quads(lane: Lane, z: float, period: float, d_lo: FloatArray | float,
                d_hi: FloatArray | float) -> tuple[FloatArray, FloatArray]:
    """Quads of one period each between lateral offsets ``d_lo`` < ``d_hi`` (left positive)."""
    edges = np.append(np.arange(0.0, lane.length, period), lane.length)
    if len(edges) > 2 and edges[-1] - edges[-2] < 1.0:
        edges = np.delete(edges, -2)
    lo_d = np.interp(edges, lane.s, np.broadcast_to(d_lo, lane.s.shape))
    hi_d = np.interp(edges, lane.s, np.broadcast_to(d_hi, lane.s.shape))
    left = lane.position(edges, hi_d)
    right = lane.position(edges, lo_d)
    zc = np.full((len(edges), 1), z)
    left3, right3 = np.hstack([left, zc]), np.hstack([right, zc])
    quads = np.stack([left3[:-1], right3[:-1], right3[1:], left3[1:]], axis=1)
    mids = 0.5 * (edges[:-1] + edges[1:])
    return quads, mids


class Scene:
    """The static world of one map inside one pybullet client.

    Args:
        client: pybullet client id.
        road_map: The map to build.
        cfg: Scene parameters.
        rng: Generator for textures (visual randomisation comes from the episode seed).
    """

    def __init__(self, client: int, road_map: RoadMap, cfg: SceneConfig,
                 rng: np.random.Generator) -> None:
        self.client = client
        self.map = road_map
        self.cfg = cfg
        self.body_class: dict[int, SemanticClass] = {}
        atlas, rects = build_atlas(rng)
        self.texture_id = p.loadTexture(textures.texture_file(atlas), physicsClientId=client)
        plane = p.createCollisionShape(p.GEOM_PLANE, physicsClientId=client)
        self.ground_id = p.createMultiBody(0, plane, -1, physicsClientId=client)
        p.changeDynamics(self.ground_id, -1, lateralFriction=1.0, physicsClientId=client)
        self.body_class[self.ground_id] = SemanticClass.ROAD
        meshes = _MeshSet(cfg.cell_m, rects)
        self._add_roads(meshes)
        self._add_grass(meshes)
        self._add_barriers(meshes)
        self._add_objects(meshes)
        self.cell_bodies: list[int] = []
        centres = []
        for (cx, cy, collide), mesh in sorted(meshes.meshes.items()):
            body = self._create_body(mesh)
            self.cell_bodies.append(body)
            centres.append(((cx + 0.5) * cfg.cell_m, (cy + 0.5) * cfg.cell_m))
            self.body_class[body] = SemanticClass.STATIC if collide else SemanticClass.ROAD
        self.cell_centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
        self._visible = np.ones(len(self.cell_bodies), dtype=bool)

    def _create_body(self, mesh: _Mesh) -> int:
        c = self.client
        verts = np.concatenate(mesh.vertices)
        idx = np.concatenate(mesh.indices).astype(int)
        vs = p.createVisualShape(p.GEOM_MESH, vertices=verts.tolist(), indices=idx.tolist(),
                                 uvs=np.concatenate(mesh.uvs).tolist(),
                                 normals=np.concatenate(mesh.normals).tolist(),
                                 physicsClientId=c)
        cs = -1
        if mesh.collide:
            cs = p.createCollisionShape(p.GEOM_MESH, vertices=verts.tolist(),
                                        indices=idx.tolist(),
                                        flags=p.GEOM_FORCE_CONCAVE_TRIMESH, physicsClientId=c)
        body = p.createMultiBody(0, cs, vs, physicsClientId=c)
        p.changeVisualShape(body, -1, textureUniqueId=self.texture_id, physicsClientId=c)
        return int(body)

    def _add_roads(self, meshes: _MeshSet) -> None:
        left_shoulder, right_shoulder = self.map.shoulders
        period = textures.DASH_PERIOD_M
        for lane in self.map.lanes:
            half = lane.width / 2.0
            quads, mids = _lane_quads(lane, 0.03, period, -half, half)
            has_right = self._has_right_neighbour(lane, mids)
            for right_drawn in (False, True):
                sel = has_right != right_drawn
                if not sel.any():
                    continue
                right = lane.right_marking if right_drawn else Marking.NONE
                meshes.quads(quads[sel], f"lane_{_MARK[lane.left_marking]}{_MARK[right]}")
            if lane.left is None and left_shoulder > 0:
                q, _ = _lane_quads(lane, 0.02, period, half, half + left_shoulder)
                meshes.quads(q, "lane_NN")
            if right_shoulder > 0 and not has_right.all():
                q, _ = _lane_quads(lane, 0.02, period, -half - right_shoulder, -half)
                meshes.quads(q[~has_right], "lane_NN")

    def _has_right_neighbour(self, lane: Lane, s: FloatArray) -> np.ndarray:
        if lane.right is None:
            return np.zeros(len(s), dtype=bool)
        right = self.map.lane(lane.right)
        st = lane.station_at(s)
        lo, hi = sorted((float(right.station[0]), float(right.station[-1])))
        return np.asarray((st >= lo) & (st <= hi))

    def _add_grass(self, meshes: _MeshSet) -> None:
        tile = 25.0
        band = self.cfg.grass_band_m
        pts = np.concatenate([ln.centre[::5] for ln in self.map.lanes])
        lo = np.floor((pts.min(axis=0) - band) / tile)
        hi = np.ceil((pts.max(axis=0) + band) / tile)
        gx, gy = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
        corners = np.stack([gx.ravel(), gy.ravel()], axis=1) * tile
        centres = corners + tile / 2.0
        keep = np.zeros(len(centres), dtype=bool)
        for chunk in range(0, len(pts), 256):
            d = np.linalg.norm(centres[:, None, :] - pts[None, chunk : chunk + 256, :], axis=2)
            keep |= (d < band + tile).any(axis=1)
        c = corners[keep]
        z = np.zeros((len(c), 1))
        quads = np.stack([np.hstack([c + [0, tile], z]), np.hstack([c, z]),
                          np.hstack([c + [tile, 0], z]), np.hstack([c + [tile, tile], z])], axis=1)
        meshes.quads(quads, "grass")

    def _add_barriers(self, meshes: _MeshSet) -> None:
        h, w = self.cfg.barrier_height_m, self.cfg.barrier_width_m / 2.0
        for line in self.map.barriers:
            pts = line[::4] if len(line) > 8 else line
            if len(pts) < 2:
                continue
            d = np.diff(pts, axis=0)
            d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
            nrm = np.column_stack([-d[:, 1], d[:, 0]])
            a, b = pts[:-1], pts[1:]
            faces = []
            left, right = a + w * nrm, a - w * nrm
            left_b, right_b = b + w * nrm, b - w * nrm
            # Corner order makes each face's front point outwards (and the top upwards).
            faces.append(np.stack([_z(left, 0.0), _z(left, h), _z(left_b, h), _z(left_b, 0.0)],
                                  axis=1))
            faces.append(np.stack([_z(right, 0.0), _z(right_b, 0.0), _z(right_b, h),
                                   _z(right, h)], axis=1))
            faces.append(np.stack([_z(right, h), _z(right_b, h), _z(left_b, h), _z(left, h)],
                                  axis=1))
            meshes.quads(np.concatenate(faces), "concrete", collide=True)

    def _add_objects(self, meshes: _MeshSet) -> None:
        for obj in self.map.objects:
            length, width, height = obj.size
            if obj.kind == "tree":
                meshes.box(obj.x, obj.y, 0.0, obj.yaw, (0.35, 0.35, height * 0.45), "trunk", True)
                meshes.box(obj.x, obj.y, height * 0.35, obj.yaw + 0.6,
                           (length, width, height * 0.65), "crown", False)
            elif obj.kind == "sign":
                meshes.box(obj.x, obj.y, 0.0, obj.yaw, (0.12, 0.12, height), "pole", True)
                meshes.box(obj.x, obj.y, height - 1.0, obj.yaw, (0.05, width, 0.9), "sign", False)
            elif obj.kind == "building":
                meshes.box(obj.x, obj.y, 0.0, obj.yaw, obj.size, "building", True)
            else:
                meshes.box(obj.x, obj.y, 0.0, obj.yaw, obj.size, "dark", True)

    def update_visibility(self, x: float, y: float, yaw: float) -> None:
        """Show only the cells within view distance and not behind the camera at (x, y, yaw)."""
        rel = self.cell_centres - (x, y)
        dist = np.hypot(rel[:, 0], rel[:, 1])
        ahead = rel[:, 0] * np.cos(yaw) + rel[:, 1] * np.sin(yaw)
        margin = self.cfg.cell_m * 0.75
        visible = (dist < self.cfg.view_distance_m + margin) & (ahead > -margin)
        for i in np.flatnonzero(visible != self._visible):
            alpha = 1.0 if visible[i] else 0.0
            p.changeVisualShape(self.cell_bodies[i], -1, rgbaColor=[1, 1, 1, alpha],
                                physicsClientId=self.client)
        self._visible = visible

    @property
    def num_triangles_visible(self) -> int:
        """Triangles in the currently visible cells (for benchmarks)."""
        return int(self._visible.sum())


def _z(xy: FloatArray, z: float) -> FloatArray:
    return np.column_stack([xy, np.full(len(xy), z)])
