"""Scene builder: turns a :class:`RoadMap` into pybullet geometry.

All static geometry (lane surfaces with their markings, shoulders, grass, barriers,
roadside objects) is merged into one textured mesh per spatial cell, sharing one
OpenCV-drawn texture atlas. pybullet's CPU renderer processes every triangle of every
visible body, so :meth:`Scene.update_visibility` hides the cells the camera cannot see
(a hidden body costs nothing to render). Barriers and roadside objects are static
triangle-mesh colliders; the ground is a collision plane at z = 0.

pybullet's EGL renderer cannot draw meshes given as vertex arrays: under EGL the cells are
written as Wavefront files instead, one per atlas tile, with the episode's lighting baked
in (see :mod:`envs.sim.mesh_files` and :mod:`envs.sim.egl_shading`), so that EGL frames
look like TinyRenderer frames.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import pybullet as p

from common.config import require
from envs.maps.geometry import FloatArray
from envs.maps.road_map import Lane, Marking, RoadMap
from envs.sim import textures
from envs.sim.egl_shading import EglShading
from envs.sim.mesh_files import MeshFileCache, TileMaterials

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
        barrier_collides: Whether barriers are colliders (crash barriers) or only drawn
            (kerbs, whose crossing the env reports as ``off_road``).
    """

    cell_m: float = 60.0
    view_distance_m: float = 150.0
    grass_band_m: float = 12.0
    barrier_height_m: float = 0.8
    barrier_width_m: float = 0.4
    barrier_collides: bool = True

    def __post_init__(self) -> None:
        require(self.cell_m >= 10.0, "scene.cell_m must be >= 10")
        require(self.view_distance_m > 10.0, "scene.view_distance_m must be > 10")
        require(self.grass_band_m >= 0.0, "scene.grass_band_m must be >= 0")


def build_atlas(rng: np.random.Generator, vary: bool = False,
                ) -> tuple[np.ndarray, dict[str, tuple[float, float, float, float]]]:
    """Draw the texture atlas; return the RGB image and each tile's (u0, v0, u1, v1).

    Tile positions never change, so any atlas fits any geometry. With ``vary`` the base
    colours (asphalt shade, grass hue, facades, paint wear) are drawn from ``rng`` too.
    """
    def shade(rgb: tuple[int, int, int], spread: float) -> tuple[int, int, int]:
        if not vary:
            return rgb
        jitter = rng.uniform(-spread / 3, spread / 3, 3) + rng.uniform(-spread, spread)
        r, g, b = np.clip(np.asarray(rgb) + jitter, 0, 255).astype(int)
        return int(r), int(g), int(b)

    tiles: dict[str, np.ndarray] = {}
    tiles["asphalt"] = cv_resize(textures.asphalt(rng, _TILE_H, _TILE_W,
                                                  shade((98, 98, 102), 18)))
    tiles["grass"] = cv_resize(textures.grass(rng, base=shade((70, 110, 52), 20)))
    tiles["concrete"] = cv_resize(textures.concrete(rng))
    tiles["building"] = cv_resize(textures.facade(rng, shade((160, 140, 120), 40)))
    solid = {"paint": shade((235, 235, 225), 12), "trunk": (95, 70, 45),
             "crown": shade((45, 105, 45), 15), "sign": (30, 90, 170), "pole": (150, 150, 150),
             "dark": shade((40, 40, 40), 25)}
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


