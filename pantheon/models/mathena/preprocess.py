"""MATHENA preprocessing: grayscale normalisation, detector letterbox, per-tooth crops (numpy + torch).

Conventions (shared by training, inference and the pipeline):

- Images are 2D ``(H, W)`` float32 arrays in [0, 1], x along the width (last) axis.
- Boxes are ``(x0, y0, x1, y1)`` in *pixel-edge* coordinates: pixel ``(row i, col j)`` covers
  ``[j, j + 1) x [i, i + 1)``, so a box ``(x0, y0, x1, y1)`` with integers is the slice
  ``[y0:y1, x0:x1]`` (the :mod:`pantheon.synth.opg` convention). A pixel centre is at ``j + 0.5``.
- :func:`letterbox` resizes the whole OPG by one isotropic factor into ``DETECTOR_INPUT_HW`` and pads
  it (centred, zeros): ``model = source * scale + pad``; :class:`Letterbox` maps boxes both ways.
- :func:`crop_tooth` takes the tooth box enlarged by ``margin`` (a fraction of the box width/height
  on each side), places it centred in a square source window of side ``max(w, h)`` (so the aspect
  ratio is kept), samples that window bilinearly at ``size x size`` and zeroes everything outside the
  enlarged box (letterbox padding) and outside the image. :class:`ToothCrop` maps crop-space maps back
  (bilinear) and full-size masks into the crop (nearest).

Assumptions (the paper gives no input or crop sizes): ``DETECTOR_INPUT_HW = (256, 512)`` (OPG aspect
about 1:2, multiples of 32), ``CROP_SIZE = 64`` (HENA needs multiples of ``patch_size * 2**3 = 32``
with its defaults), ``CROP_MARGIN = 0.15``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError

DETECTOR_INPUT_HW: Tuple[int, int] = (256, 512)
CROP_SIZE: int = 64
CROP_MARGIN: float = 0.15

__all__ = ["DETECTOR_INPUT_HW", "CROP_SIZE", "CROP_MARGIN", "to_grayscale_float", "letterbox", "Letterbox",
           "crop_tooth", "ToothCrop", "resize_bilinear"]


# ------------------------------------------------------------------------------------------------
# intensity
# ------------------------------------------------------------------------------------------------


def to_grayscale_float(array, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Any 2D radiograph array -> float32 (H, W) in [0, 1].

    Accepts (H, W) of any real dtype, (H, W, 3|4) RGB(A) (BT.601 luminance 0.299 R + 0.587 G +
    0.114 B; alpha ignored), and singleton-squeezable (1, H, W) / (H, W, 1). Intensities are scaled
    by the ``low_pct``-``high_pct`` percentiles (robust to burnt-in text and dead pixels) and clipped;
    when those percentiles coincide the min-max range is used. Raises :class:`InputError` for a 3D
    volume, an empty, non-finite (NaN/inf) or constant image.
    """
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.number)) or np.iscomplexobj(a):
        raise InputError(f"the image has an unsupported data type ({a.dtype})")
    if a.size == 0:
        raise InputError("the image is empty")
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        rgb = a[..., :3].astype(np.float64)
        a = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    if a.ndim != 2:
        raise InputError(f"a panoramic radiograph must be a 2D image (H, W) or RGB (H, W, 3); got shape {a.shape}")
    if min(a.shape) < 2:
        raise InputError(f"the image is too small ({a.shape[0]} x {a.shape[1]} pixels)")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError("the image contains NaN or infinite values")
    sample = a if a.size <= 4_000_000 else a[:: max(1, a.shape[0] // 1000), :: max(1, a.shape[1] // 1000)]
    lo, hi = np.percentile(sample, [low_pct, high_pct])
    if not hi > lo:
        lo, hi = float(a.min()), float(a.max())
    if not hi > lo:
        raise InputError("the image is constant (every pixel has the same value)")
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def resize_bilinear(img2d: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Bilinear (half-pixel centres, anti-aliased when shrinking) resize of a 2D float array."""
    h, w = int(out_hw[0]), int(out_hw[1])
    a = np.asarray(img2d, dtype=np.float32)
    if a.shape == (h, w):
        return a.copy()
    t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    shrink = h < a.shape[0] or w < a.shape[1]
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0, 0].numpy().astype(np.float32)


# ------------------------------------------------------------------------------------------------
# detector letterbox
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one :func:`letterbox` call: ``model = source * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: float
    pad_y: float
    src_hw: Tuple[int, int]
    out_hw: Tuple[int, int] = DETECTOR_INPUT_HW

    def boxes_to_model(self, boxes_xyxy) -> np.ndarray:
        b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        off = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        return (b * self.scale + off).astype(np.float32)

    def boxes_to_source(self, boxes_xyxy, clip: bool = False) -> np.ndarray:
        b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        off = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        out = (b - off) / self.scale
        if clip:
            H, W = self.src_hw
            out[:, [0, 2]] = out[:, [0, 2]].clip(0, W)
            out[:, [1, 3]] = out[:, [1, 3]].clip(0, H)
        return out.astype(np.float32)


def letterbox(img2d: np.ndarray, out_hw: Sequence[int] = DETECTOR_INPUT_HW) -> Tuple[np.ndarray, Letterbox]:
    """Resize ``img2d`` (H, W) by one factor to fit ``out_hw`` and pad it centred with zeros.

    The resized content is ``round(H * scale) x round(W * scale)`` pixels (scale = the smaller of
    out_h / H and out_w / W), placed at integer offsets ``(pad_y, pad_x)``. Returns the float32
    (out_h, out_w) image and its :class:`Letterbox` (box mapping accurate to the rounding of the
    resized size, i.e. well under half a pixel).
    """
    a = np.asarray(img2d, dtype=np.float32)
    if a.ndim != 2:
        raise InputError(f"letterbox needs a 2D image, got shape {a.shape}")
    H, W = a.shape
    oh, ow = int(out_hw[0]), int(out_hw[1])
    scale = min(oh / H, ow / W)
    nh, nw = max(1, min(oh, int(round(H * scale)))), max(1, min(ow, int(round(W * scale))))
    py, px = (oh - nh) // 2, (ow - nw) // 2
    out = np.zeros((oh, ow), np.float32)
    out[py:py + nh, px:px + nw] = resize_bilinear(a, (nh, nw))
    return out, Letterbox(scale=float(scale), pad_x=float(px), pad_y=float(py), src_hw=(int(H), int(W)),
                          out_hw=(oh, ow))


# ------------------------------------------------------------------------------------------------
# per-tooth crops
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToothCrop:
    """Geometry of one :func:`crop_tooth` call.

    A crop pixel ``(v, u)`` (centre ``u + 0.5``) sits at source x ``ox + (u + 0.5) / s`` (likewise
    y); ``box`` is the enlarged box (source pixel-edge coordinates) whose inside holds image data.
    """

    ox: float
    oy: float
    s: float
    size: int
    box: Tuple[float, float, float, float]
    src_hw: Tuple[int, int]

    # crop-space rectangle holding data (letterbox content), as pixel-edge coordinates
    def content_box(self) -> Tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 - self.ox) * self.s, (y0 - self.oy) * self.s, (x1 - self.ox) * self.s, (y1 - self.oy) * self.s)

    def source_window(self) -> Tuple[int, int, int, int]:
        """Integer (y0, x0, y1, x1) source pixel range covered by the enlarged box, clipped to the image."""
        H, W = self.src_hw
        x0, y0, x1, y1 = self.box
        return (max(0, int(math.floor(y0))), max(0, int(math.floor(x0))),
                min(H, int(math.ceil(y1))), min(W, int(math.ceil(x1))))

    def to_source(self, mask_crop) -> Tuple[int, int, np.ndarray]:
        """Crop-space float map (size, size) -> ``(y0, x0, patch)``: ``patch`` (float32) covers source
        rows ``y0:y0+h`` and columns ``x0:x0+w`` (bilinear; zero outside the enlarged box)."""
        m = np.asarray(mask_crop, dtype=np.float32)
        if m.shape != (self.size, self.size):
            raise ValueError(f"expected a ({self.size}, {self.size}) crop map, got {m.shape}")
        y0, x0, y1, x1 = self.source_window()
        if y1 <= y0 or x1 <= x0:
            return y0, x0, np.zeros((max(0, y1 - y0), max(0, x1 - x0)), np.float32)
        xs = np.arange(x0, x1, dtype=np.float64) + 0.5
        ys = np.arange(y0, y1, dtype=np.float64) + 0.5
        # normalised crop coordinates for grid_sample (align_corners=False): 2 * c / size - 1
        gx = 2 * (xs - self.ox) * self.s / self.size - 1
        gy = 2 * (ys - self.oy) * self.s / self.size - 1
        grid = torch.from_numpy(np.stack(np.meshgrid(gx, gy), -1).astype(np.float32))[None]
        t = torch.from_numpy(np.ascontiguousarray(m))[None, None]
        patch = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0].numpy()
        bx0, by0, bx1, by1 = self.box
        inside = ((xs >= bx0) & (xs < bx1))[None, :] & ((ys >= by0) & (ys < by1))[:, None]
        return y0, x0, np.where(inside, patch, 0.0).astype(np.float32)

    def paste(self, mask_crop, out_hw: Sequence[int] | None = None) -> np.ndarray:
        """Crop-space float map -> full-size (H, W) float32 map (zeros outside the tooth window)."""
        H, W = (int(out_hw[0]), int(out_hw[1])) if out_hw is not None else self.src_hw
        out = np.zeros((H, W), np.float32)
        y0, x0, patch = self.to_source(mask_crop)
        h, w = min(patch.shape[0], max(0, H - y0)), min(patch.shape[1], max(0, W - x0))
        out[y0:y0 + h, x0:x0 + w] = patch[:h, :w]
        return out

    def mask_to_crop(self, full_mask) -> np.ndarray:
        """Full-size (H, W) mask/label map -> crop space (size, size), nearest neighbour, 0 outside the
        enlarged box and the image. Keeps the input dtype."""
        m = np.asarray(full_mask)
        H, W = m.shape
        c = (np.arange(self.size, dtype=np.float64) + 0.5) / self.s
        xs, ys = self.ox + c, self.oy + c
        ix, iy = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
        bx0, by0, bx1, by1 = self.box
        okx = (ix >= 0) & (ix < W) & (xs >= bx0) & (xs < bx1)
        oky = (iy >= 0) & (iy < H) & (ys >= by0) & (ys < by1)
        out = m[np.clip(iy, 0, H - 1)[:, None], np.clip(ix, 0, W - 1)[None, :]]
        return np.where(oky[:, None] & okx[None, :], out, np.zeros((), m.dtype)).astype(m.dtype)


def crop_tooth(img2d: np.ndarray, box_xyxy, size: int = CROP_SIZE,
               margin: float = CROP_MARGIN) -> Tuple[np.ndarray, ToothCrop]:
    """Square, aspect-preserving crop of one tooth (see the module docstring).

    The box (pixel-edge xyxy) is enlarged by ``margin * w`` / ``margin * h`` on each side; the crop
    window is the square of side ``max(enlarged w, enlarged h)`` centred on the box; its content is
    sampled bilinearly (after integer average pooling when shrinking by 2x or more, to avoid aliasing)
    into ``size x size``; pixels outside the enlarged box or the image are 0.
    """
    a = np.asarray(img2d, dtype=np.float32)
    if a.ndim != 2:
        raise InputError(f"crop_tooth needs a 2D image, got shape {a.shape}")
    H, W = a.shape
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box_xyxy, dtype=np.float64).reshape(4))
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    ex0, ey0, ex1, ey1 = x0 - margin * bw, y0 - margin * bh, x1 + margin * bw, y1 + margin * bh
    side = max(ex1 - ex0, ey1 - ey0)
    cx, cy = (ex0 + ex1) / 2, (ey0 + ey1) / 2
    ox, oy = cx - side / 2, cy - side / 2
    s = size / side
    info = ToothCrop(ox=ox, oy=oy, s=s, size=int(size), box=(ex0, ey0, ex1, ey1), src_hw=(int(H), int(W)))

    # source region that the window touches (integer, with one pixel of slack), zero padded
    rx0, ry0 = int(math.floor(ox)) - 1, int(math.floor(oy)) - 1
    rx1, ry1 = int(math.ceil(ox + side)) + 1, int(math.ceil(oy + side)) + 1
    region = np.zeros((ry1 - ry0, rx1 - rx0), np.float32)
    sy0, sx0, sy1, sx1 = max(ry0, 0), max(rx0, 0), min(ry1, H), min(rx1, W)
    if sy1 > sy0 and sx1 > sx0:
        region[sy0 - ry0:sy1 - ry0, sx0 - rx0:sx1 - rx0] = a[sy0:sy1, sx0:sx1]
    t = torch.from_numpy(region)[None, None]
    k = int(math.floor(1.0 / s)) if s < 0.5 else 1
    if k > 1:  # pooled pixel i covers region pixels [i*k, (i+1)*k): same pixel-edge frame scaled by k
        t = F.avg_pool2d(t, k, k, ceil_mode=True)
    rh, rw = t.shape[-2:]
    c = (np.arange(size, dtype=np.float64) + 0.5) / s  # crop pixel centres, source units from (ox, oy)
    gx = 2 * ((ox + c - rx0) / k) / rw - 1
    gy = 2 * ((oy + c - ry0) / k) / rh - 1
    grid = torch.from_numpy(np.stack(np.meshgrid(gx, gy), -1).astype(np.float32))[None]
    crop = F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0].numpy()
    xs, ys = ox + c, oy + c
    okx = (xs >= ex0) & (xs < ex1)
    oky = (ys >= ey0) & (ys < ey1)
    crop = np.where(oky[:, None] & okx[None, :], crop, 0.0).astype(np.float32)
    return crop, info
