"""Synthetic contrast-enhanced abdominal CT phantoms with BTCV-style organ labels.

Why: tests, demos and the demo weights of NEMESIS (a CT foundation model) and of its
organ-presence probe need CT-like volumes with known anatomy, in arbitrary voxel geometries,
without shipping patient data. The phantom is meant to *look* like an abdominal CT to a
model (HU ranges, organ layout, texture, noise), not to be anatomically exact.

How it works
------------
A *patient* (:class:`PatientParams`, drawn by :func:`random_patient`) is a set of smooth
implicit shapes defined in a patient frame in millimetres (x towards patient Left, y towards
Posterior, z towards Superior, origin on the body axis at about the L1 level), placed in the
world (LPS mm) by a small random pose rotation and a table offset. The patient is then
*sampled* (:func:`sample_phantom_on_grid`) onto any voxel grid (shape, spacing, origin,
direction — the :class:`~pantheon.io.volume.Volume` convention): every shape is evaluated on
the world position of each voxel centre. Hence the same patient sampled on an LPS grid, a
RAS-stored grid, a permuted, anisotropic or oblique grid puts every organ at the same world
position — which is what the geometry tests check.

Shapes are deformed ellipsoids (low-frequency sinusoidal bumps on the normalised radius) and
tubes (swept spheres along smoothed polylines), each with random size (about +-15 %), position
(about +-10 mm) and small rotations. Every shape is evaluated only inside its own bounding box
in index space, with coordinates built from broadcast sums (the voxel-to-patient map is
affine), which keeps a 128 x 192 x 192 volume around a second on two cores.

What is modelled (painting order; later overwrites earlier, so labels never overlap)
-------------------------------------------------------------------------------------
air outside the body; body cross-section (ellipse, flattened back) with subcutaneous fat,
a muscular abdominal wall, visceral fat; lung bases above two diaphragm domes and the bottom
of the heart; psoas and paraspinal muscles; colon (with gas and stool) and small-bowel loops;
the labelled organs; hepatic veins inside the liver (HU only, the liver label keeps them, as in
BTCV); then the skeleton (vertebral bodies with cortical shell, discs, neural arches, spinal
canal, spinous and transverse processes, lower ribs), which carves any organ it touches.
Finally a smooth low-frequency bias (a few HU), a mild Gaussian blur (partial volume, as a CT
reconstruction kernel) and correlated Gaussian noise (sigma 10-20 HU) are applied.

Nominal HU (each patient jitters them by a few HU)
--------------------------------------------------
============================  ===========  ==============================================
tissue                        HU           note
============================  ===========  ==============================================
air                           -1000        outside the body, bowel / stomach gas
lung                          -850
fat (subcutaneous)            -100         with +-8 HU texture
fat (visceral)                -90          with +-10 HU texture
muscle                        +50          abdominal wall, psoas, paraspinal, diaphragm
liver                         +60
spleen                        +50
kidney cortex / medulla       +160/+110    corticomedullary-like enhancement; sinus -30
aorta                         +200         arterial contrast (+-35 per patient)
IVC                           +140
portal / splenic vein         +160
hepatic veins                 +140         inside the liver label, as in BTCV
stomach wall / fluid          +40/+10      plus an anterior gas pocket (supine patient)
gallbladder                   +10          bile
pancreas                      +45          lobulated outline
adrenals                      +35
esophagus                     +40          with a small air lumen
bowel wall / content          +40/+15      colon: stool -120 with gas
bone cortical / cancellous    +900/+300    posterior elements +600, ribs +550, disc +90
heart (bottom)                +110         above the left dome, mostly outside the FOV
============================  ===========  ==============================================

Label map (uint8, BTCV indices)
-------------------------------
0 background, 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver,
7 stomach (wall and content), 8 aorta, 9 inferior vena cava, 10 portal and splenic vein,
11 pancreas, 12 right adrenal gland, 13 left adrenal gland. "Right" is the *patient's* right,
i.e. negative LPS x.

Public API
----------
- :func:`make_abdomen_phantom` — one random (CT, labels) pair on a random or given grid.
- :func:`random_patient`, :func:`random_grid`, :func:`sample_phantom_on_grid` — the same steps
  separately, to resample one patient on several grids.
- :func:`make_phantom_dataset` — many cases, optionally written as NIfTI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np
from scipy import ndimage

from pantheon.io.volume import Volume

__all__ = [
    "BTCV_LABELS",
    "LABEL_OF",
    "DEFAULT_FOV_MM",
    "Grid",
    "PatientParams",
    "random_patient",
    "random_grid",
    "orientation_matrix",
    "sample_phantom_on_grid",
    "make_abdomen_phantom",
    "make_phantom_dataset",
]

SeedLike = Union[int, np.integer, np.random.Generator, np.random.SeedSequence, None]

#: BTCV label index -> name.
BTCV_LABELS: Dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right_kidney",
    3: "left_kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior_vena_cava",
    10: "portal_and_splenic_vein",
    11: "pancreas",
    12: "right_adrenal_gland",
    13: "left_adrenal_gland",
}
#: name -> BTCV label index.
LABEL_OF: Dict[str, int] = {v: k for k, v in BTCV_LABELS.items()}

#: Default field of view (x = left-right, y = antero-posterior, z = cranio-caudal), mm.
#: The z extent is drawn in (200, 260) mm unless given.
DEFAULT_FOV_MM = (320.0, 320.0, 230.0)

AIR_HU = -1000.0
HU_MIN, HU_MAX = -1024.0, 3071.0

# Nominal HU values; random_patient jitters them (see the module docstring table).
NOMINAL_HU: Dict[str, float] = {
    "lung": -850.0, "fat_sc": -100.0, "fat_visc": -90.0, "muscle": 50.0, "heart": 110.0,
    "liver": 60.0, "spleen": 50.0, "kidney_cortex": 160.0, "kidney_medulla": 110.0,
    "renal_sinus": -30.0, "aorta": 200.0, "ivc": 140.0, "portal": 160.0, "hepatic_vein": 140.0,
    "stomach_wall": 40.0, "stomach_fluid": 10.0, "gallbladder": 10.0, "pancreas": 45.0,
    "adrenal": 35.0, "esophagus": 40.0, "bowel_wall": 40.0, "bowel_content": 15.0,
    "stool": -120.0, "bone_cortical": 900.0, "bone_cancellous": 300.0, "bone_posterior": 600.0,
    "rib": 550.0, "disc": 90.0, "csf": 15.0,
}


# =====================================================================================
# small geometry helpers
# =====================================================================================
def seeded_rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _rotation(axis, angle_rad: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def euler_matrix(rx_deg=0.0, ry_deg=0.0, rz_deg=0.0) -> np.ndarray:
    """Rotation about x, then y, then z (patient axes), degrees."""
    return (_rotation((0, 0, 1), np.radians(rz_deg)) @ _rotation((0, 1, 0), np.radians(ry_deg))
            @ _rotation((1, 0, 0), np.radians(rx_deg)))


def small_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    return _rotation(axis, np.radians(rng.uniform(-max_deg, max_deg)))


def _cross(a, b) -> np.ndarray:
    """Cross product of two 3-vectors (np.cross is slow for single vectors, called per segment)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _orthonormal_frame(d: np.ndarray) -> np.ndarray:
    """3x3 matrix with columns (e1, e2, d/|d|), an orthonormal frame around direction d."""
    e3 = d / np.linalg.norm(d)
    helper = (1.0, 0.0, 0.0) if abs(e3[0]) < 0.9 else (0.0, 1.0, 0.0)
    e1 = _cross(e3, helper)
    e1 /= np.linalg.norm(e1)
    e2 = _cross(e3, e1)
    return np.stack([e1, e2, e3], axis=1)