class _QuadStore:
    """Quads tagged with a (cell x, cell y, class) key, merged into one mesh per key at
    the end. Deferring the grouping to one sort keeps a reset's ~10^4 quads out of
    per-cell Python loops; within a key the quads keep the order they were added in."""

    def __init__(self) -> None:
        self.keys: list[np.ndarray] = []
        self.corners: list[FloatArray] = []
        self.uvs: list[FloatArray] = []
        self.normals: list[FloatArray] = []

    def add(self, keys: np.ndarray, corners: FloatArray, uv: FloatArray, nrm: FloatArray,
            ) -> None:
        """Append quads: keys (K, 3) int, corners (K, 4, 3), uvs (K, 4, 2), normals (K, 3)."""
        self.keys.append(keys)
        self.corners.append(corners)
        self.uvs.append(uv)
        self.normals.append(nrm)

    def meshes(self) -> list[tuple[tuple[int, int, int], FloatArray, FloatArray, FloatArray,
                                   np.ndarray]]:
        """One mesh per key, in key order: (key, vertices (V, 3), uvs (V, 2), normals
        (V, 3), triangle indices (3T,)), four vertices and two triangles per quad."""
        if not self.keys:
            return []
        keys = np.concatenate(self.keys)
        order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))  # stable: keeps add order
        keys = keys[order]
        corners = np.concatenate(self.corners)[order]
        uvs = np.concatenate(self.uvs)[order]
        normals = np.concatenate(self.normals)[order]
        starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)])
        ends = np.r_[starts[1:], len(keys)]
        # Counter-clockwise seen from the front: TinyRenderer culls back faces.
        tri = np.array([0, 1, 2, 0, 2, 3], dtype=np.int64)
        out = []
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            k = hi - lo
            idx = ((np.arange(k, dtype=np.int64) * 4)[:, None] + tri).reshape(-1)
            out.append(((int(keys[lo, 0]), int(keys[lo, 1]), int(keys[lo, 2])),
                        corners[lo:hi].reshape(-1, 3), uvs[lo:hi].reshape(-1, 2),
                        np.repeat(normals[lo:hi], 4, axis=0), idx))
        return out


@dataclass(frozen=True)
class CellMesh:
    """Merged visual geometry of one semantic class in one cell: centre [m] and arrays."""

    centre: tuple[float, float]
    cls: SemanticClass
    vertices: FloatArray
    uvs: FloatArray
    normals: FloatArray
    indices: np.ndarray


@dataclass(frozen=True)
class SceneGeometry:
    """Everything the scene needs, as plain arrays (cacheable per map and visual seed).

    Attributes:
        atlas: RGB texture atlas.
        cells: Visual meshes, one per cell.
        colliders: Static collision meshes as (vertices, indices) pairs.
    """

    atlas: np.ndarray
    cells: list[CellMesh]
    colliders: list[tuple[FloatArray, np.ndarray]]


class _MeshSet:
    """Visual triangles grouped by spatial cell; colliding ones also by coarser chunk."""

    def __init__(self, cell_m: float, rects: dict[str, tuple[float, float, float, float]],
                 ) -> None:
        self.cell_m = cell_m
        self.chunk_m = 8.0 * cell_m
        self.rects = rects
        self.visual = _QuadStore()
        self.collision = _QuadStore()

    def quads(self, corners: FloatArray, tile: str | np.ndarray, collide: bool | np.ndarray = False,
              cls: SemanticClass | np.ndarray = SemanticClass.STATIC) -> None:
        """Add quads (K, 4, 3) whose corners run counter-clockwise seen from the visible side.

        ``tile``, ``collide`` and ``cls`` are one value for all quads or one per quad
        (``tile`` then as indices into :attr:`tile_names`); per-quad values let a caller
        add many objects in one call while each cell keeps the quads in call order.
        """
        if len(corners) == 0:
            return
        k = len(corners)
        if isinstance(tile, str):
            uv = np.broadcast_to(self._tile_uv(tile), (k, 4, 2))
        else:
            uv = np.stack([self._tile_uv(name) for name in self.tile_names])[tile]
        e1 = corners[:, 1] - corners[:, 0]
        e2 = corners[:, 3] - corners[:, 0]
        nrm = np.cross(e1, e2)
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-9)
        centre = corners.mean(axis=1)[:, :2]
        classes = np.broadcast_to(np.asarray(cls, dtype=int), (k,))
        for c in np.unique(classes):
            sel = classes == c
            self._add(self.visual, self.cell_m, int(c), corners[sel], centre[sel], uv[sel],
                      nrm[sel])
        hit = np.broadcast_to(np.asarray(collide, dtype=bool), (k,))
        if hit.any():
            self._add(self.collision, self.chunk_m, 0, corners[hit], centre[hit], uv[hit],
                      nrm[hit])

    @property
    def tile_names(self) -> list[str]:
        """Atlas tile names, in the order per-quad tile indices refer to."""
        return list(self.rects)

    def _tile_uv(self, tile: str) -> FloatArray:
        u0, v0, u1, v1 = self.rects[tile]
        return np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]])

    @staticmethod
    def _add(store: _QuadStore, size: float, cls: int, corners: FloatArray,
             centre: FloatArray, uv: FloatArray, nrm: FloatArray) -> None:
        cells = np.floor(centre / size).astype(int)
        keys = np.column_stack([cells, np.full(len(cells), cls)])
        store.add(keys, corners, uv, nrm)

    def boxes(self, boxes: FloatArray, tile: np.ndarray, collide: np.ndarray,
              cls: np.ndarray) -> None:
        """Add oriented boxes (sides and top), one row each, in row order.

        Args:
            boxes: (B, 7): centre x, y [m], base height z0 [m], yaw [rad], length, width,
                height [m].
            tile: (B,) atlas tile indices (see :attr:`tile_names`).
            collide: (B,) whether each box is a collider.
            cls: (B,) semantic class of each box.
        """
        if len(boxes) == 0:
            return
        z0, yaw = boxes[:, 2], boxes[:, 3]
        length, width, height = boxes[:, 4], boxes[:, 5], boxes[:, 6]
        c, s = np.cos(yaw), np.sin(yaw)
        sign = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
        local = np.stack([length, width], axis=-1)[:, None, :] * sign  # (B, 4, 2) corners
        rot = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], axis=1)  # (B, 2, 2)
        xy = np.matmul(local / 2.0, rot) + boxes[:, None, :2]
        lo = np.concatenate([xy, np.broadcast_to(z0[:, None, None], (len(boxes), 4, 1))], -1)
        hi = np.concatenate([xy, np.broadcast_to((z0 + height)[:, None, None],
                                                  (len(boxes), 4, 1))], -1)
        nxt = [1, 2, 3, 0]
        sides = np.stack([lo, lo[:, nxt], hi[:, nxt], hi], axis=2)  # (B, 4 faces, 4, 3)
        faces = np.concatenate([sides, hi[:, None]], axis=1).reshape(-1, 4, 3)
        self.quads(faces, np.repeat(tile, 5), np.repeat(collide, 5), np.repeat(cls, 5))


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


