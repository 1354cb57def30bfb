"""A vectorised z-buffer triangle rasteriser (numpy, CPU), a perspective look-at camera and a checkered floor.

No OpenGL. Each triangle's barycentrics and inverse depth are affine in pixel coordinates, so a triangle is 9
numbers; every pixel centre of every triangle's bounding box becomes one candidate (a ragged expansion, no padding),
all candidates are tested at once, and the nearest triangle per pixel wins through one ``scatter_reduce(amax)`` on
int64 keys ``(inverse depth << 17) | face``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Camera", "rasterize", "FloorBackground", "look_at"]

_FACE_BITS = 17  # up to 131072 faces per mesh
_DEPTH_SCALE = float(1 << 40)
_EMPTY = (1 << _FACE_BITS) - 1  # so meshes may have up to 131070 faces
_ZBUF = threading.local()  # one z-buffer per size and thread (render threads must not share one)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """World-to-camera rotation (3,3), camera looking down its -z axis (OpenGL convention), rows = x, y, z axes."""
    up = np.array([0.0, 1.0, 0.0]) if up is None else up
    f = target - eye
    f = f / np.linalg.norm(f)
    r = np.cross(f, up)
    r = r / np.linalg.norm(r)
    u = np.cross(r, f)
    return np.stack([r, u, -f])


@dataclass
class Camera:
    """Pinhole camera: world-to-camera rotation ``rot`` (3,3), position ``eye`` (3,), vertical field of view."""

    rot: np.ndarray
    eye: np.ndarray
    width: int
    height: int
    fov_y_deg: float = 30.0

    @property
    def focal(self) -> float:
        return 0.5 * self.height / math.tan(math.radians(self.fov_y_deg) / 2)

    def project(self, pts: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """World points (...,3) -> pixel coordinates (...,2) float32 (x right, y down) and depth (...,)."""
        pts = pts.numpy() if isinstance(pts, torch.Tensor) else np.asarray(pts)
        pc = (pts - self.eye.astype(pts.dtype)) @ self.rot.T.astype(pts.dtype)
        depth = -pc[..., 2]
        z = np.maximum(depth, 1e-6)
        f = self.focal
        xy = np.stack([self.width / 2 + f * pc[..., 0] / z, self.height / 2 - f * pc[..., 1] / z], -1)
        return xy.astype(np.float32), depth.astype(np.float32)


def rasterize(
    xy: np.ndarray,
    depth: np.ndarray,
    faces: np.ndarray,
    width: int,
    height: int,
    near: float = 0.05,
    cull: int = 0,
) -> np.ndarray:
    """Face index per pixel (H,W) int32, -1 where no face. ``xy`` (V,2) pixels, ``depth`` (V,), ``faces`` (F,3).

    ``cull``: 0 draws both windings; +1/-1 keeps only triangles whose screen-space signed area has that sign
    (back-face culling for a consistently wound closed mesh). Pixel centres are at integer + 0.5."""
    if faces.shape[0] >= _EMPTY:
        raise ValueError(f"rasterize: at most {_EMPTY - 1} faces, got {faces.shape[0]}")
    # structure of arrays: contiguous 1-D columns and np.take (much faster than fancy indexing of (F,3,2) arrays)
    xy = np.asarray(xy, np.float32)
    depth = np.asarray(depth, np.float32)
    ft = np.ascontiguousarray(np.asarray(faces).T, dtype=np.intp)  # (3,F)
    tx = np.take(np.ascontiguousarray(xy[:, 0]), ft)  # (3,F) vertex x per corner
    ty = np.take(np.ascontiguousarray(xy[:, 1]), ft)
    e1x, e1y = tx[1] - tx[0], ty[1] - ty[0]
    e2x, e2y = tx[2] - tx[0], ty[2] - ty[0]
    area = e1x * e2y - e1y * e2x
    ok = area * cull > 1e-9 if cull else np.abs(area) > 1e-9
    if not (depth > near).all():  # usually nothing is behind the near plane: skip the per-face test then
        vn = depth > near
        ok &= np.take(vn, ft).all(0)
    lox = np.ceil(np.minimum(np.minimum(tx[0], tx[1]), tx[2]) - 0.5)
    loy = np.ceil(np.minimum(np.minimum(ty[0], ty[1]), ty[2]) - 0.5)
    hix = np.floor(np.maximum(np.maximum(tx[0], tx[1]), tx[2]) - 0.5)
    hiy = np.floor(np.maximum(np.maximum(ty[0], ty[1]), ty[2]) - 0.5)
    np.maximum(lox, 0, out=lox)
    np.maximum(loy, 0, out=loy)
    np.minimum(hix, width - 1, out=hix)
    np.minimum(hiy, height - 1, out=hiy)
    szx, szy = hix - lox + 1, hiy - loy + 1
    ok &= (szx > 0) & (szy > 0)
    fid = np.flatnonzero(ok)  # one compaction of everything the kept faces need
    x0, y0, e1x, e1y, e2x, e2y, area, lox, loy, szx, szy = np.take(
        np.stack([tx[0], ty[0], e1x, e1y, e2x, e2y, area, lox, loy, szx, szy]), fid, axis=1
    )
    bufs = _ZBUF.__dict__.setdefault("by_size", {})
    zbuf = bufs.get((height, width))
    if zbuf is None:  # reused between frames: a fresh 8-byte-per-pixel buffer costs page faults every frame
        zbuf = bufs.setdefault((height, width), torch.empty(height * width, dtype=torch.int64))
    zbuf.fill_(-1)
    if fid.size == 0:
        return np.full((height, width), -1, np.int32)
    inv_z = (1.0 / np.maximum(depth, near)).astype(np.float32)
    ia = 1.0 / area
    # b1 = a1 x + b1 y + c1 at pixel centres (x + 0.5, y + 0.5); likewise b2 and the inverse depth
    a1, bb1 = e2y * ia, -e2x * ia
    c1 = (-x0 * e2y + y0 * e2x) * ia + 0.5 * (a1 + bb1)
    a2, bb2 = -e1y * ia, e1x * ia
    c2 = (-e1x * y0 + e1y * x0) * ia + 0.5 * (a2 + bb2)
    w = np.take(inv_z, ft[:, fid])  # (3,n)
    d1, d2 = w[1] - w[0], w[2] - w[0]
    coef = np.stack([a1, bb1, c1, a2, bb2, c2, a1 * d1 + a2 * d2, bb1 * d1 + bb2 * d2, w[0] + c1 * d1 + c2 * d2])
    sz = szx.astype(np.int32)
    n_t = sz * szy.astype(np.int32)
    t_idx = np.repeat(np.arange(fid.size, dtype=np.int32), n_t)  # candidate -> triangle
    start = np.cumsum(n_t, dtype=np.int32) - n_t
    k = np.arange(t_idx.size, dtype=np.int32) - np.repeat(start, n_t)
    kf, wf = k.astype(np.float32), np.repeat(szx, n_t)
    oy = np.floor((kf + np.float32(0.5)) / wf)  # float division: much faster than integer // (exact: k < 2^24)
    pxf = np.repeat(lox, n_t) + (kf - oy * wf)
    pyf = np.repeat(loy, n_t) + oy
    # test b1 first, then evaluate the rest only where it passes (contiguous column gathers, no strided views)
    b1 = np.take(coef[0], t_idx) * pxf + np.take(coef[1], t_idx) * pyf + np.take(coef[2], t_idx)
    m = np.flatnonzero(b1 >= -1e-6)
    t_m, x_m, y_m, b1 = np.take(t_idx, m), np.take(pxf, m), np.take(pyf, m), np.take(b1, m)
    b2 = np.take(coef[3], t_m) * x_m + np.take(coef[4], t_m) * y_m + np.take(coef[5], t_m)
    m = np.flatnonzero((b2 >= -1e-6) & (b1 + b2 <= 1 + 1e-6))
    t_m, x_m, y_m = np.take(t_m, m), np.take(x_m, m), np.take(y_m, m)
    iz = np.take(coef[6], t_m) * x_m + np.take(coef[7], t_m) * y_m + np.take(coef[8], t_m)
    key = (np.clip(iz * near, 0, 1) * _DEPTH_SCALE).astype(np.int64) << _FACE_BITS | np.take(fid, t_m)
    pix = y_m.astype(np.int64) * width + x_m.astype(np.int64)
    zbuf.scatter_reduce_(0, torch.from_numpy(pix), torch.from_numpy(key), reduce="amax")
    # the face index is in the low bits: truncate to int32 first (half the memory traffic); ((low + 1) & mask) - 1
    # maps empty (-1) to -1 and a key to its face (face + 1 < _EMPTY: no carry into the depth bits), no masking pass
    face = zbuf.numpy().astype(np.int32)
    face += 1
    face &= _EMPTY
    face -= 1
    return face.reshape(height, width)


def _darken(rgb: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``rgb`` (h,w,3) uint8 times ``factor`` (h,w) float32, truncated to uint8. The factor is repeated per channel:
    numpy's (h,w,1) -> (h,w,3) broadcast is several times slower."""
    f3 = np.repeat(factor, 3, axis=1).reshape(rgb.shape)
    return (rgb * f3).astype(np.uint8)