# =====================================================================================
# shapes
# =====================================================================================
@dataclass
class Blob:
    """A smoothly deformed (super)ellipsoid.

    Inside where ``f(u) = ||u||_p - sum_m amp_m sin(k_m . u + phase_m) <= 1`` with
    ``u = rot^T (p - centre) / radii`` the normalised local coordinates of the patient-frame
    point ``p``. ``power`` 2 is an ellipsoid; 4 makes a rounded cylinder (vertebral bodies).
    The bumps are low-frequency (|k| ~ 2-4 rad per radius), so surfaces stay smooth.
    """

    centre: np.ndarray
    radii: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    bump_k: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    bump_phase: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bump_amp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    power: int = 2

    def aabb(self, pad: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
        grow = pad * (1.0 + float(np.sum(np.abs(self.bump_amp))))
        if self.power == 4:
            grow *= 1.2  # the rounded cylinder reaches its corners at ~1.19 along the diagonals
        half = np.abs(self.rot) @ (np.asarray(self.radii) * grow)
        return self.centre - half, self.centre + half


@dataclass
class Tube:
    """A tube: union of capsules (swept spheres of linearly varying radius) along a polyline.

    The field returned for it is an approximate signed distance in mm (``dist - radius``), so
    walls of a fixed thickness are easy to cut (stomach, bowel).
    """

    points: np.ndarray  # (n, 3) patient mm
    radii: np.ndarray  # (n,)

    def aabb(self, pad_mm: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
        r = float(np.max(self.radii)) + pad_mm
        return self.points.min(axis=0) - r, self.points.max(axis=0) + r


def random_blob(rng, centre, radii, rot=None, *, size_jitter=0.15, pos_jitter=10.0,
                 rot_jitter_deg=10.0, bumps=3, bump_amp=0.06, power=2) -> Blob:
    """A blob with random size (one common scale +-size_jitter, +-5 % per axis), position and tilt."""
    scale = rng.uniform(1 - size_jitter, 1 + size_jitter) * rng.uniform(0.95, 1.05, size=3)
    rot = np.eye(3) if rot is None else rot
    rot = small_rotation(rng, rot_jitter_deg) @ rot
    k = rng.normal(size=(bumps, 3))
    k *= (rng.uniform(1.5, 3.5, size=bumps) / np.linalg.norm(k, axis=1))[:, None]
    return Blob(
        centre=np.asarray(centre, dtype=np.float64) + rng.uniform(-pos_jitter, pos_jitter, size=3),
        radii=np.asarray(radii, dtype=np.float64) * scale,
        rot=rot,
        bump_k=k,
        bump_phase=rng.uniform(0, 2 * np.pi, size=bumps),
        bump_amp=rng.uniform(0.3, 1.0, size=bumps) * bump_amp,
        power=power,
    )


def smooth_polyline(points: np.ndarray, radii: np.ndarray, per_segment: int = 4):
    """Catmull-Rom interpolation through control points, so tubes bend smoothly."""
    p = np.asarray(points, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    if len(p) < 3:
        return p, r
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out_p, out_r = [], []
    for s in range(len(p) - 1):
        p0, p1, p2, p3 = ext[s], ext[s + 1], ext[s + 2], ext[s + 3]
        for t in np.linspace(0, 1, per_segment, endpoint=False):
            t2, t3 = t * t, t * t * t
            out_p.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                                + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
            out_r.append(r[s] + (r[s + 1] - r[s]) * t)
    out_p.append(p[-1])
    out_r.append(r[-1])
    return np.array(out_p), np.array(out_r)


def random_tube(rng, points, radii, *, size_jitter=0.15, pos_jitter=10.0, wiggle=3.0,
                 per_segment=4) -> Tube:
    """A tube through jittered control points: common shift, per-point wiggle, radius scale."""
    pts = np.asarray(points, dtype=np.float64)
    pts = pts + rng.uniform(-pos_jitter, pos_jitter, size=3) + rng.normal(scale=wiggle, size=pts.shape)
    rad = np.asarray(radii, dtype=np.float64) * rng.uniform(1 - size_jitter, 1 + size_jitter)
    rad = rad * rng.uniform(0.93, 1.07, size=rad.shape)
    pts, rad = smooth_polyline(pts, rad, per_segment)
    return Tube(pts, rad)


# =====================================================================================
# patient
# =====================================================================================
@dataclass
class Body:
    """Body outline: an ellipse (posterior half a squircle: flattened back on the table)."""

    a: float  # left-right half width at z = 0, mm
    b_ant: float  # anterior half depth, mm
    b_post: float  # posterior half depth, mm
    squircle: float  # 0 = elliptical back, -> 1 = square back
    taper: float  # relative change of the width per 100 mm in z
    fat: float  # subcutaneous fat thickness, mm
    muscle: float  # abdominal wall muscle thickness, mm


@dataclass
class PatientParams:
    """Everything that defines one synthetic patient, independent of any voxel grid.

    ``centre`` (world LPS mm) and ``pose`` (3x3, columns = world directions of the patient x,
    y, z axes) place the patient frame in the world; all shapes live in the patient frame.
    ``noise_seed`` makes the noise of a given (patient, grid) pair reproducible.
    """

    centre: np.ndarray
    pose: np.ndarray
    body: Body
    hu: Dict[str, float]
    organs: Dict[str, list]  # name -> list of Blob / Tube
    spine: Dict[str, object]
    ribs: Dict[str, float]
    diaphragm: Dict[str, float]
    bowel: List[Tube]
    colon: List[Tube]
    texture_k: np.ndarray  # (m, 3) rad/mm, world-fixed smooth texture
    texture_phase: np.ndarray
    bias_k: np.ndarray
    bias_phase: np.ndarray
    bias_hu: float
    noise_hu: float
    noise_seed: int
    gas_fraction: Dict[str, float]
    fov_centre_z: float  # patient z of a typical abdominal FOV centre, mm

    def world_of(self, p_patient) -> np.ndarray:
        """World (LPS mm) positions (N, 3) of patient-frame points (N, 3)."""
        p = np.atleast_2d(np.asarray(p_patient, dtype=np.float64))
        return p @ self.pose.T + self.centre

    def organ_world_centre(self, name: str) -> np.ndarray:
        """Nominal world centre of an organ's first shape (a rough marker, not the label centroid)."""
        s = self.organs[name][0]
        c = s.centre if isinstance(s, Blob) else s.points.mean(axis=0)
        return self.world_of(c)[0]


def random_patient(seed: SeedLike = None) -> PatientParams:
    """Draw one synthetic patient (anatomy, HU values, noise level) from ``seed``.

    Sizes and positions are adult-like: body about 260-320 mm wide; organ sizes vary by about
    +-15 % per organ (plus +-6 % for the whole patient) and positions by about +-10 mm.
    """
    rng = seeded_rng(seed)
    s = rng.uniform(0.94, 1.06)  # whole-patient scale

    body = Body(
        a=145.0 * s * rng.uniform(0.93, 1.07),
        b_ant=105.0 * s * rng.uniform(0.9, 1.1),
        b_post=108.0 * s * rng.uniform(0.95, 1.05),
        squircle=rng.uniform(0.75, 0.92),
        taper=rng.uniform(-0.03, 0.03),
        fat=rng.uniform(10.0, 28.0),
        muscle=rng.uniform(8.0, 13.0),
    )
    # per-patient HU: a few HU of jitter (5 % for bright tissues), more for the contrast bolus
    hu = {k: v + rng.normal(scale=max(3.0, 0.05 * abs(v))) for k, v in NOMINAL_HU.items()}
    hu["aorta"] = NOMINAL_HU["aorta"] + rng.uniform(-30, 40)

    # Organ positions follow the size of the abdominal cavity: a thick fat layer or a flat belly
    # leaves less room in front and at the sides (the back is bound to the spine).
    wall = body.fat + body.muscle
    fx = np.clip((body.a - wall) / (145.0 * s - 29.5), 0.85, 1.15)
    fy_ant = np.clip((body.b_ant - wall) / (105.0 * s - 29.5), 0.75, 1.15)

    def P(x, y, z):  # nominal patient-frame point scaled with the patient and its cavity
        return np.array([x * fx, y * (fy_ant if y < 0 else 1.0), z], dtype=np.float64) * s

    def blob(c, r, rot=None, **kw):
        return random_blob(rng, P(*c), np.asarray(r) * s, rot, **kw)

    def tube(pts, rads, **kw):
        return random_tube(rng, np.array([P(*p) for p in pts]), np.asarray(rads) * s, **kw)

    organs: Dict[str, list] = {}

    # --- liver: big right lobe + left lobe crossing the midline anteriorly + caudate
    right_lobe = blob((-62, 2, 55), (72, 78, 78), euler_matrix(0, 8, 10), bump_amp=0.05)
    left_lobe = blob((10, -48, 78), (62, 30, 38), euler_matrix(0, -15, -10), bump_amp=0.06)
    caudate = blob((-18, 10, 55), (20, 18, 30), None, bump_amp=0.05)
    organs["liver"] = [right_lobe, left_lobe, caudate]
    # --- spleen: left, posterior, long axis along the posterior-lateral ribs
    organs["spleen"] = [blob((86, 36, 62), (26, 54, 46), euler_matrix(0, 0, 35), bump_amp=0.07)]
    # --- gallbladder: pear under the inferior surface of the right lobe, anterior
    organs["gallbladder"] = [blob((-48, -42, 12), (15, 16, 34), euler_matrix(-25, 10, 0), bump_amp=0.05)]
    # --- kidneys: posterior, either side of the spine; right one lower (under the liver).
    # Upper poles tilted medially, hilum turned antero-medially.
    organs["right_kidney"] = [blob((-68, 42, -12), (24, 27, 52), euler_matrix(0, 12, 30), bump_amp=0.04,
                                   pos_jitter=7.0)]
    organs["left_kidney"] = [blob((68, 42, 5), (24, 27, 52), euler_matrix(0, -12, -30), bump_amp=0.04,
                                  pos_jitter=7.0)]
    # --- adrenals: small flat bodies supero-medial to the kidneys
    organs["right_adrenal_gland"] = [blob((-40, 28, 52), (5, 14, 18), euler_matrix(0, 0, 30), bump_amp=0.08,
                                          pos_jitter=4.0)]
    organs["left_adrenal_gland"] = [blob((40, 28, 50), (5, 14, 18), euler_matrix(0, 0, -30), bump_amp=0.08,
                                         pos_jitter=4.0)]
    # --- stomach: J-shaped tube from the fundus (upper left, posterior) to the pylorus
    organs["stomach"] = [tube([(48, 2, 112), (66, -22, 82), (58, -45, 47), (25, -60, 25),
                               (-8, -55, 28), (-26, -40, 34)],
                              [33, 32, 28, 22, 16, 11], pos_jitter=8.0, wiggle=4.0)]
    # --- esophagus: through the hiatus, anterior-left of the aorta, into the cardia
    organs["esophagus"] = [tube([(8, 8, 180), (12, 0, 145), (22, -5, 120), (38, 0, 105)],
                                [8, 8, 8, 8], pos_jitter=4.0, wiggle=1.5, size_jitter=0.1)]
    # --- pancreas: head right of midline by the duodenum, neck anterior to the vessels, tail
    # towards the splenic hilum (posterior, left, higher)
    organs["pancreas"] = [tube([(-38, -8, 2), (-22, -22, 8), (0, -30, 14), (28, -22, 22),
                                (55, -5, 30), (75, 12, 38)],
                               [14, 12, 10, 10, 9, 8], pos_jitter=6.0, wiggle=2.5)]
    # --- vessels
    aorta_top = [(6, 16, 190), (8, 14, 120), (10, 8, 40), (11, 4, -40), (10, 4, -82)]
    organs["aorta"] = [
        tube(aorta_top, [11.5, 11.5, 11, 10.5, 10], pos_jitter=3.0, wiggle=1.0, size_jitter=0.12),
        # common iliac arteries below the bifurcation (L4)
        tube([(10, 4, -80), (-12, 8, -115), (-38, 14, -160)], [7, 6.5, 6], pos_jitter=2.0, wiggle=1.0),
        tube([(10, 4, -80), (32, 8, -115), (55, 14, -160)], [7, 6.5, 6], pos_jitter=2.0, wiggle=1.0),
    ]
    organs["inferior_vena_cava"] = [
        tube([(-22, 18, 190), (-24, 14, 110), (-24, 8, 40), (-20, 6, -40), (-14, 8, -88)],
             [12, 12, 11, 11, 10], pos_jitter=3.0, wiggle=1.5, size_jitter=0.12),
        tube([(-14, 8, -86), (-40, 16, -130), (-55, 20, -165)], [8, 8, 7], pos_jitter=2.0, wiggle=1.0),
        tube([(-14, 8, -86), (10, 16, -130), (28, 20, -165)], [8, 8, 7], pos_jitter=2.0, wiggle=1.0),
    ]
    organs["portal_and_splenic_vein"] = [
        # portal vein: confluence behind the pancreatic neck -> porta hepatis
        tube([(-4, -16, 14), (-22, -14, 32), (-45, -8, 52), (-62, -4, 62)], [7.5, 7.5, 7, 6],
             pos_jitter=4.0, wiggle=1.5),
        # splenic vein along the back of the pancreas body/tail to the splenic hilum
        tube([(-4, -16, 14), (26, -12, 22), (52, 4, 32), (78, 20, 44)], [5, 5, 5, 5],
             pos_jitter=4.0, wiggle=1.5),
    ]
    # hepatic veins: HU-only branches in the liver converging on the IVC below the diaphragm
    organs["hepatic_veins"] = [
        tube([(-24, 16, 118), (-60, 0, 90), (-95, -10, 60)], [6, 4.5, 3], pos_jitter=4.0, wiggle=3.0),
        tube([(-22, 12, 118), (-35, -25, 85), (-45, -50, 55)], [5.5, 4, 3], pos_jitter=4.0, wiggle=3.0),
        tube([(-18, 10, 118), (0, -25, 95), (15, -50, 80)], [5, 4, 3], pos_jitter=4.0, wiggle=3.0),
    ]
    # muscles
    organs["psoas"] = [
        tube([(sgn * 24, 35, 45), (sgn * 33, 30, -20), (sgn * 45, 22, -90), (sgn * 58, 10, -170)],
             [5, 13, 20, 24], pos_jitter=3.0, wiggle=1.5, size_jitter=0.12) for sgn in (-1, 1)]
    organs["paraspinal"] = [
        blob((sgn * 36, 78, 0), (26, 20, 400), None, pos_jitter=3.0, rot_jitter_deg=2.0, bump_amp=0.03)
        for sgn in (-1, 1)]

    # --- spine: vertebral bodies with lumbar lordosis, sizes growing caudally
    levels = []
    height, disc = 26.0 * s * rng.uniform(0.95, 1.05), 9.0 * s * rng.uniform(0.9, 1.1)
    z = rng.uniform(-8, 8) * s  # centre of L1 near z = 0
    n_up = int(np.ceil(260 * s / (height + disc)))
    for n in range(-5, n_up):  # well below L5 to well above T10 (covers any FOV)
        zc = z + n * (height + disc)
        lord = 10.0 * np.exp(-((zc + 60 * s) / (110 * s)) ** 2)  # lumbar lordosis: L3-L4 most anterior
        grow = 1.0 + 0.03 * np.clip(-n, -4, 5)
        levels.append({"z": zc, "y": 36.0 * s - lord, "rx": 23.0 * s * grow, "ry": 17.0 * s * grow,
                       "hz": height / 2, "lumbar": zc < 25 * s})
    spine = {"levels": levels, "x": rng.uniform(-3, 3), "canal_r": 8.0 * s, "y_back": 42.0 * s}

    ribs = {"pitch": 31.0 * s * rng.uniform(0.93, 1.07), "phase": rng.uniform(0, 1),
            "slope": 85.0 * s, "z_margin_post": 0.0 * s + rng.uniform(-10, 10),
            "z_margin_ant": 75.0 * s + rng.uniform(-10, 10), "r_radial": 3.5, "r_z": 5.5}
    # diaphragm domes: right one at the top of the liver, left one ~15 mm lower
    liver_top = right_lobe.centre[2] + right_lobe.radii[2] * 0.95
    diaphragm = {"zR": liver_top, "xR": right_lobe.centre[0], "zL": liver_top - 15 * s + rng.normal(scale=4),
                 "xL": 60.0 * s, "curv": 140.0 * s, "thick": 4.0}
    # bottom of the heart, resting on the diaphragm between the domes (mostly above the FOV)
    organs["heart"] = [random_blob(rng, np.array([15.0 * s, -40.0 * s, liver_top + 35 * s]),
                                    np.array([70.0, 50.0, 55.0]) * s, euler_matrix(0, 0, -20), bump_amp=0.03,
                                    size_jitter=0.1, pos_jitter=5.0)]

    # bowel: colon frame + small-bowel loops in the lower anterior abdomen
    colon = [
        tube([(-95, 5, -120), (-98, 0, -60), (-92, -10, 0), (-70, -40, 20)], [22, 24, 22, 20],
             pos_jitter=6.0, wiggle=4.0),
        tube([(-70, -40, 20), (-30, -68, -5), (20, -68, -20), (60, -50, 10), (92, -10, 50)],
             [20, 19, 19, 18, 18], pos_jitter=8.0, wiggle=5.0),
        tube([(92, -10, 50), (100, 15, 10), (100, 20, -60), (80, 10, -120)], [18, 18, 17, 17],
             pos_jitter=5.0, wiggle=4.0),
    ]
    bowel = []
    for _ in range(rng.integers(9, 15)):
        start = np.array([rng.uniform(-65, 65), rng.uniform(-70, -5), rng.uniform(-150, -25)])
        pts = [start]
        for _ in range(4):
            step = rng.normal(size=3)
            step *= rng.uniform(18, 28) / np.linalg.norm(step)
            pts.append(pts[-1] + step)
        bowel.append(tube([tuple(p / s) for p in pts], [rng.uniform(10, 14)] * 5, pos_jitter=0.0,
                          wiggle=1.0, size_jitter=0.05))

    # world-fixed smooth texture (wavelengths 12-50 mm) and a very smooth bias field
    n_tex = 12
    tk = rng.normal(size=(n_tex, 3))
    tk *= (2 * np.pi / rng.uniform(12, 50, size=n_tex) / np.linalg.norm(tk, axis=1))[:, None]
    bk = rng.normal(size=(2, 3))
    bk *= (2 * np.pi / rng.uniform(200, 400, size=2) / np.linalg.norm(bk, axis=1))[:, None]

    return PatientParams(
        centre=np.array([rng.uniform(-25, 25), rng.uniform(-40, 40), rng.uniform(-450, 150)]),
        pose=euler_matrix(rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-4, 4)),
        body=body, hu=hu, organs=organs, spine=spine, ribs=ribs, diaphragm=diaphragm,
        bowel=bowel, colon=colon,
        texture_k=tk, texture_phase=rng.uniform(0, 2 * np.pi, size=n_tex),
        bias_k=bk, bias_phase=rng.uniform(0, 2 * np.pi, size=2), bias_hu=rng.uniform(2, 6),
        noise_hu=float(rng.uniform(10, 20)), noise_seed=int(rng.integers(2 ** 31)),
        gas_fraction={"stomach": rng.uniform(0.2, 0.45), "colon": rng.uniform(0.2, 0.5)},
        fov_centre_z=float(rng.uniform(10, 40) * s),
    )


# =====================================================================================
# grid
# =====================================================================================
class Grid(NamedTuple):
    """A voxel grid in the Volume convention: shape (K, J, I), spacing (si, sj, sk) mm,
    origin (LPS mm of voxel 0), direction (3x3, columns = LPS directions of i, j, k)."""

    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: np.ndarray


_LETTER = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
# axial storages seen in practice, with rough frequencies; permuted ones are drawn separately
_AXIAL_CODES = (("LPS", 0.4), ("RAS", 0.3), ("LPI", 0.1), ("RAI", 0.05), ("LAS", 0.05), ("RPS", 0.05),
                ("LAI", 0.05))


def orientation_matrix(code: str) -> np.ndarray:
    """Direction matrix for an axis code naming where i, j, k point ('LPS' = identity, 'RAS', 'ASL' ...)."""
    code = code.upper()
    if code == "IDENTITY":
        code = "LPS"
    if len(code) != 3 or any(c not in _LETTER for c in code) or sorted(_LETTER[c][0] for c in code) != [0, 1, 2]:
        raise ValueError(f"orientation code {code!r} must name each of L/R, P/A, S/I once")
    d = np.zeros((3, 3))
    for n, c in enumerate(code):
        axis, sign = _LETTER[c]
        d[axis, n] = sign
    return d


def random_orientation_code(rng: np.random.Generator) -> str:
    if rng.uniform() < 0.2:  # any permutation with any flips (coronal / sagittal storage, odd exports)
        perm = rng.permutation(3)
        return "".join(("LR", "PA", "SI")[a][rng.integers(2)] for a in perm)
    codes, probs = zip(*_AXIAL_CODES)
    return codes[rng.choice(len(codes), p=np.array(probs) / sum(probs))]


def random_grid(seed: SeedLike, patient: PatientParams, shape=None, spacing=None,
                orientation: Union[str, np.ndarray] = "random", oblique: Union[bool, float] = False,
                fov_mm=None) -> Grid:
    """A voxel grid framing the patient's abdomen.

    - ``orientation``: "random" (mostly LPS/RAS axial storages, sometimes flipped slice order,
      20 % arbitrary permutations), "identity" (= "LPS"), any axis code such as "RAS" or "ASL",
      or an explicit 3x3 direction matrix.
    - ``oblique``: False, True (random tilt up to 15 degrees about a random axis) or a maximum
      angle in degrees.
    - ``fov_mm``: (x, y, z) field of view along the patient axes; default 320 x 320 x U(200, 260).
      The grid is centred on the abdomen with +-10 mm (+-20 mm in z) random shifts.
    - ``shape`` (K, J, I) and ``spacing`` (si, sj, sk), both in grid order:
      both given -> used as is; only shape -> spacing = FOV / shape; only spacing -> shape =
      FOV / spacing; spacing="clinical" -> in-plane 0.6-1.0 mm, slices 1.0-3.0 mm (large!);
      neither -> a small fast default: in-plane 1.6-2.2 mm, slices 1.8-3.0 mm (about 65-145 x
      145-200 x 145-200 voxels).
    """
    rng = seeded_rng(seed)
    if isinstance(orientation, str):
        code = random_orientation_code(rng) if orientation.lower() == "random" else orientation
        direction = orientation_matrix(code)
    else:
        direction = np.asarray(orientation, dtype=np.float64).reshape(3, 3)
    if oblique:
        max_deg = 15.0 if oblique is True else float(oblique)
        direction = small_rotation(rng, max_deg) @ direction
    if fov_mm is None:
        fov = np.array([DEFAULT_FOV_MM[0], DEFAULT_FOV_MM[1], rng.uniform(200, 260)])
    else:
        fov = np.asarray(fov_mm, dtype=np.float64)
    # which patient axis each grid axis (i, j, k) runs along
    world_dirs = patient.pose.T @ direction  # patient-frame directions of the grid axes
    axis_of = np.argmax(np.abs(world_dirs), axis=0)
    if sorted(axis_of) != [0, 1, 2]:  # strongly oblique: fall back on the largest FOV everywhere
        axis_of = np.array([0, 1, 2])
    fov_ijk = fov[axis_of]

    if isinstance(spacing, str):
        if spacing != "clinical":
            raise ValueError(f"spacing must be a 3-tuple, 'clinical' or None, got {spacing!r}")
        inplane = rng.uniform(0.6, 1.0)
        spacing_ijk = np.array([inplane, inplane, rng.uniform(1.0, 3.0)])
        shape_ijk = np.maximum(1, np.round(fov_ijk / spacing_ijk)).astype(int)
        if shape is not None:
            shape_ijk = np.array(shape[::-1], dtype=int)
    elif shape is not None and spacing is not None:
        shape_ijk = np.array(shape[::-1], dtype=int)
        spacing_ijk = np.asarray(spacing, dtype=np.float64)
    elif shape is not None:
        shape_ijk = np.array(shape[::-1], dtype=int)
        spacing_ijk = fov_ijk / shape_ijk
    elif spacing is not None:
        spacing_ijk = np.asarray(spacing, dtype=np.float64)
        shape_ijk = np.maximum(1, np.round(fov_ijk / spacing_ijk)).astype(int)
    else:
        inplane = rng.uniform(1.6, 2.2)
        spacing_ijk = np.array([inplane, inplane, rng.uniform(1.8, 3.0)])
        shape_ijk = np.maximum(1, np.round(fov_ijk / spacing_ijk)).astype(int)
    if len(shape_ijk) != 3 or len(spacing_ijk) != 3:
        raise ValueError("shape and spacing need three values")

    centre_patient = np.array([rng.uniform(-10, 10), rng.uniform(-10, 10) - 5.0,
                               patient.fov_centre_z + rng.uniform(-20, 20)])
    centre_world = patient.world_of(centre_patient)[0]
    m = direction @ np.diag(spacing_ijk)
    origin = centre_world - m @ ((shape_ijk - 1) / 2.0)
    return Grid(tuple(int(v) for v in shape_ijk[::-1]), tuple(float(v) for v in spacing_ijk),
                tuple(float(v) for v in origin), direction)


# =====================================================================================
# sampling
# =====================================================================================
class Sampler:
    """Evaluates patient-frame shapes on a voxel grid, one bounding box at a time.

    The voxel -> patient map is affine, ``p = p0 + A @ (i, j, k)``, so any affine function of
    ``p`` over a box of voxels is a broadcast sum of three 1D ramps — no coordinate arrays of
    the full volume are needed for small shapes.
    """

    def __init__(self, patient: PatientParams, shape, spacing, origin, direction):
        self.shape = tuple(int(s) for s in shape)  # (K, J, I)
        m = np.asarray(direction, dtype=np.float64).reshape(3, 3) @ np.diag(np.asarray(spacing, dtype=np.float64))
        self.A = patient.pose.T @ m
        self.p0 = patient.pose.T @ (np.asarray(origin, dtype=np.float64) - patient.centre)
        self.A_inv = np.linalg.inv(self.A)
        self.full = (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2]))

    def box(self, lo, hi):
        """Index-space slices (k, j, i) covering the patient-frame box [lo, hi]; None if outside."""
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        ijk = (corners - self.p0) @ self.A_inv.T
        start = np.floor(ijk.min(axis=0)).astype(int)
        stop = np.ceil(ijk.max(axis=0)).astype(int) + 1
        size = np.array(self.shape[::-1])
        start = np.clip(start, 0, size)
        stop = np.clip(stop, 0, size)
        if np.any(stop <= start):
            return None
        return (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))

    def affine(self, sl, rows: np.ndarray, offset: np.ndarray) -> List[np.ndarray]:
        """Arrays over the box ``sl`` of ``rows @ (i, j, k) + offset`` (one per row), float32."""
        return self.affine_at(np.arange(sl[0].start, sl[0].stop, dtype=np.float64),
                              np.arange(sl[1].start, sl[1].stop, dtype=np.float64),
                              np.arange(sl[2].start, sl[2].stop, dtype=np.float64), rows, offset)

    @staticmethod
    def affine_at(ks, js, is_, rows: np.ndarray, offset: np.ndarray) -> List[np.ndarray]:
        """As :meth:`affine` on the lattice of (possibly fractional) indices ks x js x is_."""
        rows = np.atleast_2d(rows)
        offset = np.atleast_1d(offset)
        out = []
        for r, o in zip(rows, offset):
            ti = (r[0] * is_ + o).astype(np.float32)
            tj = (r[1] * js).astype(np.float32)
            tk = (r[2] * ks).astype(np.float32)
            out.append((ti[None, None, :] + tj[None, :, None]) + tk[:, None, None])
        return out

    def patient_coords(self, sl) -> List[np.ndarray]:
        """Patient-frame x, y, z (mm) over the box."""
        return self.affine(sl, self.A, self.p0)

    # ------------------------------------------------------------------ shapes
    def blob(self, b: Blob, pad: float = 1.0):
        """(box, f, u): f <= 1 inside (normalised radius, see Blob); u the local coords."""
        sl = self.box(*b.aabb(pad))
        if sl is None:
            return None, None, None
        radii = np.asarray(b.radii, dtype=np.float64)
        rows = (b.rot.T @ self.A) / radii[:, None]
        off = (b.rot.T @ (self.p0 - b.centre)) / radii
        u = self.affine(sl, rows, off)
        if b.power == 4:
            f = np.sqrt(np.sqrt((u[0] * u[0] + u[1] * u[1]) ** 2 + (u[2] * u[2]) ** 2))
        else:
            f = np.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])
        for k, ph, amp in zip(b.bump_k, b.bump_phase, b.bump_amp):
            (phase,) = self.affine(sl, (k @ rows)[None], np.array([k @ off + ph]))
            f -= np.float32(amp) * np.sin(phase)
        return sl, f, u

    def tube(self, t: Tube, pad_mm: float = 0.0):
        """(box, sd): sd = distance to the axis minus the local radius (mm), < 0 inside."""
        sl = self.box(*t.aabb(pad_mm + 1.0))
        if sl is None:
            return None, None
        size = tuple(s.stop - s.start for s in sl)
        sd = np.full(size, np.inf, dtype=np.float32)
        for a, b, ra, rb in zip(t.points[:-1], t.points[1:], t.radii[:-1], t.radii[1:]):
            d = b - a
            length = float(np.linalg.norm(d))
            if length < 1e-6:
                continue
            r = max(ra, rb) + pad_mm + 1.0
            sub = self.box(np.minimum(a, b) - r, np.maximum(a, b) + r)
            if sub is None:
                continue
            frame = _orthonormal_frame(d)
            w1, w2, sa = self.affine(sub, frame.T @ self.A, frame.T @ (self.p0 - a))
            tt = np.clip(sa / np.float32(length), 0.0, 1.0)
            along = sa - tt * np.float32(length)
            dist = np.sqrt(w1 * w1 + w2 * w2 + along * along)
            val = dist - (np.float32(ra) + tt * np.float32(rb - ra))
            local = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(sub, sl))
            np.minimum(sd[local], val, out=sd[local])
        return sl, sd


