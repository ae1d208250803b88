"""Scene meshes as Wavefront files, for pybullet's EGL renderer.

pybullet's EGL plugin converts visual shapes to OpenGL meshes with its own loader, which
reads mesh *files* only: a mesh created from vertex arrays (how :class:`envs.sim.scene.Scene`
builds the road for the TinyRenderer) is skipped with "issue extracting mesh from
COLLADA/STL file", so under EGL the road, markings, grass, barriers and roadside objects
would be missing. :class:`MeshFileCache` writes each cell mesh as an ``.obj`` file instead.

The EGL plugin samples textures with mipmaps and bilinear filtering, so a shared atlas
would bleed neighbouring tiles into each other at a distance (grey asphalt turning green
next to the grass tile). Each atlas tile therefore becomes a texture of its own, and each
cell mesh one ``.obj`` per tile, whose ``.mtl`` names that texture.

Files are named after a hash of their content, so a reset on the same map and texture
variant reuses them; they live in a per-cache temporary folder that
:meth:`MeshFileCache.close` (or garbage collection, or interpreter exit) removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

#: Scenes after which a file nobody asked for is deleted (bounds the folder's size when
#: every episode brings a new map, while a few recent maps stay cached).
KEEP_SCENES = 4


@dataclass(frozen=True)
class TileMaterials:
    """The per-tile materials of one texture atlas.

    Attributes:
        names: ``.mtl`` file name of each tile, in atlas order (left to right).
    """

    names: tuple[str, ...]


class MeshFileCache:
    """Writes meshes and per-tile materials as Wavefront files in a private folder.

    Args:
        parent: Folder to create the private folder in (default: the system temp folder).
    """

    def __init__(self, parent: str | Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bulletdrive-meshes-", dir=parent))
        # Removes the folder when the cache is collected or at exit, if close() was not called.
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.root), True)
        #: File name -> scene generation that last used it.
        self._last_used: dict[str, int] = {}
        self._generation = 0

    def begin_scene(self) -> None:
        """Start a new scene: delete files that the last ``KEEP_SCENES`` scenes did not use."""
        self._generation += 1
        cutoff = self._generation - KEEP_SCENES
        for name in [n for n, g in self._last_used.items() if g < cutoff]:
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()
            del self._last_used[name]

    def tile_materials(self, atlas: NDArray[Any], num_tiles: int) -> TileMaterials:
        """Write each atlas tile as a PNG texture with a material naming it.

        Args:
            atlas: RGB atlas whose ``num_tiles`` tiles sit side by side along its width.
            num_tiles: Number of tiles.
        """
        tile_w = atlas.shape[1] // num_tiles
        names = []
        for t in range(num_tiles):
            tile = np.ascontiguousarray(atlas[:, t * tile_w : (t + 1) * tile_w])
            digest = _digest(tile.tobytes(), str(tile.shape).encode())
            png = f"{digest}.png"
            self._write(png, _png_bytes(tile))
            # The EGL plugin resolves map_Kd relative to the .obj's folder.
            mtl = f"{digest}.mtl"
            text = f"newmtl tile\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nmap_Kd {png}\n"
            self._write(mtl, text.encode())
            names.append(mtl)
        return TileMaterials(tuple(names))

    def mesh_files(self, vertices: NDArray[Any], uvs: NDArray[Any], normals: NDArray[Any],
                   indices: NDArray[Any], materials: TileMaterials) -> list[str]:
        """Write a mesh textured with atlas coordinates as one ``.obj`` per atlas tile.

        Args:
            vertices: (N, 3) positions [m].
            uvs: (N, 2) atlas texture coordinates; each triangle lies within one tile.
            normals: (N, 3) vertex normals.
            indices: (3 M,) triangle vertex indices, counter-clockwise from the front.
            materials: Tile materials of the atlas (see :meth:`tile_materials`).

        Returns:
            Paths of the ``.obj`` files, one per tile used, in tile order.
        """
        n_tiles = len(materials.names)
        tris = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
        # Tile of each triangle: atlas uvs are inset half a texel inside their tile.
        tile_of = np.clip(np.floor(uvs[tris[:, 0], 0] * n_tiles), 0, n_tiles - 1).astype(int)
        paths = []
        for t in np.unique(tile_of):
            sel = tris[tile_of == t]
            used, local = np.unique(sel.ravel(), return_inverse=True)
            tile_uv = uvs[used].copy()
            tile_uv[:, 0] = tile_uv[:, 0] * n_tiles - t
            text = _obj_text(materials.names[int(t)], vertices[used], tile_uv, normals[used],
                             local.reshape(-1, 3))
            data = text.encode()
            name = f"{_digest(data)}.obj"
            self._write(name, data)
            paths.append(str(self.root / name))
        return paths

    def close(self) -> None:
        """Delete the folder and its files (safe to call twice)."""
        self._finalizer()
        self._last_used.clear()

    def _write(self, name: str, data: bytes) -> None:
        """Write ``data`` as ``name`` unless present, marking it used by the current scene."""
        path = self.root / name
        if name not in self._last_used or not path.exists():
            # Temporary name and rename: a reader never sees a half-written file.
            fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=self.root)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        self._last_used[name] = self._generation


def _obj_text(material: str, vertices: NDArray[Any], uvs: NDArray[Any], normals: NDArray[Any],
              triangles: NDArray[Any]) -> str:
    buf = io.StringIO()
    buf.write(f"mtllib {material}\nusemtl tile\n")
    # 9 significant digits round-trip float32, the precision pybullet keeps.
    np.savetxt(buf, vertices, fmt="v %.9g %.9g %.9g")
    np.savetxt(buf, uvs, fmt="vt %.9g %.9g")
    np.savetxt(buf, normals, fmt="vn %.9g %.9g %.9g")
    one = triangles + 1  # OBJ indices count from 1; position, uv and normal share them
    faces = np.repeat(one, 3, axis=1)
    np.savetxt(buf, faces, fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    return buf.getvalue()


def _digest(*parts: bytes) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:20]


def _png_bytes(rgb: NDArray[Any]) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("could not encode a texture as PNG")
    return bytes(buf.tobytes())