def build_geometry(road_map: RoadMap, cfg: SceneConfig,
                   rng: np.random.Generator) -> SceneGeometry:
    """Turn a map into merged, textured meshes (plain arrays; no pybullet).

    Args:
        road_map: The map.
        cfg: Scene parameters.
        rng: Generator for the textures.
    """
    atlas, rects = build_atlas(rng)
    meshes = _MeshSet(cfg.cell_m, rects)
    builder = _GeometryBuilder(road_map, cfg)
    builder._add_roads(meshes)
    builder._add_grass(meshes)
    builder._add_barriers(meshes)
    builder._add_objects(meshes)
    cells = [CellMesh(((cx + 0.5) * cfg.cell_m, (cy + 0.5) * cfg.cell_m), SemanticClass(cls),
                      v, uv, n, idx)
             for (cx, cy, cls), v, uv, n, idx in meshes.visual.meshes()]
    colliders = [(v, idx) for _, v, _, _, idx in meshes.collision.meshes()]
    return SceneGeometry(atlas, cells, colliders)


class _GeometryBuilder:
    def __init__(self, road_map: RoadMap, cfg: SceneConfig) -> None:
        self.map = road_map
        self.cfg = cfg

    def _add_roads(self, meshes: _MeshSet) -> None:
        left_shoulder, right_shoulder = self.map.shoulders
        period = textures.DASH_PERIOD_M
        road = SemanticClass.ROAD
        for lane in self.map.lanes:
            half = lane.width / 2.0
            quads, mids = _lane_quads(lane, 0.03, period, -half, half)
            meshes.quads(quads, "asphalt", cls=road)
            has_right = self._has_right_neighbour(lane, mids)
            # Each lane paints its left boundary, and its right one where nothing is beside it.
            self._add_marking(meshes, lane, lane.left_marking, half, None)
            if not has_right.all():
                self._add_marking(meshes, lane, lane.right_marking, -half, ~has_right)
            if lane.left is None and left_shoulder > 0:
                q, _ = _lane_quads(lane, 0.02, period, half, half + left_shoulder)
                meshes.quads(q, "asphalt", cls=road)
            if right_shoulder > 0 and not has_right.all():
                q, _ = _lane_quads(lane, 0.02, period, -half - right_shoulder, -half)
                meshes.quads(q[~has_right], "asphalt", cls=road)

    @staticmethod
    def _add_marking(meshes: _MeshSet, lane: Lane, marking: Marking, d: FloatArray,
                     keep: np.ndarray | None) -> None:
        """Paint a boundary line at lateral offset ``d``: one quad per dash or per period."""
        if marking == Marking.NONE:
            return
        w = textures.LINE_WIDTH_M / 2.0
        period = textures.DASH_PERIOD_M
        starts = np.arange(0.0, lane.length, period)
        length = textures.DASH_LENGTH_M if marking == Marking.DASHED else period
        ends = np.minimum(starts + length, lane.length)
        if keep is not None:
            ok = np.interp((starts + ends) / 2.0, (np.arange(len(keep)) + 0.5) * period,
                           keep.astype(float)) > 0.5
            starts, ends = starts[ok], ends[ok]
        if len(starts) == 0:
            return
        d_s = np.interp(starts, lane.s, np.broadcast_to(d, lane.s.shape))
        d_e = np.interp(ends, lane.s, np.broadcast_to(d, lane.s.shape))
        z = np.full((len(starts), 1), 0.035)
        a_l = np.hstack([lane.position(starts, d_s + w), z])
        a_r = np.hstack([lane.position(starts, d_s - w), z])
        b_l = np.hstack([lane.position(ends, d_e + w), z])
        b_r = np.hstack([lane.position(ends, d_e - w), z])
        meshes.quads(np.stack([a_l, a_r, b_r, b_l], axis=1), "paint",
                     cls=SemanticClass.LANE_MARKING)

    def _has_right_neighbour(self, lane: Lane, s: FloatArray) -> np.ndarray:
        if lane.right is None:
            return np.zeros(len(s), dtype=bool)
        right = self.map.lane(lane.right)
        st = lane.station_at(s)
        lo, hi = sorted((float(right.station[0]), float(right.station[-1])))
        return np.asarray((st >= lo) & (st <= hi))

    def _add_grass(self, meshes: _MeshSet) -> None:
        """Grass strips beside the outer shoulders (never under the road: overdraw costs)."""
        band = self.cfg.grass_band_m
        if band <= 0:
            return
        left_shoulder, right_shoulder = self.map.shoulders
        period = 2.0 * textures.DASH_PERIOD_M
        near = min(12.0, band)
        for lane in self.map.lanes:
            half = lane.width / 2.0
            sides = [(-1.0, half + right_shoulder)]
            if lane.left is None:
                sides.append((1.0, half + left_shoulder))
            for sign, edge in sides:
                for lo, hi in ((0.0, near), (near, band)):
                    if hi <= lo:
                        continue
                    inner, outer = sign * (edge + lo), sign * (edge + hi)
                    lower, upper = (inner, outer) if sign > 0 else (outer, inner)
                    q, _ = _lane_quads(lane, 0.0, period, lower, upper)
                    centres = q.mean(axis=1)[:, :2]
                    free = ~self.map.near_lane(centres)
                    if free.any():
                        meshes.quads(q[free], "grass", cls=SemanticClass.OTHER)

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
            meshes.quads(np.concatenate(faces), "concrete", collide=self.cfg.barrier_collides)

    def _add_objects(self, meshes: _MeshSet) -> None:
        """Roadside objects as boxes: trees (trunk and crown), signs (pole and plate),
        buildings, parked cars and other obstacles, all added in one call."""
        rows: list[tuple[float, ...]] = []
        tiles: list[str] = []
        collide: list[bool] = []
        classes: list[int] = []

        def box(x: float, y: float, z0: float, yaw: float, size: tuple[float, float, float],
                tile: str, hit: bool, cls: SemanticClass = SemanticClass.STATIC) -> None:
            rows.append((x, y, z0, yaw, *size))
            tiles.append(tile)
            collide.append(hit)
            classes.append(int(cls))

        for obj in self.map.objects:
            length, width, height = obj.size
            if obj.kind == "tree":
                box(obj.x, obj.y, 0.0, obj.yaw, (0.35, 0.35, height * 0.45), "trunk", True)
                box(obj.x, obj.y, height * 0.35, obj.yaw + 0.6,
                    (length, width, height * 0.65), "crown", False)
            elif obj.kind == "sign":
                box(obj.x, obj.y, 0.0, obj.yaw, (0.12, 0.12, height), "pole", True)
                box(obj.x, obj.y, height - 1.0, obj.yaw, (0.05, width, 0.9), "sign", False)
            elif obj.kind == "building":
                box(obj.x, obj.y, 0.0, obj.yaw, obj.size, "building", True)
            elif obj.kind == "parked_car":
                box(obj.x, obj.y, 0.0, obj.yaw, obj.size, "dark", True, SemanticClass.VEHICLE)
            else:
                box(obj.x, obj.y, 0.0, obj.yaw, obj.size, "dark", True)
        names = meshes.tile_names
        meshes.boxes(np.array(rows, dtype=float).reshape(-1, 7),
                     np.array([names.index(t) for t in tiles], dtype=int),
                     np.array(collide, dtype=bool), np.array(classes, dtype=int))


