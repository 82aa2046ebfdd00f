"""Synthetic hepatobiliary-phase (HBP) liver MRI phantoms with a cholangiocarcinoma and a PNI label.

Why: tests and demos of NeoNet (PNI prediction in cholangiocarcinoma from T1-weighted HBP MRI,
arXiv 2603.29449) need MRI-like volumes with a liver, a tumour, ducts, vessels and a known
perineural-invasion (PNI) status, on arbitrary voxel grids, without patient data. The phantom
is meant to look like a fat-suppressed T1 gradient-echo HBP image to a model, not to be
anatomically exact.

How it works (the house style of :mod:`pantheon.synth.ct_phantom`, whose shape and grid helpers
it reuses): a *patient* (:class:`MRIPatient`, :func:`random_mri_patient`) is a set of implicit
shapes in a patient frame in mm (x patient Left, y Posterior, z Superior), placed in the world
(LPS mm) by a small pose rotation and a table offset. It is *sampled*
(:func:`sample_mri_on_grid`) on any voxel grid, so the same patient on an LPS, RAS, permuted,
anisotropic or oblique grid keeps every structure at the same world position.

What is modelled (painting order, later overwrites earlier)
-----------------------------------------------------------
body outline with subcutaneous fat, abdominal-wall muscle, visceral fat; paraspinal muscles,
vertebral bodies (marrow, cortical rim), spinal canal; aorta, IVC; kidneys, spleen, stomach,
gallbladder; the liver (three lobes); inside it the portal vein and branches, hepatic veins,
dilated bile ducts branching towards the hilum (plus the common hepatic duct); thin nerve-like
tubes running beside a duct (intensity only); then the tumour: an irregular hypointense mass
(equivalent diameter drawn in 15-50 mm) centred on a duct near the hilum, deep in the right
lobe, and — for PNI-positive patients — a tumour tentacle along the nerve.
Finally a mild blur (partial volume), a multiplicative smooth bias field (coil shading) and
Rician noise (magnitude of complex Gaussian noise) are applied.

Relative intensities (times a per-patient scale of 700-1100 arbitrary units; all >= 0)
--------------------------------------------------------------------------------------
liver 1.0 (gadoxetic acid uptake), tumour ~0.42 (hypointense, heterogeneous), bile ducts 0.22
(dilated, obstructed: dark), portal/hepatic veins and IVC 0.30, aorta 0.35, nerve 0.65,
spleen 0.55, kidney 0.65, muscle 0.40, fat 0.30 (fat-suppressed), bone marrow 0.45, cortical
bone 0.08, CSF 0.15, stomach 0.25, gallbladder 0.15, air/background 0 (Rician noise only).

Label map (uint8)
-----------------
0 background, 1 liver, 2 tumour (overrides everything it covers, including ducts and vessels),
3 bile duct (inside and outside the liver), 4 hepatic vessels (portal vein and branches,
hepatic veins, IVC). Nerves are not labelled (their paths are in ``info``).

PNI rule
--------
Every patient has a nerve-like tube (radius 1.2-1.8 mm) running beside a bile duct, through
the tumour region and on towards the liver periphery. The patient is **PNI positive** exactly
when the tumour extends along that nerve beyond its main mass: a tentacle of tumour (radius
3.8-4.8 mm tapering to 3.2 mm, tumour intensity and label 2, wrapping the nerve and the
adjacent duct wall) follows the nerve from the tumour centre until it is
at least ``pni_extent_mm`` = 12-25 mm (always >= 10 mm) beyond the main mass, i.e. beyond the
sphere of radius ``tumour_main_radius_mm`` around ``tumour_centre_lps`` that contains the
main mass. PNI negative: no tumour voxel lies outside that sphere. With ``pni=None`` the
status is drawn with p = 0.5.

Public API
----------
- :func:`make_liver_mri_phantom` — (mri, labels, info) on a random or given grid.
- :func:`random_mri_patient`, :func:`random_mri_grid`, :func:`sample_mri_on_grid`,
  :func:`mri_patient_info` — the same steps separately (one patient, several grids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import numpy as np
from scipy import ndimage

from pantheon.io.volume import Volume
from pantheon.synth.ct_phantom import (
    Blob,
    Grid,
    Sampler,
    Tube,
    euler_matrix,
    orientation_matrix,
    random_blob,
    random_orientation_code,
    random_tube,
    seeded_rng,
    small_rotation,
    smooth_field,
    smooth_polyline,
)

__all__ = [
    "MRI_LABELS",
    "MRI_LABEL_OF",
    "PNI_RULE",
    "MRIPatient",
    "random_mri_patient",
    "random_mri_grid",
    "sample_mri_on_grid",
    "mri_patient_info",
    "make_liver_mri_phantom",
]

SeedLike = Union[int, np.integer, np.random.Generator, np.random.SeedSequence, None]

MRI_LABELS: Dict[int, str] = {0: "background", 1: "liver", 2: "tumour", 3: "bile_duct", 4: "hepatic_vessels"}
MRI_LABEL_OF: Dict[str, int] = {v: k for k, v in MRI_LABELS.items()}

PNI_RULE = ("PNI positive iff the tumour extends along the nerve-like tube beside a bile duct by at "
            "least pni_extent_mm (>= 10 mm) beyond the sphere of radius tumour_main_radius_mm around "
            "tumour_centre_lps that contains the main mass; negatives have no tumour outside that sphere.")

NOMINAL_REL: Dict[str, float] = {
    "liver": 1.0, "tumour": 0.42, "duct": 0.22, "vein": 0.30, "aorta": 0.35, "nerve": 0.65,
    "spleen": 0.55, "kidney": 0.65, "muscle": 0.40, "fat": 0.30, "marrow": 0.45, "cortical": 0.08,
    "csf": 0.15, "stomach": 0.25, "gallbladder": 0.15,
}

#: default field of view (patient x, y, z) in mm, and its centre in the patient frame
DEFAULT_MRI_FOV_MM = (300.0, 250.0, 170.0)
_FOV_CENTRE = np.array([-30.0, 5.0, 45.0])


@dataclass
class MRIPatient:
    """One synthetic patient (grid independent). ``centre``/``pose`` place the patient frame in LPS."""

    centre: np.ndarray
    pose: np.ndarray
    body: Dict[str, float]
    rel: Dict[str, float]
    scale: float
    shapes: Dict[str, list]  # name -> list of Blob / Tube (patient frame)
    tumour_centre: np.ndarray  # patient frame
    tumour_main_radius: float  # every main-mass voxel lies within this distance of the centre, mm
    tumour_diameter: float  # nominal equivalent diameter of the main mass, mm
    nerve_path: np.ndarray  # (n, 3) patient frame
    nerve_radius: float
    pni: bool
    pni_extent: float  # mm beyond tumour_main_radius reached by the tentacle (0 if negative)
    texture_k: np.ndarray
    texture_phase: np.ndarray
    bias_k: np.ndarray
    bias_phase: np.ndarray
    bias_strength: float
    noise_rel: float
    noise_seed: int

    def world_of(self, p) -> np.ndarray:
        p = np.atleast_2d(np.asarray(p, dtype=np.float64))
        return p @ self.pose.T + self.centre


def _arc(points: np.ndarray) -> np.ndarray:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def _resample_path(points: np.ndarray, step: float = 2.0) -> np.ndarray:
    """Polyline re-sampled every ``step`` mm of arc length."""
    s = _arc(points)
    t = np.arange(0.0, s[-1] + 1e-9, step)
    return np.stack([np.interp(t, s, points[:, a]) for a in range(3)], axis=1)


def random_mri_patient(seed: SeedLike = None, pni: Optional[bool] = None) -> MRIPatient:
    """Draw one patient: anatomy, intensities, tumour (15-50 mm), nerve and PNI status."""
    rng = seeded_rng(seed)
    s = rng.uniform(0.94, 1.06)
    body = {"a": 145.0 * s * rng.uniform(0.93, 1.07), "b_ant": 105.0 * s * rng.uniform(0.9, 1.1),
            "b_post": 108.0 * s * rng.uniform(0.95, 1.05), "fat": rng.uniform(10.0, 25.0),
            "muscle": rng.uniform(8.0, 13.0)}
    rel = {k: v * rng.uniform(0.93, 1.07) for k, v in NOMINAL_REL.items()}
    rel["liver"] = 1.0

    def P(x, y, z):
        return np.array([x, y, z], dtype=np.float64) * s

    def blob(c, r, rot=None, **kw):
        return random_blob(rng, P(*c), np.asarray(r) * s, rot, **kw)

    def tube(pts, rads, **kw):
        return random_tube(rng, np.array([P(*p) for p in pts]), np.asarray(rads) * s, **kw)

    sh: Dict[str, list] = {}
    right = blob((-62, 2, 55), (72, 78, 78), euler_matrix(0, 8, 10), bump_amp=0.05, pos_jitter=5.0)
    left = blob((10, -48, 78), (62, 30, 38), euler_matrix(0, -15, -10), bump_amp=0.06, pos_jitter=5.0)
    caud = blob((-18, 10, 55), (20, 18, 30), bump_amp=0.05, pos_jitter=4.0)
    sh["liver"] = [right, left, caud]
    sh["spleen"] = [blob((86, 36, 62), (26, 54, 46), euler_matrix(0, 0, 35), bump_amp=0.07)]
    sh["kidney"] = [blob((-68, 42, -12), (24, 27, 52), euler_matrix(0, 12, 30), bump_amp=0.04, pos_jitter=7.0),
                    blob((68, 42, 5), (24, 27, 52), euler_matrix(0, -12, -30), bump_amp=0.04, pos_jitter=7.0)]
    sh["stomach"] = [tube([(48, 2, 112), (66, -22, 82), (58, -45, 47), (25, -60, 25)], [33, 30, 26, 20],
                          pos_jitter=8.0, wiggle=4.0)]
    sh["gallbladder"] = [blob((-48, -48, 8), (14, 15, 30), euler_matrix(-25, 10, 0), bump_amp=0.05)]
    sh["paraspinal"] = [blob((sg * 36, 78, 0), (26, 20, 400), None, pos_jitter=3.0, rot_jitter_deg=2.0,
                             bump_amp=0.03) for sg in (-1, 1)]
    sh["aorta"] = [tube([(6, 16, 190), (8, 14, 120), (10, 8, 40), (11, 4, -60)], [11.5, 11.5, 11, 10.5],
                        pos_jitter=3.0, wiggle=1.0, size_jitter=0.12)]
    sh["ivc"] = [tube([(-22, 18, 190), (-24, 14, 110), (-24, 8, 40), (-20, 6, -60)], [12, 12, 11, 11],
                      pos_jitter=3.0, wiggle=1.5, size_jitter=0.12)]
    spine_z0 = rng.uniform(-8, 8) * s
    height, disc = 26.0 * s, 9.0 * s
    sh["vertebra"] = [Blob(np.array([0.0, 36.0 * s, spine_z0 + n * (height + disc)]),
                           np.array([23.0, 17.0, height / 2]) * np.array([s, s, 1.0]), power=4) for n in range(-4, 8)]
    sh["canal"] = [Blob(np.array([0.0, 36.0 * s + 17.0 * s + 9.0, 0.0]), np.array([8.0, 7.5, 400.0]))]

    # hepatic vessels (label 4): portal trunk into the hilum then right/left branches; hepatic veins
    hilum = P(-40, -6, 50) + rng.uniform(-4, 4, size=3)
    r_dir = np.array([-1.0, 0.12, 0.22])
    r_dir /= np.linalg.norm(r_dir)
    right_ctrl = np.array([hilum + r_dir * d for d in (0.0, 28.0, 56.0, 84.0)]) + rng.normal(scale=2.5, size=(4, 3))
    right_ctrl[0] = hilum
    left_ctrl = np.array([hilum, hilum + P(25, -18, 12), hilum + P(50, -35, 22), hilum + P(75, -42, 28)])
    left_ctrl[1:] += rng.normal(scale=2.5, size=(3, 3))
    chd_ctrl = np.array([hilum, hilum + P(6, -4, -25), hilum + P(12, -6, -55)])
    duct_r = rng.uniform(3.0, 4.5)
    ducts = []
    for ctrl, r0 in ((right_ctrl, duct_r), (left_ctrl, duct_r * 0.9), (chd_ctrl, duct_r * 1.1)):
        p, r = smooth_polyline(ctrl, np.linspace(r0, r0 * 0.6, len(ctrl)) if ctrl is not chd_ctrl
                                else np.full(len(ctrl), r0), 4)
        ducts.append(Tube(p, r))
    # secondary branches off the right and left ducts
    for main, n_br in ((ducts[0], 3), (ducts[1], 2)):
        for _ in range(n_br):
            a = int(rng.integers(len(main.points) // 4, len(main.points) - 2))
            start = main.points[a]
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            pts = [start, start + d * rng.uniform(15, 22),
                   start + d * rng.uniform(28, 40) + rng.normal(scale=4, size=3)]
            p, r = smooth_polyline(np.array(pts), np.array([2.0, 1.7, 1.3]) * s, 4)
            ducts.append(Tube(p, r))
    sh["duct"] = ducts
    # portal veins run with the ducts (portal triads), on the posterior side
    off = P(0, 7, -4)
    sh["portal"] = [Tube(*smooth_polyline(np.vstack([hilum + P(30, -8, -45), hilum + P(10, -4, -15), hilum + off]),
                                           np.array([7.0, 7.0, 6.5]) * s, 4)),
                    Tube(*smooth_polyline(right_ctrl + off, np.linspace(5.5, 3.0, 4) * s, 4)),
                    Tube(*smooth_polyline(left_ctrl + off, np.linspace(4.5, 2.5, 4) * s, 4))]
    sh["hepatic_vein"] = [
        tube([(-24, 16, 118), (-60, 0, 92), (-95, -10, 62)], [6, 4.5, 3], pos_jitter=4.0, wiggle=3.0),
        tube([(-22, 12, 118), (-35, -25, 95), (-45, -50, 75)], [5.5, 4, 3], pos_jitter=4.0, wiggle=3.0),
        tube([(-18, 10, 118), (0, -25, 100), (15, -50, 90)], [5, 4, 3], pos_jitter=4.0, wiggle=3.0)]

    # ------------------------------------------------------------------ tumour, nerve, PNI
    pni = bool(rng.uniform() < 0.5) if pni is None else bool(pni)
    diameter = float(rng.uniform(15.0, 50.0))
    radius = diameter / 2.0
    rdense = _resample_path(right_ctrl, 1.0)  # the right hepatic duct, hilum -> periphery, 1 mm steps
    length = len(rdense) - 1
    s0 = float(rng.uniform(4.0, min(22.0, max(4.0, length - radius * 1.25 - 30.0))))
    c = rdense[int(round(s0))]
    bumps = 4
    kk = rng.normal(size=(bumps, 3))
    kk *= (rng.uniform(1.5, 3.0, size=bumps) / np.linalg.norm(kk, axis=1))[:, None]
    amp = rng.uniform(0.4, 1.0, size=bumps) * 0.08
    radii = radius * rng.uniform(0.85, 1.15, size=3)
    radii *= radius / np.cbrt(np.prod(radii))  # keep the equivalent diameter
    main = Blob(c, radii, small_rotation(rng, 180.0), kk, rng.uniform(0, 2 * np.pi, size=bumps), amp)
    masses = [main]
    ext = float(np.max(radii) * (1.0 + np.sum(amp)))
    for _ in range(int(rng.integers(1, 3))):  # lobulations
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        rl = radius * rng.uniform(0.35, 0.55)
        cl = c + d * radius * rng.uniform(0.5, 0.8)
        masses.append(Blob(cl, np.full(3, rl)))
        ext = max(ext, float(np.linalg.norm(cl - c) + rl))
    main_radius = ext + 0.5
    sh["tumour"] = masses

    # nerve: beside the right duct, offset perpendicular to it, from 25 mm on the hilum side of
    # the tumour to the periphery (extrapolated straight if the duct ends first)
    t_dir = rdense[-1] - rdense[-6]
    t_dir /= np.linalg.norm(t_dir)
    need = main_radius + 30.0 + 30.0
    extra = max(0.0, s0 + need - length)
    n_extra = int(np.ceil(extra))
    path = np.vstack([rdense] + ([rdense[-1] + t_dir * np.arange(1, n_extra + 1)[:, None]] if n_extra else []))
    i0 = max(0, int(round(s0)) - 25)
    i1 = min(len(path), int(round(s0 + need)))
    seg = path[i0:i1]
    helper = small_rotation(rng, 180.0) @ np.array([0.0, 0.0, 1.0])
    nerve_r = float(rng.uniform(1.2, 1.8))
    gap = duct_r + nerve_r + 1.5
    tang = np.gradient(seg, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    perp = helper[None, :] - (tang @ helper)[:, None] * tang
    perp /= np.linalg.norm(perp, axis=1, keepdims=True)
    perp = ndimage.gaussian_filter1d(perp, 3.0, axis=0, mode="nearest")
    perp /= np.linalg.norm(perp, axis=1, keepdims=True)
    nerve = seg + perp * gap
    sh["nerve"] = [Tube(nerve, np.full(len(nerve), nerve_r))]

    pni_extent = 0.0
    if pni:
        pni_extent = float(rng.uniform(12.0, 25.0))
        dist = np.linalg.norm(nerve - c, axis=1)
        start = int(np.argmin(dist))
        beyond = np.nonzero((dist > main_radius + pni_extent + 1.0) & (np.arange(len(nerve)) > start))[0]
        stop = int(beyond[0]) + 1 if beyond.size else len(nerve)
        tpts = nerve[start:stop]
        # 3.8-4.8 mm tapering to 3.2 mm: at NeoNet's 4 mm demo grid a thinner cuff (the former 2.5-3.5 mm)
        # left 5-9 partial-volume voxels as bright as a bile duct beyond the mass -- no segmenter or
        # classifier could see it; same number of random draws, so every other structure is unchanged.
        rt = float(rng.uniform(3.8, 4.8))
        sh["tentacle"] = [Tube(tpts, np.linspace(rt, 3.2, len(tpts)))]
        pni_extent = float(np.linalg.norm(tpts[-1] - c) - main_radius)
    else:
        sh["tentacle"] = []

    n_tex = 12
    tk = rng.normal(size=(n_tex, 3))
    tk *= (2 * np.pi / rng.uniform(8, 40, size=n_tex) / np.linalg.norm(tk, axis=1))[:, None]
    bk = rng.normal(size=(3, 3))
    bk *= (2 * np.pi / rng.uniform(250, 450, size=3) / np.linalg.norm(bk, axis=1))[:, None]
    return MRIPatient(
        centre=np.array([rng.uniform(-25, 25), rng.uniform(-30, 30), rng.uniform(-300, 100)]),
        pose=euler_matrix(rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-4, 4)),
        body=body, rel=rel, scale=float(rng.uniform(700.0, 1100.0)), shapes=sh,
        tumour_centre=c, tumour_main_radius=main_radius, tumour_diameter=diameter,
        nerve_path=nerve, nerve_radius=nerve_r, pni=pni, pni_extent=pni_extent,
        texture_k=tk, texture_phase=rng.uniform(0, 2 * np.pi, size=n_tex),
        bias_k=bk, bias_phase=rng.uniform(0, 2 * np.pi, size=3), bias_strength=float(rng.uniform(0.08, 0.2)),
        noise_rel=float(rng.uniform(0.02, 0.045)), noise_seed=int(rng.integers(2 ** 31)))


def random_mri_grid(seed: SeedLike, patient: MRIPatient, shape=None, spacing=None,
                    orientation: Union[str, np.ndarray] = "random", oblique: Union[bool, float] = False,
                    fov_mm=None) -> Grid:
    """A voxel grid framing the liver (as :func:`pantheon.synth.ct_phantom.random_grid`).

    Default (neither ``shape`` nor ``spacing``): in-plane 1.45-1.75 mm, slices 3-5 mm over a
    300 x 250 x 170 mm FOV, about 35-55 x 140-175 x 170-205 voxels. ``orientation`` "random",
    "identity", an axis code ("RAS", "ASL" ...) or a 3x3 matrix; ``oblique`` False, True (up to
    15 degrees) or a maximum angle; ``shape`` (K, J, I) and ``spacing`` (si, sj, sk) in grid order.
    """
    rng = seeded_rng(seed)
    if isinstance(orientation, str):
        code = random_orientation_code(rng) if orientation.lower() == "random" else orientation
        direction = orientation_matrix(code)
    else:
        direction = np.asarray(orientation, dtype=np.float64).reshape(3, 3)
    if oblique:
        direction = small_rotation(rng, 15.0 if oblique is True else float(oblique)) @ direction
    fov = np.asarray(DEFAULT_MRI_FOV_MM if fov_mm is None else fov_mm, dtype=np.float64)
    world_dirs = patient.pose.T @ direction
    axis_of = np.argmax(np.abs(world_dirs), axis=0)
    if sorted(axis_of) != [0, 1, 2]:
        axis_of = np.array([0, 1, 2])
    fov_ijk = fov[axis_of]
    if shape is not None and spacing is not None:
        shape_ijk, spacing_ijk = np.array(shape[::-1], dtype=int), np.asarray(spacing, dtype=np.float64)
    elif shape is not None:
        shape_ijk = np.array(shape[::-1], dtype=int)
        spacing_ijk = fov_ijk / shape_ijk
    else:
        if spacing is None:
            inplane = 1.5625 * rng.uniform(0.93, 1.12)
            spacing_ijk = np.where(axis_of == 2, rng.uniform(3.0, 5.0), inplane)
        else:
            spacing_ijk = np.asarray(spacing, dtype=np.float64)
        shape_ijk = np.maximum(1, np.round(fov_ijk / spacing_ijk)).astype(int)
    centre_world = patient.world_of(_FOV_CENTRE + rng.uniform(-8, 8, size=3))[0]
    m = direction @ np.diag(spacing_ijk)
    origin = centre_world - m @ ((shape_ijk - 1) / 2.0)
    return Grid(tuple(int(v) for v in shape_ijk[::-1]), tuple(float(v) for v in spacing_ijk),
                tuple(float(v) for v in origin), direction)


def sample_mri_on_grid(patient: MRIPatient, shape, spacing, origin, direction, *,
                       noise: Optional[float] = None, blur_voxels: float = 0.5) -> Tuple[Volume, Volume]:
    """Render ``patient`` on a grid: (float32 MRI >= 0, uint8 labels), same geometry.

    ``noise`` overrides the relative Rician noise level (0: noise free). The noise comes from the
    patient's own noise seed, so (patient, grid) is reproducible.
    """
    smp = Sampler(patient, shape, spacing, origin, direction)
    K, J, I = smp.shape
    rel, S = patient.rel, np.float32(patient.scale)
    img = np.zeros((K, J, I), dtype=np.float32)
    lab = np.zeros((K, J, I), dtype=np.uint8)
    tex = smooth_field(smp, patient.texture_k, patient.texture_phase, step=2.0)

    def paint(sl, mask, value, label=None, tex_amp=0.0):
        if sl is None or not mask.any():
            return
        v = np.float32(value)
        if tex_amp:
            v = v + np.float32(tex_amp) * tex[sl][mask]
        img[sl][mask] = v
        if label is not None:
            lab[sl][mask] = label

    # body layers (evaluated on the whole grid)
    x, y, z = smp.patient_coords(smp.full)
    bd = patient.body

    def ellipse(inset):
        yy = np.where(y < 0, y / np.float32(bd["b_ant"] - inset), y / np.float32(bd["b_post"] - inset))
        return (x / np.float32(bd["a"] - inset)) ** 2 + yy * yy <= 1.0

    full = smp.full
    paint(full, ellipse(0.0), rel["fat"], tex_amp=0.03)
    paint(full, ellipse(bd["fat"]), rel["muscle"], tex_amp=0.02)
    cavity = ellipse(bd["fat"] + bd["muscle"])
    paint(full, cavity, rel["fat"] * 0.9, tex_amp=0.03)
    x = y = None  # free the full grid (not del: ellipse() above closes over x and y)
    del z

    sh = patient.shapes

    def blobs(name, value, label=None, tex_amp=0.02, cond=None):
        for b in sh[name]:
            sl, f, _ = smp.blob(b)
            if sl is not None:
                m = f <= 1
                if cond is not None:
                    m &= cond(sl)
                paint(sl, m, value, label, tex_amp)

    def tubes(name, value, label=None, tex_amp=0.01, cond=None, items=None):
        for t in (sh[name] if items is None else items):
            sl, sd = smp.tube(t)
            if sl is not None:
                m = sd < 0
                if cond is not None:
                    m &= cond(sl)
                paint(sl, m, value, label, tex_amp)

    blobs("paraspinal", rel["muscle"])
    for b in sh["vertebra"]:
        sl, f, _ = smp.blob(b)
        if sl is not None:
            paint(sl, f <= 1, rel["cortical"])
            paint(sl, f <= 1 - 2.5 / 17.0, rel["marrow"], tex_amp=0.05)
    blobs("canal", rel["csf"])
    tubes("aorta", rel["aorta"])
    blobs("kidney", rel["kidney"], tex_amp=0.04)
    blobs("spleen", rel["spleen"], tex_amp=0.03)
    tubes("stomach", rel["stomach"], tex_amp=0.04)
    blobs("gallbladder", rel["gallbladder"])
    blobs("liver", rel["liver"], MRI_LABEL_OF["liver"], tex_amp=0.04)
    vessels = MRI_LABEL_OF["hepatic_vessels"]
    tubes("ivc", rel["vein"], vessels)
    in_liver = lambda sl: lab[sl] != 0  # noqa: E731 - portal/hepatic branches only inside the liver
    tubes("portal", rel["vein"], vessels, items=sh["portal"][:1])
    tubes("portal", rel["vein"], vessels, cond=in_liver, items=sh["portal"][1:])
    tubes("hepatic_vein", rel["vein"], vessels, cond=in_liver)
    tubes("duct", rel["duct"], MRI_LABEL_OF["bile_duct"], items=sh["duct"][:3])
    tubes("duct", rel["duct"], MRI_LABEL_OF["bile_duct"], cond=in_liver, items=sh["duct"][3:])
    tubes("nerve", rel["nerve"])
    tumour = MRI_LABEL_OF["tumour"]
    for b in sh["tumour"]:
        sl, f, _ = smp.blob(b)
        if sl is not None:
            m = f <= 1
            # heterogeneous: slightly darker core, textured
            paint(sl, m, rel["tumour"], tumour, tex_amp=0.07)
            paint(sl, f <= 0.45, rel["tumour"] * 0.85, tumour, tex_amp=0.05)
    tubes("tentacle", rel["tumour"], tumour, tex_amp=0.05)

    # blur, bias (multiplicative), Rician noise
    if blur_voxels > 0:
        img = ndimage.gaussian_filter(img, blur_voxels, truncate=3.0, mode="nearest")
    bias = smooth_field(smp, patient.bias_k, patient.bias_phase, step=8.0)
    img *= np.exp(np.float32(patient.bias_strength) * bias) * S
    sigma = np.float32(patient.scale * (patient.noise_rel if noise is None else float(noise)))
    if sigma > 0:
        nrng = np.random.default_rng(patient.noise_seed)
        n1 = nrng.standard_normal(img.shape, dtype=np.float32)
        n1 *= sigma
        n1 += img
        n2 = nrng.standard_normal(img.shape, dtype=np.float32)
        n2 *= sigma
        img = np.sqrt(n1 * n1 + n2 * n2)
    np.maximum(img, 0, out=img)
    geo = dict(spacing=tuple(float(v) for v in spacing), origin=tuple(float(v) for v in origin))
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    return Volume(img.astype(np.float32, copy=False), direction=d.copy(), **geo), Volume(lab, direction=d.copy(), **geo)


def mri_patient_info(patient: MRIPatient, labels: Optional[Volume] = None, seed=None) -> dict:
    """The ``info`` dict of :func:`make_liver_mri_phantom` (tumour volume measured on ``labels``)."""
    vol_ml = None
    if labels is not None:
        vol_ml = float(np.count_nonzero(labels.array == MRI_LABEL_OF["tumour"]) * np.prod(labels.spacing) / 1000.0)
    return {
        "pni": bool(patient.pni),
        "tumour_centre_lps": [float(v) for v in patient.world_of(patient.tumour_centre)[0]],
        "tumour_volume_ml": vol_ml,
        "tumour_diameter_mm": float(patient.tumour_diameter),
        "tumour_main_radius_mm": float(patient.tumour_main_radius),
        "nerve_path_lps": patient.world_of(patient.nerve_path).tolist(),
        "nerve_radius_mm": float(patient.nerve_radius),
        "pni_extent_mm": float(patient.pni_extent),
        "pni_rule": PNI_RULE,
        "labels": dict(MRI_LABELS),
        "seed": seed,
    }


def make_liver_mri_phantom(seed: SeedLike, shape=None, spacing=None,
                           orientation: Union[str, np.ndarray] = "random", oblique: Union[bool, float] = False,
                           pni: Optional[bool] = None, *, noise: Optional[float] = None,
                           fov_mm=None) -> Tuple[Volume, Volume, dict]:
    """One synthetic HBP liver MRI, its label map and ``info`` (see the module docstring).

    ``seed`` fixes everything (patient, PNI status when ``pni`` is None, grid, noise). Grid
    arguments as in :func:`random_mri_grid`. ``info``: pni, tumour_centre_lps, tumour_volume_ml
    (on this grid), seed, plus tumour_diameter_mm, tumour_main_radius_mm, nerve_path_lps,
    nerve_radius_mm, pni_extent_mm, pni_rule, labels.
    """
    seed_out = int(seed) if isinstance(seed, (int, np.integer)) else None
    rng = seeded_rng(seed)
    patient = random_mri_patient(rng, pni=pni)
    grid = random_mri_grid(rng, patient, shape=shape, spacing=spacing, orientation=orientation,
                           oblique=oblique, fov_mm=fov_mm)
    mri, lab = sample_mri_on_grid(patient, *grid, noise=noise)
    return mri, lab, mri_patient_info(patient, lab, seed_out)