def _upsample_linear(coarse: np.ndarray, shape) -> np.ndarray:
    """Separable linear interpolation of a field sampled at ``linspace(0, n - 1, nc)`` per axis."""
    out = coarse
    for axis, n in enumerate(shape):
        nc = out.shape[axis]
        if nc == n:
            continue
        pos = np.linspace(0, nc - 1, n)
        lo = np.minimum(np.floor(pos).astype(int), nc - 2)
        w = (pos - lo).astype(np.float32)
        wshape = [1, 1, 1]
        wshape[axis] = n
        w = w.reshape(wshape)
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, lo + 1, axis=axis) * w
    return out


def smooth_field(smp: "Sampler", wave_k: np.ndarray, phases: np.ndarray, step: float = 3.0) -> np.ndarray:
    """Sum of plane waves (patient frame, so world-fixed) normalised to ~unit std.

    Evaluated on every ``step``-th voxel and linearly upsampled: the waves are much longer than
    a voxel, so this is visually identical and ~20x cheaper than evaluating every voxel.
    """
    axes = [np.linspace(0, n - 1, max(2, int(np.ceil((n - 1) / step)) + 1)) if n > 1 else np.zeros(1)
            for n in smp.shape]
    rows = wave_k @ smp.A
    offs = wave_k @ smp.p0 + phases
    coarse = np.zeros(tuple(len(a) for a in axes), dtype=np.float32)
    for ph in smp.affine_at(axes[0], axes[1], axes[2], rows, offs):
        coarse += np.cos(ph)
    coarse *= np.float32(1.0 / np.sqrt(len(wave_k) / 2.0))
    return _upsample_linear(coarse, smp.shape)