class Scene:
    """The static world of one map inside one pybullet client.

    Collision geometry (ground plane, barriers, objects) is created at once. Visual
    cells are created when they come into view and removed when they leave it: every
    body in the world costs time in each physics substep, even a visual-only one.

    Args:
        client: pybullet client id.
        geometry: Prepared meshes (see :func:`build_geometry`).
        cfg: Scene parameters.
        atlas: A texture atlas from :func:`build_atlas` replacing the geometry's own.
        placeholder_visuals: Give collision-only bodies a tiny transparent visual (needed
            by pybullet's EGL plugin, see below).
        mesh_files: Where to write the cell meshes as files, for pybullet's EGL plugin
            (which cannot draw meshes given as vertex arrays); ``None`` (TinyRenderer)
            passes the arrays directly.
        shading: With ``mesh_files``: the episode's lighting, baked into the files' normals
            and the shapes' colours so that EGL lights the scene as TinyRenderer does
            (``None``: real normals, white).
    """

    def __init__(self, client: int, geometry: SceneGeometry, cfg: SceneConfig,
                 atlas: np.ndarray | None = None, placeholder_visuals: bool = False,
                 mesh_files: MeshFileCache | None = None,
                 shading: EglShading | None = None) -> None:
        self.client = client
        self._mesh_files = mesh_files
        self._shading = shading
        # pybullet's EGL plugin crashes (segfault) on a body whose plane or mesh collision
        # shape has no visual shape; a tiny transparent visual avoids that. Only under
        # EGL, so that TinyRenderer scenes stay exactly as before.
        self._placeholder = (p.createVisualShape(p.GEOM_BOX, halfExtents=[0.01] * 3,
                                                 rgbaColor=[1, 1, 1, 0], physicsClientId=client)
                             if placeholder_visuals else -1)
        self.geometry = geometry
        self.cfg = cfg
        self.body_class: dict[int, SemanticClass] = {}
        image = geometry.atlas if atlas is None else atlas
        self.texture_id = p.loadTexture(textures.texture_file(image), physicsClientId=client)
        self._materials: TileMaterials | None = None
        if mesh_files is not None:
            mesh_files.begin_scene()
            self._materials = mesh_files.tile_materials(image, image.shape[1] // _TILE_W)
        plane = p.createCollisionShape(p.GEOM_PLANE, physicsClientId=client)
        self.ground_id = p.createMultiBody(0, plane, self._placeholder,
                                           useMaximalCoordinates=True, physicsClientId=client)
        p.changeDynamics(self.ground_id, -1, lateralFriction=1.0, physicsClientId=client)
        self.body_class[self.ground_id] = SemanticClass.ROAD
        # pybullet draws a body without a visual shape from its collision shape; the
        # colliders are drawn by the cells instead, so hide them (alpha 0 is skipped).
        _hide_body(client, self.ground_id)
        for verts, idx in geometry.colliders:
            cs = p.createCollisionShape(p.GEOM_MESH, vertices=verts.tolist(),
                                        indices=idx.tolist(),
                                        flags=p.GEOM_FORCE_CONCAVE_TRIMESH, physicsClientId=client)
            body = p.createMultiBody(0, cs, self._placeholder, useMaximalCoordinates=True,
                                     physicsClientId=client)
            _hide_body(client, body)
            self.body_class[int(body)] = SemanticClass.STATIC
        self.cell_centres = np.array([c.centre for c in geometry.cells]).reshape(-1, 2)
        self._shapes: list[int | None] = [None] * len(geometry.cells)
        self.cell_bodies: list[int | None] = [None] * len(geometry.cells)
        self._visible = np.zeros(len(geometry.cells), dtype=bool)

    def _show(self, i: int) -> None:
        if self._mesh_files is not None:
            self._show_from_files(i, self._mesh_files)
            return
        c = self.client
        shape = self._shapes[i]
        if shape is None:
            cell = self.geometry.cells[i]
            shape = p.createVisualShape(p.GEOM_MESH, vertices=cell.vertices.tolist(),
                                        indices=cell.indices.tolist(), uvs=cell.uvs.tolist(),
                                        normals=cell.normals.tolist(), physicsClientId=c)
            self._shapes[i] = shape
        # Static bodies in maximal coordinates cost the solver a third of a multibody.
        body = int(p.createMultiBody(0, -1, shape, useMaximalCoordinates=True,
                                     physicsClientId=c))
        p.changeVisualShape(body, -1, textureUniqueId=self.texture_id, physicsClientId=c)
        self.cell_bodies[i] = body
        self.body_class[body] = self.geometry.cells[i].cls

    def _show_from_files(self, i: int, mesh_files: MeshFileCache) -> None:
        """Show cell ``i`` from ``.obj`` files, one per atlas tile, each with its texture."""
        c = self.client
        cell = self.geometry.cells[i]
        assert self._materials is not None
        shape = self._shapes[i]
        if shape is None:
            shading = self._shading
            normals = cell.normals if shading is None else shading.remap_normals(cell.normals)
            rgb = (1.0, 1.0, 1.0) if shading is None else shading.scene_rgb()
            # Files are only pruned when the next scene begins, so they outlive this one.
            paths = mesh_files.mesh_files(cell.vertices, cell.uvs, normals, cell.indices,
                                          self._materials)
            k = len(paths)
            # The shape colour multiplies the texture (and may exceed 1 under EGL).
            shape = p.createVisualShapeArray(shapeTypes=[p.GEOM_MESH] * k, fileNames=paths,
                                             meshScales=[[1.0, 1.0, 1.0]] * k,
                                             rgbaColors=[[*rgb, 1.0]] * k,
                                             physicsClientId=c)
            self._shapes[i] = shape
        body = int(p.createMultiBody(0, -1, shape, useMaximalCoordinates=True,
                                     physicsClientId=c))
        self.cell_bodies[i] = body
        self.body_class[body] = cell.cls

    def _hide(self, i: int) -> None:
        body = self.cell_bodies[i]
        if body is not None:
            p.removeBody(body, physicsClientId=self.client)
            self.body_class.pop(body, None)
            self.cell_bodies[i] = None

    def update_visibility(self, x: float, y: float, yaw: float) -> None:
        """Keep in the world only the cells within view distance and not behind (x, y, yaw).

        Cells enter and leave in index order, so the sequence of pybullet calls (and with
        it every result) depends only on the trajectory.
        """
        rel = self.cell_centres - (x, y)
        dist = np.hypot(rel[:, 0], rel[:, 1])
        ahead = rel[:, 0] * np.cos(yaw) + rel[:, 1] * np.sin(yaw)
        margin = self.cfg.cell_m * 0.75
        visible = (dist < self.cfg.view_distance_m + margin) & (ahead > -margin)
        for i in np.flatnonzero(visible != self._visible):
            if visible[i]:
                self._show(int(i))
            else:
                self._hide(int(i))
        self._visible = visible

    @property
    def num_visible_cells(self) -> int:
        """Cells currently in the world (for benchmarks)."""
        return int(self._visible.sum())


def _hide_body(client: int, body: int) -> None:
    """Make a body invisible to the renderer (it still collides)."""
    p.changeVisualShape(body, -1, rgbaColor=[1, 1, 1, 0], physicsClientId=client)


def _z(xy: FloatArray, z: float) -> FloatArray:
    return np.column_stack([xy, np.full(len(xy), z)])