class FloorBackground:
    """A sky gradient and an infinite checkered floor at height ``floor_y``, for a camera that only translates.

    Ray directions are computed once; the floor is re-evaluated only when the camera moves (cached otherwise), and
    a soft contact shadow is applied in a small screen window under the body's root."""

    def __init__(self, cam: Camera, floor_y: float, tile: float = 0.5):
        h, w = cam.height, cam.width
        self.cam = cam
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        d_cam = np.stack([(xs + 0.5 - w / 2) / cam.focal, -(ys + 0.5 - h / 2) / cam.focal, -np.ones_like(xs)], -1)
        d = d_cam @ cam.rot.astype(np.float32)  # camera -> world directions
        sky_t = np.clip(ys / h, 0, 1)[..., None]
        self.sky = ((1 - sky_t) * np.float32([200, 214, 230]) + sky_t * np.float32([236, 240, 244])).astype(np.float32)
        self.floor_y = float(floor_y)
        self.tile = np.float32(tile)
        cam_h = float(cam.eye[1] - floor_y)
        hit = d[..., 1] < -1e-4
        t = np.where(hit, cam_h / np.maximum(-d[..., 1], 1e-4), 0.0).astype(np.float32)
        self.mask = hit & (t < 60.0)
        self.rel_x = (t * d[..., 0]).astype(np.float32)
        self.rel_z = (t * d[..., 2]).astype(np.float32)
        # the floor occupies the rows below the horizon: work on that slab, blended into the sky by distance
        rows = np.flatnonzero(self.mask.any(1))
        self.r0 = int(rows[0]) if rows.size else h
        slab = (slice(self.r0, h),)
        fade = np.where(self.mask, np.exp(-((t / 25.0) ** 2)), 0.0).astype(np.float32)[slab][..., None]
        light = np.float32([206, 200, 188])
        self.base = (self.sky[slab] * (1 - fade) + light * fade).astype(np.float32)  # light tiles
        self.dark = (np.float32(28) * fade[..., 0]).astype(np.float32)  # minus this on dark tiles
        self.sx, self.sz = self.rel_x[slab] / self.tile, self.rel_z[slab] / self.tile
        self.sky_u8 = np.clip(self.sky + 0.5, 0, 255).astype(np.uint8)
        self._key: tuple | None = None
        self._base: np.ndarray | None = None

    def _floor(self, eye: np.ndarray) -> np.ndarray:
        key = (round(float(eye[0]), 4), round(float(eye[2]), 4))
        if key != self._key:
            if self._base is None:  # one buffer, rewritten in place: callers copy it before drawing
                self._base = self.sky_u8.copy()
                # both tile shades once, as uint8 (the same float64 rounding as shading per frame would give)
                self._light_u8 = self.base.astype(np.uint8)
                dark_u8 = (self.base.astype(np.float64) - self.dark.astype(np.float64)[..., None]).astype(np.uint8)
                self._step_u8 = self._light_u8 - dark_u8  # >= 0: dark tiles are light minus this
                self._ix = np.empty(self.sx.shape, np.int32)
                self._iz = np.empty(self.sx.shape, np.int32)
                self._tmp = np.empty(self.sx.shape, np.float32)
            if self.r0 < self._base.shape[0]:
                ix, iz, tmp = self._ix, self._iz, self._tmp
                np.floor(np.add(self.sx, np.float32(eye[0] / self.tile), out=tmp), out=tmp)
                ix[...] = tmp
                np.floor(np.add(self.sz, np.float32(eye[2] / self.tile), out=tmp), out=tmp)
                iz[...] = tmp
                ix += iz
                ix &= 1
                slab = self._base[self.r0 :]  # uint8 select by arithmetic: light - parity * step
                # parity repeated per channel: a (...,1) -> (...,3) broadcast is several times slower in numpy
                par3 = np.repeat(ix.astype(np.uint8), 3, axis=1).reshape(slab.shape)
                np.multiply(self._step_u8, par3, out=slab)
                np.subtract(self._light_u8, slab, out=slab)
            self._key = key
        return self._base

    def _shadow(self, eye: np.ndarray, root_xz: np.ndarray, radius: float) -> tuple[tuple, np.ndarray] | None:
        """Screen window (rows, cols slices) of the contact shadow and its darkening factor (h,w), or None."""
        h, w = self.cam.height, self.cam.width
        r = 2.0 * radius  # screen window of the shadow: the projected square around the root
        corners = np.array(
            [[root_xz[0] + sx * r, self.floor_y, root_xz[1] + sz * r] for sx in (-1, 1) for sz in (-1, 1)]
        )
        cam = Camera(self.cam.rot, np.asarray(eye), w, h, self.cam.fov_y_deg)
        cxy, cd = cam.project(corners)
        if (cd <= 0).any():
            return None
        x0, y0 = np.clip(np.floor(cxy.min(0)).astype(int), 0, [w, h])
        x1, y1 = np.clip(np.ceil(cxy.max(0)).astype(int) + 1, 0, [w, h])
        if x1 <= x0 or y1 <= y0:
            return None
        win = (slice(y0, y1), slice(x0, x1))
        dx = self.rel_x[win] + np.float32(eye[0] - root_xz[0])
        dz = self.rel_z[win] + np.float32(eye[2] - root_xz[1])
        dark = 1 - 0.45 * np.exp(-(dx * dx + dz * dz) / np.float32(radius * radius * 0.5)) * self.mask[win]
        return win, dark

    def render(self, eye: np.ndarray, root_xz: np.ndarray | None = None, radius: float = 0.35) -> np.ndarray:
        """(H,W,3) uint8 image for a camera at ``eye`` (same rotation), shadow centred on ``root_xz``."""
        img = self._floor(eye).copy()
        sh = None if root_xz is None else self._shadow(eye, root_xz, radius)
        if sh is not None:
            win, dark = sh
            img[win] = _darken(img[win], dark)
        return img

    def render_pil(self, eye: np.ndarray, root_xz: np.ndarray | None = None, radius: float = 0.35) -> Image.Image:
        """``render`` as a Pillow image for drawing on: one full-frame copy (into Pillow) instead of two."""
        from PIL import Image

        base = self._floor(eye)
        im = Image.fromarray(base)
        sh = None if root_xz is None else self._shadow(eye, root_xz, radius)
        if sh is not None:
            win, dark = sh
            im.paste(Image.fromarray(_darken(base[win], dark)), (win[1].start, win[0].start))
        return im