def _kernel_noise_gain(sigma: float, truncate: float) -> float:
    """Std of unit white noise after a 1D Gaussian filter (sqrt of the sum of squared weights)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    return float(np.sqrt(np.sum(w * w)))


def sample_phantom_on_grid(patient: PatientParams, shape, spacing, origin, direction, *,
                           noise_hu: Optional[float] = None, rng: SeedLike = None,
                           dtype=np.int16, blur_voxels: float = 0.6) -> Tuple[Volume, Volume]:
    """Render ``patient`` on a voxel grid: (CT in HU, uint8 BTCV label map), same geometry.

    ``shape`` is (K, J, I), ``spacing`` (si, sj, sk) mm, ``origin`` the LPS position of voxel
    (0, 0, 0) and ``direction`` the 3x3 matrix whose columns are the LPS directions of i, j, k.
    ``noise_hu`` overrides the patient's noise level (0 for a noise-free image); the noise is
    drawn from ``rng`` (default: the patient's own noise seed, so a patient on a given grid is
    reproducible). ``dtype`` int16 (rounded, as a scanner stores it) or float32.
    ``blur_voxels`` is the Gaussian sigma (voxels) mimicking partial volume and the
    reconstruction kernel; the noise is scaled so that its std after the blur is ``noise_hu``.
    """
    smp = Sampler(patient, shape, spacing, origin, direction)
    hu = patient.hu
    K, J, I = smp.shape
    ct = np.full((K, J, I), AIR_HU, dtype=np.float32)
    lab = np.zeros((K, J, I), dtype=np.uint8)

    # ---------------------------------------------------------------- body and layers
    x, y, z = smp.patient_coords(smp.full)
    bd = patient.body
    width = np.float32(bd.a) * (1.0 + np.float32(bd.taper / 100.0) * z)

    def inside_outline(inset: float) -> np.ndarray:
        a = width - np.float32(inset)
        X2 = (x / a) ** 2
        yy = np.where(y < 0, y / np.float32(bd.b_ant - inset), y / np.float32(bd.b_post - inset))
        Y2 = yy * yy
        q = X2 + Y2 - np.where(y > 0, np.float32(bd.squircle ** 2) * X2 * Y2, np.float32(0))
        # the squircle equation also holds far outside (|X|, |Y| > 1/s): keep its central branch
        return (q <= 1.0) & (X2 <= 1.0) & (Y2 <= 1.0)

    body = inside_outline(0.0)
    wall_outer = inside_outline(bd.fat)
    cavity = inside_outline(bd.fat + bd.muscle)
    ring = wall_outer & ~cavity  # the muscular wall, where ribs run
    # behind the vertebral bodies is the back (muscle and bone), never abdominal/thoracic cavity
    back = (np.abs(x - np.float32(patient.spine["x"])) < np.float32(45.0)) & (y > np.float32(patient.spine["y_back"]))
    cavity &= ~back
    del back

    tex = smooth_field(smp, patient.texture_k, patient.texture_phase)

    def paint(sl, mask, value, label=None, tex_amp=0.0, clip="cavity"):
        """Write HU (scalar or array over the box) and optionally a label where ``mask``.

        ``clip`` keeps the paint inside the abdominal cavity (organs, bowel), the body
        (skeleton, back muscles) or nowhere (the body layers themselves).
        """
        if clip == "cavity":
            mask = mask & cavity[sl]
        elif clip == "body":
            mask = mask & body[sl]
        if not mask.any():
            return
        v = value[mask] if isinstance(value, np.ndarray) else np.float32(value)
        if tex_amp:
            v = v + np.float32(tex_amp) * tex[sl][mask]
        ct[sl][mask] = v
        if label is not None:
            lab[sl][mask] = label

    full = smp.full
    paint(full, body, hu["fat_sc"], tex_amp=8.0, clip=None)
    paint(full, wall_outer, hu["muscle"], tex_amp=4.0, clip=None)
    paint(full, cavity, hu["fat_visc"], tex_amp=10.0)

    # ---------------------------------------------------------------- thorax bottom
    dia = patient.diaphragm
    top_sl = smp.box((-bd.a * 1.2, -bd.b_ant, min(dia["zR"], dia["zL"]) - 80),
                     (bd.a * 1.2, bd.b_post, 1e4))
    if top_sl is not None:
        xs, ys, zs = x[top_sl], y[top_sl], z[top_sl]
        c = np.float32(2 * dia["curv"])
        dome = np.maximum(np.float32(dia["zR"]) - ((xs - np.float32(dia["xR"])) ** 2 + ys ** 2) / c,
                          np.float32(dia["zL"]) - ((xs - np.float32(dia["xL"])) ** 2 + ys ** 2) / c)
        paint(top_sl, zs > dome - np.float32(dia["thick"]), hu["muscle"], tex_amp=3.0)
        paint(top_sl, zs > dome, hu["lung"], tex_amp=15.0)
        for b in patient.organs["heart"]:
            sl, f, _ = smp.blob(b)
            if sl is not None:
                paint(sl, f <= 1, hu["heart"], tex_amp=4.0)

    # ---------------------------------------------------------------- muscles
    for t in patient.organs["psoas"]:
        sl, sd = smp.tube(t)
        if sl is not None:
            paint(sl, sd < 0, hu["muscle"], tex_amp=4.0)
    for b in patient.organs["paraspinal"]:
        sl, f, _ = smp.blob(b)
        if sl is not None:
            paint(sl, f <= 1, hu["muscle"], tex_amp=4.0, clip="body")

    # ---------------------------------------------------------------- bowel (unlabelled)
    def hollow(t: Tube, wall_mm, wall_hu, content_hu, gas_fraction, label=None, tex_amp=4.0,
               content_tex=5.0):
        """Tube with a wall, liquid content and a gas pocket on its anterior (upper, supine) side."""
        sl, sd = smp.tube(t)
        if sl is None:
            return
        inside = sd < 0
        paint(sl, inside, wall_hu, label, tex_amp=tex_amp)
        lumen = sd < -np.float32(wall_mm)
        paint(sl, lumen, content_hu, label, tex_amp=content_tex)
        if gas_fraction > 0:
            ys = smp.patient_coords(sl)[1]
            # the tube's exact antero-posterior extent (capsules reach p_y -+ r at their ends)
            ymin = float(np.min(t.points[:, 1] - t.radii))
            ymax = float(np.max(t.points[:, 1] + t.radii))
            level = np.float32(ymin + gas_fraction * (ymax - ymin))
            paint(sl, lumen & (ys < level), AIR_HU, label)

    for n, t in enumerate(patient.colon):
        hollow(t, 3.0, hu["bowel_wall"], hu["stool"], patient.gas_fraction["colon"] * (0.6 + 0.4 * (n % 2)),
               content_tex=60.0)
    for n, t in enumerate(patient.bowel):
        hollow(t, 2.5, hu["bowel_wall"], hu["bowel_content"], 0.25 if n % 4 == 0 else 0.0)

    # ---------------------------------------------------------------- labelled organs
    org = patient.organs

    def solid(name, hu_key, tex_amp=4.0):
        label = LABEL_OF[name]
        for b in org[name]:
            sl, f, _ = smp.blob(b)
            if sl is not None:
                paint(sl, f <= 1, hu[hu_key], label, tex_amp=tex_amp)

    def vessel(name, hu_key, label=True, tex_amp=3.0):
        for t in org[name]:
            sl, sd = smp.tube(t)
            if sl is not None:
                paint(sl, sd < 0, hu[hu_key], LABEL_OF[name] if label else None, tex_amp=tex_amp)

    solid("liver", "liver", tex_amp=5.0)
    solid("spleen", "spleen", tex_amp=5.0)
    solid("gallbladder", "gallbladder", tex_amp=2.0)
    for name, sgn in (("right_kidney", -1.0), ("left_kidney", 1.0)):
        b = org[name][0]
        sl, f, u = smp.blob(b)
        if sl is None:
            continue
        # hilum: medial notch (bean shape) with sinus fat; cortex shell; medulla inside.
        # The medial direction in local coordinates is the patient -sgn*x axis seen from the blob.
        medial = b.rot.T @ np.array([-sgn, -0.5, 0.0])
        medial /= np.linalg.norm(medial)
        proj = u[0] * np.float32(medial[0]) + u[1] * np.float32(medial[1]) + u[2] * np.float32(medial[2])
        r2 = u[0] * u[0] + u[1] * u[1] + u[2] * u[2] - proj * proj  # squared distance from the medial axis
        notch = (proj > 0.6) & (r2 + (proj - 1.0) ** 2 < 0.15)
        kidney = (f <= 1) & ~notch
        label = LABEL_OF[name]
        paint(sl, kidney, hu["kidney_cortex"], label, tex_amp=4.0)
        paint(sl, kidney & (f <= 0.72), hu["kidney_medulla"], label, tex_amp=6.0)
        sinus = kidney & (f <= 0.5) & (proj > 0.25)
        paint(sl, sinus, hu["renal_sinus"], label, tex_amp=10.0)
    solid("right_adrenal_gland", "adrenal", tex_amp=3.0)
    solid("left_adrenal_gland", "adrenal", tex_amp=3.0)
    for t in org["stomach"]:
        hollow(t, 4.0, hu["stomach_wall"], hu["stomach_fluid"], patient.gas_fraction["stomach"],
               label=LABEL_OF["stomach"])
    for t in org["esophagus"]:
        sl, sd = smp.tube(t)
        if sl is not None:
            paint(sl, sd < 0, hu["esophagus"], LABEL_OF["esophagus"], tex_amp=3.0)
            paint(sl, sd < -5.5, AIR_HU, LABEL_OF["esophagus"])
    for t in org["pancreas"]:
        sl, sd = smp.tube(t)
        if sl is not None:  # lobulated: the texture modulates the surface as well as the HU
            paint(sl, sd + 1.5 * tex[sl] < 0, hu["pancreas"], LABEL_OF["pancreas"], tex_amp=6.0)
    vessel("portal_and_splenic_vein", "portal")
    vessel("inferior_vena_cava", "ivc")
    vessel("aorta", "aorta", tex_amp=4.0)
    # hepatic veins: HU only, and only inside the liver label
    liver_label = LABEL_OF["liver"]
    for t in org["hepatic_veins"]:
        sl, sd = smp.tube(t)
        if sl is not None:
            paint(sl, (sd < 0) & (lab[sl] == liver_label), hu["hepatic_vein"], tex_amp=3.0)

    # ---------------------------------------------------------------- skeleton (label 0)
    # painted last with label 0, so bone carves any organ it touches
    _paint_spine(smp, patient, paint, hu)
    _paint_ribs(smp, patient, ct, lab, tex, hu, ring)
    # free the full-grid arrays (None, not del: the nested functions above close over these names)
    x = y = z = width = body = wall_outer = cavity = ring = None

    # ---------------------------------------------------------------- bias, blur, noise
    bias = smooth_field(smp, patient.bias_k, patient.bias_phase, step=8.0)
    in_body = ct > -950
    ct[in_body] += np.float32(patient.bias_hu) * bias[in_body]
    del bias, in_body

    sigma_noise = patient.noise_hu if noise_hu is None else float(noise_hu)
    noise_rng = np.random.default_rng(patient.noise_seed) if rng is None else seeded_rng(rng)
    truncate = 3.0
    if sigma_noise > 0:
        gain = _kernel_noise_gain(blur_voxels, truncate) ** 3 if blur_voxels > 0 else 1.0
        noise = noise_rng.standard_normal(ct.shape, dtype=np.float32)
        noise *= np.float32(sigma_noise / gain)
        ct += noise
        del noise
    if blur_voxels > 0:
        ct = ndimage.gaussian_filter(ct, sigma=blur_voxels, truncate=truncate, mode="nearest")
    np.clip(ct, HU_MIN, HU_MAX, out=ct)
    if np.dtype(dtype) == np.int16:
        ct = np.rint(ct).astype(np.int16)
    else:
        ct = ct.astype(dtype, copy=False)

    geo = dict(spacing=tuple(float(v) for v in spacing), origin=tuple(float(v) for v in origin),
               direction=np.asarray(direction, dtype=np.float64).reshape(3, 3).copy())
    return Volume(ct, **geo), Volume(lab, **{**geo, "direction": geo["direction"].copy()})


def _paint_spine(smp: Sampler, patient: PatientParams, paint, hu) -> None:
    """Vertebral bodies (cortical shell + cancellous core), discs, arches, canal, processes."""
    sp = patient.spine
    x0 = sp["x"]
    canal_r = sp["canal_r"]
    for lv in sp["levels"]:
        zc, yc, rx, ry, hz = lv["z"], lv["y"], lv["rx"], lv["ry"], lv["hz"]
        # disc below this vertebra (between it and the next lower one) and the body itself
        disc = Blob(np.array([x0, yc, zc - hz - 4.5]), np.array([rx * 0.97, ry * 0.97, 5.5]), power=4)
        sl, f, _ = smp.blob(disc)
        if sl is not None:
            paint(sl, f <= 1, hu["disc"], tex_amp=3.0, clip="body", label=0)
        vb = Blob(np.array([x0, yc, zc]), np.array([rx, ry, hz]), power=4)
        sl, f, _ = smp.blob(vb)
        if sl is not None:
            paint(sl, f <= 1, hu["bone_cortical"], clip="body", label=0)
            paint(sl, f <= 1 - 2.5 / min(rx, ry), hu["bone_cancellous"], tex_amp=25.0, clip="body", label=0)
        # neural arch: ring around the canal, same height as the body (a little shorter)
        cy = yc + ry + canal_r + 1.0
        lo = np.array([x0 - canal_r - 8, yc + ry * 0.5, zc - hz * 0.8])
        hi = np.array([x0 + canal_r + 8, cy + canal_r + 8, zc + hz * 0.8])
        sl = smp.box(lo, hi)
        if sl is not None:
            xs, ys, _ = smp.patient_coords(sl)
            dx, dy = xs - np.float32(x0), ys - np.float32(cy)
            r = np.sqrt(dx * dx + dy * dy)
            paint(sl, r < canal_r + 6.5, hu["bone_posterior"], tex_amp=20.0, clip="body", label=0)
        # spinous process (sloping down posteriorly) and transverse processes
        sp_blob = Blob(np.array([x0, cy + canal_r + 13, zc - 5]), np.array([4.0, 13.0, 10.0]),
                       rot=euler_matrix(-25, 0, 0), power=4)
        sl, f, _ = smp.blob(sp_blob)
        if sl is not None:
            paint(sl, f <= 1, hu["bone_posterior"], tex_amp=20.0, clip="body", label=0)
        tw = 30.0 if lv["lumbar"] else 22.0
        tp = Blob(np.array([x0, cy - 2, zc]), np.array([canal_r + tw, 5.0, 6.0]), power=4)
        sl, f, _ = smp.blob(tp)
        if sl is not None:
            paint(sl, f <= 1, hu["bone_posterior"], tex_amp=20.0, clip="body", label=0)
        # spinal canal (CSF), after the arch so it stays open
        canal = Blob(np.array([x0, cy, zc]), np.array([canal_r, canal_r * 0.9, hz + 10.0]))
        sl, f, _ = smp.blob(canal)
        if sl is not None:
            paint(sl, f <= 1, hu["csf"], tex_amp=2.0, clip="body", label=0)


def _paint_ribs(smp: Sampler, patient: PatientParams, ct: np.ndarray, lab: np.ndarray,
                tex: np.ndarray, hu, ring: np.ndarray) -> None:
    """Lower ribs: flattened rings in the muscular wall, sloping down anteriorly.

    Each rib follows the mid-line of the abdominal-wall muscle layer (``ring``: the voxels of
    that layer, the only place ribs can be, so only those are evaluated); its height is
    ``z_n - slope * anteriority`` and only ribs above the costal margin exist (the margin is
    low posteriorly, high anteriorly, where the costal cartilages leave a gap by the midline).
    """
    rb, bd = patient.ribs, patient.body
    kk, jj, ii = np.nonzero(ring)
    if kk.size == 0:
        return
    idx = np.stack([ii, jj, kk]).astype(np.float32)
    xs, ys, zs = (smp.A.astype(np.float32) @ idx) + smp.p0.astype(np.float32)[:, None]
    inset = np.float32(bd.fat + 0.5 * bd.muscle)
    a = np.float32(bd.a) * (1.0 + np.float32(bd.taper / 100.0) * zs) - inset
    yy = np.where(ys < 0, ys / np.float32(bd.b_ant - inset), ys / np.float32(bd.b_post - inset))
    X2, Y2 = (xs / a) ** 2, yy * yy
    q = X2 + Y2 - np.where(ys > 0, np.float32(bd.squircle ** 2) * X2 * Y2, np.float32(0))
    rho = np.sqrt(np.maximum(q, 1e-12))
    radial = np.sqrt(xs * xs + ys * ys) * (rho - 1.0) / rho  # mm from the wall mid-line, along the ray
    anter = np.clip((np.float32(bd.b_post) - ys) / np.float32(bd.b_ant + bd.b_post), 0.0, 1.0)  # 0 back, 1 front
    zr = zs + np.float32(rb["slope"]) * anter  # undo the slope: ribs become horizontal rings
    pitch = np.float32(rb["pitch"])
    w = zr / pitch - np.float32(rb["phase"])
    dz = (w - np.round(w)) * pitch
    rib_z_centre = zs - dz  # the rib's actual height at this angle
    margin = np.float32(rb["z_margin_post"]) + np.float32(rb["z_margin_ant"] - rb["z_margin_post"]) * anter
    near_spine = (np.abs(xs) < 30) & (ys > 0)
    cartilage_gap = (np.abs(xs) < 55) & (ys < 0)
    rib = (((radial / np.float32(rb["r_radial"])) ** 2 + (dz / np.float32(rb["r_z"])) ** 2) <= 1.0) \
        & (rib_z_centre >= margin) & ~near_spine & ~cartilage_gap
    sel = (kk[rib], jj[rib], ii[rib])
    ct[sel] = np.float32(hu["rib"]) + np.float32(30.0) * tex[sel]
    lab[sel] = 0


# =====================================================================================
# public entry points
# =====================================================================================
def make_abdomen_phantom(seed: SeedLike, shape=None, spacing=None,
                         orientation: Union[str, np.ndarray] = "random",
                         oblique: Union[bool, float] = False, noise_hu: Optional[float] = None, *,
                         fov_mm=None, dtype=np.int16) -> Tuple[Volume, Volume]:
    """One synthetic abdominal CT and its BTCV label map, sharing the same geometry.

    ``seed`` (int or Generator) fixes everything: patient, grid and noise. ``shape`` (K, J, I),
    ``spacing`` (si, sj, sk), ``orientation``, ``oblique`` and ``fov_mm`` are as in
    :func:`random_grid`; with all defaults the volume is small (about 65-145 x 145-200 x
    145-200 voxels) and renders in well under a second. ``noise_hu`` overrides the patient's noise
    level (10-20 HU); ``dtype`` int16 (default) or float32.
    """
    rng = seeded_rng(seed)
    patient = random_patient(rng)
    grid = random_grid(rng, patient, shape=shape, spacing=spacing, orientation=orientation,
                       oblique=oblique, fov_mm=fov_mm)
    return sample_phantom_on_grid(patient, *grid, noise_hu=noise_hu, rng=rng, dtype=dtype)


def _write_nifti(vol: Volume, path: str) -> None:
    """Write through pantheon.io.write_volume when available, else directly with SimpleITK."""
    try:
        from pantheon.io import write_volume  # type: ignore[attr-defined]
    except ImportError:
        write_volume = None
    if write_volume is not None:
        write_volume(vol, path)
        return
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(vol.array)
    img.SetSpacing(tuple(float(s) for s in vol.spacing))
    img.SetOrigin(tuple(float(o) for o in vol.origin))
    img.SetDirection(tuple(float(d) for d in np.asarray(vol.direction).flatten()))
    sitk.WriteImage(img, path, useCompression=True)


def make_phantom_dataset(n: int, seed: SeedLike = 0, out_dir: Optional[str] = None,
                         **kw) -> Union[Iterator[Tuple[Volume, Volume]], List[Tuple[str, str]]]:
    """``n`` independent phantoms; case ``c`` depends only on (seed, c), not on ``n``.

    Without ``out_dir``: a lazy iterator of (ct, labels) Volume pairs. With ``out_dir``: every
    case is written right away as ``case_XXXX_ct.nii.gz`` / ``case_XXXX_labels.nii.gz``
    (eagerly, so a forgotten loop cannot silently skip writing) and the list of
    (ct_path, label_path) is returned. ``kw`` go to :func:`make_abdomen_phantom`.
    """
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(2 ** 63))
    children = np.random.SeedSequence(seed).spawn(int(n))

    def gen():
        for ss in children:
            yield make_abdomen_phantom(np.random.default_rng(ss), **kw)

    if out_dir is None:
        return gen()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for c, (ct, lab) in enumerate(gen()):
        p_ct = os.path.join(out_dir, f"case_{c:04d}_ct.nii.gz")
        p_lab = os.path.join(out_dir, f"case_{c:04d}_labels.nii.gz")
        _write_nifti(ct, p_ct)
        _write_nifti(lab, p_lab)
        paths.append((p_ct, p_lab))
    return paths
