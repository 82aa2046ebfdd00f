"""Synthetic orthopantomograms (OPG, panoramic dental X-rays) with per-tooth labels.

Why: tests, demos and the demo weights of MATHENA (tooth detection, caries segmentation,
anomaly detection, developmental staging) need panoramic-looking images with known teeth,
FDI numbers, lesions and Demirjian stages, without shipping patient data. The image is meant
to *look* like an OPG to a model (arches, bone, airway, noise), not to be anatomically exact.

Layout (image coordinates: x = column i to the right, y = row j downwards)
--------------------------------------------------------------------------
An OPG is viewed as if facing the patient: the **patient's right is on the viewer's left**.
So quadrant 1 (upper right) is the upper-left part of the image, quadrant 2 (upper left) the
upper-right part, quadrant 3 (lower left) the lower-right part and quadrant 4 (lower right)
the lower-left part. Within a quadrant, tooth 1 (central incisor) is next to the midline and
tooth 8 (third molar) farthest out; so along the upper arch, left to right, the image shows
18 ... 11 | 21 ... 28, and along the lower arch 48 ... 41 | 31 ... 38. With
``primary_teeth=True`` a mixed dentition is drawn: primary teeth 51-55 / 61-65 / 71-75 / 81-85
erupted in positions 1-5, developing permanent successors beneath them (Demirjian C-G), the
permanent first molars erupted and the second molars developing.

The occlusal plane is a "smile" parabola (lower in the middle). Upper teeth hang from it with
roots going up, lower teeth stand on it with roots going down; each tooth axis is roughly normal
to the curve. Tooth widths/heights follow relative mesiodistal and crown/root sizes (incisors
narrow, molars wide with two roots); all sizes scale with the image (random +-8 % per image),
so the whole dentition is always in view, as on a real OPG whatever its resolution.

What is modelled
----------------
- Soft tissue background, gradient and neck; tongue; the palatoglossal air space (dark band
  under the palate) and the pharyngeal airway (dark bands over the rami); mandible body with
  cortical lower border, mandibular canal and rami with condyles; maxilla with the hard-palate
  line and darker maxillary sinuses; optional cervical-spine shadows at both sides and a
  central spine ghost; optional hyoid. Trabecular bone texture.
- Teeth with enamel (brightest), dentin, pulp chamber and root canal(s), periodontal-ligament
  space and lamina dura along the roots; cusps (molars two, premolars one, pointed canines).
- Demirjian stages A-H (see :data:`STAGE_GEOMETRY`): A/B only cusp tips / part of the crown
  calcified, C crown 3/4, D crown complete and root begun, E root shorter than the crown,
  F root at least as long as the crown with a funnel-shaped open apex, G parallel walls with
  the apex partially open, H apex closed. Teeth before eruption (A-E) sit deeper in the bone
  inside a dark follicle (crypt).
- Missing teeth (edentulous gaps), per image rate drawn in ``missing_rate`` (default 5-15 %,
  third molars twice as likely).
- Caries: dark lesions in the crown (proximal or occlusal), ``"caries"`` or ``"deep"``
  (reaching towards the pulp; DENTEX "Deep Caries"). Their mask lies inside the tooth mask.
- Anomalies: ``"impacted"`` (third molars and canines: tilted towards the midline by 25-70
  degrees, deeper in the bone, not erupted, in a follicle; its anomaly mask is the tooth mask)
  and ``"periapical_lesion"`` (dark round radiolucency at a root apex; its anomaly mask is the
  lesion minus the tooth).
- Random image-level variation: arch scale, position, curvature, brightness, contrast (gamma),
  low-frequency exposure bias, blur (sigma 0.6-1.4 px), correlated plus white noise, and
  occasional bright restorations (fillings, not labelled).

Labels (see :class:`SyntheticOPG`)
----------------------------------
- ``teeth``: list of dicts in FDI numeric order (11-18, 21-28, 31-38, 41-48, then 51-85).
  Missing teeth are not in the list. Keys: ``fdi`` (int), ``box`` ``(x0, y0, x1, y1)`` integer
  pixel bounds, **half-open** (columns x0..x1-1, rows y0..y1-1; as COCO ``[x0, y0, x1-x0,
  y1-y0]``) covering the tooth and, for a periapical lesion, the lesion; ``mask`` (bool array of
  shape (y1-y0, x1-x0), the tooth, cropped to the box); ``label`` (its value in
  ``tooth_labels`` = list index + 1); ``caries`` (bool); ``caries_type`` (None, "caries",
  "deep"); ``caries_mask`` / ``anomaly_mask`` (bool, cropped to the box); ``anomaly`` (None,
  "impacted", "periapical_lesion"); ``stage`` ("A".."H"); ``primary`` (bool); ``diagnoses``
  (DENTEX names: "Caries", "Deep Caries", "Impacted", "Periapical Lesion").
- ``tooth_labels``: uint8 label map, value = index into ``teeth`` + 1, 0 background. Where two
  teeth overlap (a developing successor under a primary tooth, an impacted molar behind its
  neighbour) the later tooth in the list wins; per-tooth masks are always complete.
  :meth:`SyntheticOPG.fdi_label_map` gives the same map coded by FDI number.
- ``caries_mask``, ``anomaly_mask``: uint8 binary Volumes (1 = lesion).

Determinism: everything depends only on ``seed`` (int, SeedSequence or Generator). A 512 x 1024
image takes about 0.4 s on a busy 2-core machine.

Public API
----------
- :func:`make_opg` — one random OPG with labels.
- :func:`make_opg_dataset` — many OPGs; optionally written as PNG + a DENTEX-style COCO JSON
  (read back by :func:`pantheon.data.dentex.read_dentex`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from pantheon.io.volume import Volume

__all__ = [
    "STAGES",
    "STAGE_GEOMETRY",
    "DENTEX_DIAGNOSES",
    "SyntheticOPG",
    "make_opg",
    "make_opg_dataset",
    "opg_to_dentex_json",
    "fdi_quadrant_tooth",
]

SeedLike = Union[int, np.integer, np.random.Generator, np.random.SeedSequence, None]

#: Demirjian developmental stages, youngest first.
STAGES: Tuple[str, ...] = ("A", "B", "C", "D", "E", "F", "G", "H")

#: stage -> (calcified crown fraction, root length fraction, apex openness 0..1 (1 = wide funnel)).
STAGE_GEOMETRY: Dict[str, Tuple[float, float, float]] = {
    "A": (0.22, 0.0, 1.0),
    "B": (0.45, 0.0, 1.0),
    "C": (0.78, 0.0, 1.0),
    "D": (1.0, 0.10, 1.0),
    "E": (1.0, 0.38, 1.0),
    "F": (1.0, 0.72, 0.8),
    "G": (1.0, 0.92, 0.35),
    "H": (1.0, 1.0, 0.0),
}

#: DENTEX ``categories_3`` (id -> name), the mapping commonly used with the released JSON.
DENTEX_DIAGNOSES: Dict[int, str] = {0: "Impacted", 1: "Caries", 2: "Periapical Lesion", 3: "Deep Caries"}

# Relative tooth sizes (about mm): width, crown height, full root length, per position 1..8.
_PERM = {
    "upper": dict(w=[8.5, 6.6, 7.6, 7.0, 6.7, 10.0, 9.2, 8.6],
                  hc=[10.5, 9.0, 10.0, 8.5, 7.8, 7.5, 7.0, 6.6],
                  hr=[13.0, 13.0, 17.0, 14.0, 14.0, 13.0, 12.0, 11.0]),
    "lower": dict(w=[5.2, 5.7, 7.0, 7.0, 7.2, 11.0, 10.5, 10.0],
                  hc=[9.0, 9.5, 11.0, 8.5, 8.0, 7.5, 7.0, 7.0],
                  hr=[12.5, 14.0, 16.0, 14.0, 14.5, 14.0, 13.0, 11.0]),
}
_PRIM = {
    "upper": dict(w=[6.5, 5.2, 7.0, 7.3, 8.2], hc=[6.0, 5.6, 6.5, 5.4, 5.7], hr=[10.0, 11.0, 13.0, 10.0, 11.0]),
    "lower": dict(w=[4.2, 4.1, 5.0, 7.7, 9.9], hc=[5.0, 5.2, 6.0, 6.0, 5.5], hr=[9.0, 10.0, 11.5, 10.0, 11.0]),
}
_KIND = {1: "incisor", 2: "incisor", 3: "canine", 4: "premolar", 5: "premolar", 6: "molar", 7: "molar", 8: "molar"}
_KIND_PRIM = {1: "incisor", 2: "incisor", 3: "canine", 4: "molar", 5: "molar"}


def fdi_quadrant_tooth(fdi: int) -> Tuple[int, int]:
    """(quadrant 1-8, tooth 1-8) of an FDI number, e.g. 36 -> (3, 6), 85 -> (8, 5)."""
    q, t = divmod(int(fdi), 10)
    if not (1 <= q <= 8 and 1 <= t <= (8 if q <= 4 else 5)):
        raise ValueError(f"not an FDI tooth number: {fdi}")
    return q, t


@dataclass
class SyntheticOPG:
    """One synthetic OPG and its labels (see the module docstring for every convention)."""

    image: Volume
    teeth: List[dict]
    tooth_labels: Volume
    caries_mask: Volume
    anomaly_mask: Volume
    params: dict = field(default_factory=dict)

    def fdi_label_map(self) -> Volume:
        """``tooth_labels`` recoded by FDI number (uint8, 0 background)."""
        lut = np.zeros(len(self.teeth) + 1, dtype=np.uint8)
        for t in self.teeth:
            lut[t["label"]] = t["fdi"]
        return self.tooth_labels.with_array(lut[self.tooth_labels.array])

    def full_mask(self, index: int) -> np.ndarray:
        """The mask of ``teeth[index]`` pasted into an image-sized (H, W) bool array."""
        t = self.teeth[index]
        x0, y0, x1, y1 = t["box"]
        out = np.zeros(self.image.shape[1:], dtype=bool)
        out[y0:y1, x0:x1] = t["mask"]
        return out


def seeded_rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _smooth(x):
    return np.clip(x + 0.5, 0.0, 1.0)  # anti-aliased inside indicator from a signed px depth


def _sig(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


# ------------------------------------------------------------------------------------------
# background anatomy
# ------------------------------------------------------------------------------------------


def _background(rng, H, W, g) -> np.ndarray:
    """Attenuation-like map of soft tissue, bones and air spaces (about 0..1.2)."""
    # smooth anatomy: evaluated on a half-resolution grid (pixel-centre coordinates), then
    # upsampled; the formulas below are in full-resolution pixel units
    f = 2
    Hc, Wc = (H + f - 1) // f, (W + f - 1) // f
    y = (np.arange(Hc, dtype=np.float32) * f + (f - 1) / 2.0)[:, None]
    x = (np.arange(Wc, dtype=np.float32) * f + (f - 1) / 2.0)[None, :]
    X = (x - g["xc"]) / (W / 2.0)
    Xa = np.abs(X)
    s = max(H / 256.0, 1.0)  # edge softness in px scales with the image
    occ = g["occ"](x)
    # soft tissue: brighter low (neck, chin), some vertical gradient
    img = 0.16 + 0.06 * (y / H) + 0.03 * np.cos(np.pi * X)
    # lips and cheeks over the crowns
    img = (img + 0.2 * _sig((0.74 - Xa) / 0.06) * _sig((y - (occ - 0.16 * H)) / (4 * s))
           * _sig((occ + 0.16 * H - y) / (4 * s)))
    # tongue: a broad soft shadow between the arches
    img = (img + 0.07 * _sig((0.62 - Xa) / 0.05) * _sig((y - (g["pal_y"] + 0.06 * H)) / (3 * s))
           * _sig((occ + 0.18 * H - y) / (4 * s)))
    # maxilla: from the palate down to the upper alveolar crest
    crest_up = occ - g["gap"] / 2 - g["crest_up"]
    maxilla = _sig((0.78 - Xa) / 0.03) * _sig((crest_up - y) / (2 * s)) * _sig((y - g["pal_y"]) / (2 * s))
    img = img + g["bone"] * 0.55 * maxilla
    # above the palate: sinuses (dark-ish) and zygomatic / orbital bone (brighter laterally)
    above = _sig((g["pal_y"] - y) / (2 * s))
    sinus = above * np.exp(-((Xa - 0.42) / 0.18) ** 2) * np.exp(-((y - (g["pal_y"] - 0.12 * H)) / (0.1 * H)) ** 2)
    zyg = above * np.exp(-((Xa - 0.72) / 0.12) ** 2) * _sig((y - 0.05 * H) / (4 * s))
    nasal = above * np.exp(-(X / 0.12) ** 2)
    img = img + g["bone"] * (0.16 * above * _sig((0.8 - Xa) / 0.08) - 0.12 * sinus + 0.18 * zyg - 0.08 * nasal)
    # hard palate line (bright) and the palatoglossal air space just below it (dark)
    img = img + 0.28 * g["bone"] * np.exp(-((y - g["pal_y"]) / (1.6 * s)) ** 2) * _sig((0.7 - Xa) / 0.04)
    img = img - g["air"] * 0.06 * _sig((0.55 - Xa) / 0.05) * np.exp(-((y - g["pal_y"] - 0.035 * H) / (0.018 * H)) ** 2)
    # mandible: body between the lower alveolar crest and the lower border; rami at the sides
    crest_lo = occ + g["gap"] / 2 + g["crest_lo"]
    lb = g["lb0"] - g["lb_curv"] * X ** 2
    rin, rout = g["ramus"]
    body = _sig((rin + 0.04 - Xa) / 0.03) * _sig((y - crest_lo) / (2 * s)) * _sig((lb - y) / (1.5 * s))
    # ramus: leaning outwards going up, narrowing to the condyle; a notch before the coronoid
    hy = np.clip((lb - y) / (0.6 * H), 0, 1)  # 0 at the lower border, 1 near the condyle
    r_in = rin + 0.05 * hy + 0.03 * np.exp(-((hy - 0.8) / 0.08) ** 2)  # sigmoid notch
    r_out = rout + 0.04 * hy - 0.02 * hy ** 2
    ramus = (0.8 * _sig((Xa - r_in) / 0.02) * _sig((r_out - Xa) / 0.015) * _sig((lb + 0.02 * H - y) / (2 * s))
             * _sig((y - 0.12 * H) / (3 * s)))
    mand = np.maximum(body, ramus)
    img = img + g["bone"] * 0.75 * mand
    cortex = np.exp(-((y - (lb - 0.015 * H)) / (0.012 * H)) ** 2) * _sig((0.9 - Xa) / 0.03)
    img = img + g["bone"] * 0.35 * cortex
    canal_y = lb - 0.09 * H + 0.03 * H * Xa
    img = img - g["bone"] * 0.18 * body * np.exp(-((y - canal_y) / (0.010 * H)) ** 2) * _sig((Xa - 0.15) / 0.05)
    # pharyngeal airway: dark vertical bands over the rami
    img = (img - g["air"] * 0.08 * np.exp(-((Xa - g["airway_x"]) / 0.025) ** 2) * _sig((y - 0.3 * H) / (4 * s))
           * _sig((lb - y) / (6 * s)))
    # cervical spine shadows at both sides; a faint central spine ghost; hyoid
    if g["spine"]:
        vert = 0.5 + 0.5 * np.cos(2 * np.pi * (y - g["spine_phase"]) / (0.16 * H))
        img = img + 0.35 * _sig((Xa - 0.93) / 0.012) * (0.6 + 0.4 * vert ** 0.5)
    if g["ghost"]:
        img = img + 0.08 * np.exp(-(X / 0.07) ** 2) * _sig((y - 0.45 * H) / (10 * s))
    if g["hyoid"]:
        img = img + 0.18 * np.exp(-((y - (g["lb0"] + 0.07 * H)) / (0.012 * H)) ** 2) * np.exp(-(X / 0.12) ** 2)
    # trabecular bone texture
    tex = ndimage.gaussian_filter(rng.standard_normal((Hc, Wc)).astype(np.float32), 1.2 * s / f)
    tex /= tex.std() + 1e-6
    img = img + 0.05 * g["bone"] * tex * np.maximum(mand, maxilla)
    img = ndimage.zoom(img.astype(np.float32), f, order=1, mode="nearest", grid_mode=True)[:H, :W]
    return np.ascontiguousarray(img, dtype=np.float32)


# ------------------------------------------------------------------------------------------
# teeth
# ------------------------------------------------------------------------------------------


def _tooth_layout(rng, H, W, primary: bool, crowding: float = 0.0) -> Tuple[dict, List[dict]]:
    """Image-level geometry ``g`` and one spec per tooth slot (before missing/lesions).

    ``crowding`` > 0 makes incisors, canines and premolars overlap their distal neighbour by
    ``crowding`` x 10-35 % of their width and turns / displaces them a little (``crowd_tilt``,
    ``crowd_depth``). Its random draws happen only when it is > 0, so the default layout (and every
    image made without crowding) is unchanged."""
    g = {}
    g["xc"] = W / 2 + rng.uniform(-0.025, 0.025) * W
    span = rng.uniform(0.56, 0.66) * W
    occ0 = rng.uniform(0.50, 0.56) * H
    smile = rng.uniform(0.03, 0.07) * H
    half = span / 2
    g["occ"] = lambda x, occ0=occ0, smile=smile, xc=g["xc"], half=half: occ0 - smile * ((x - xc) / half) ** 2
    g["occ_slope"] = lambda x, smile=smile, xc=g["xc"], half=half: -2 * smile * (x - xc) / half ** 2
    sx = span / (2 * (sum(_PERM["upper"]["w"]) + 8 * 0.3))  # px per size unit, horizontally
    sy = sx * rng.uniform(0.80, 0.92) * (H / (W / 2.0))
    g["sx"], g["sy"] = sx, sy
    g["gap"] = rng.uniform(0.3, 1.5) * sy
    g["crest_up"] = 8.0 * sy
    g["crest_lo"] = 8.0 * sy
    g["pal_y"] = occ0 - (10.5 + 13.0) * sy - rng.uniform(1.5, 4.0) * sy
    g["lb0"] = min(occ0 + (9.0 + 12.5) * sy + rng.uniform(9, 14) * sy, 0.95 * H)
    g["lb_curv"] = rng.uniform(0.12, 0.2) * H
    rin = rng.uniform(0.72, 0.77)
    g["ramus"] = (rin, rin + rng.uniform(0.12, 0.16))
    g["airway_x"] = rng.uniform(0.62, 0.70)
    g["bone"] = rng.uniform(0.8, 1.1)
    g["air"] = rng.uniform(0.6, 1.2)
    g["spine"] = bool(rng.random() < 0.6)
    g["spine_phase"] = rng.uniform(0, H)
    g["ghost"] = bool(rng.random() < 0.5)
    g["hyoid"] = bool(rng.random() < 0.5)

    slots = []
    for q in (1, 2, 3, 4):
        arch = "upper" if q <= 2 else "lower"
        side = -1.0 if q in (1, 4) else 1.0  # viewer's left (patient's right) for 1 and 4
        sizes = _PERM[arch]
        pos = 0.15 * sx
        for n in range(1, 9):
            w = sizes["w"][n - 1] * sx * rng.uniform(0.95, 1.05)
            pos_c = pos + w / 2
            extra = {}
            if crowding > 0 and n <= 5:
                pos += w * (1 - crowding * rng.uniform(0.10, 0.35)) + 0.3 * sx * (1 - crowding)
                extra = dict(crowd_tilt=float(rng.normal(0, 0.12 * crowding)),
                             crowd_depth=float(rng.uniform(-0.12, 0.12) * crowding * sizes["hc"][n - 1] * sy))
            else:
                pos += w + 0.3 * sx
            slots.append(dict(fdi=10 * q + n, q=q, n=n, arch=arch, side=side, x=g["xc"] + side * pos_c,
                              w=w, hc=sizes["hc"][n - 1] * sy, hr=sizes["hr"][n - 1] * sy,
                              kind=_KIND[n], primary=False, **extra))
    if primary:
        for q in (5, 6, 7, 8):
            pq = q - 4
            arch = "upper" if pq <= 2 else "lower"
            side = -1.0 if pq in (1, 4) else 1.0
            sizes = _PRIM[arch]
            pos = 0.15 * sx
            for n in range(1, 6):
                w = sizes["w"][n - 1] * sx * 1.12
                pos_c = pos + w / 2
                pos += w + 0.25 * sx
                slots.append(dict(fdi=10 * q + n, q=q, n=n, arch=arch, side=side, x=g["xc"] + side * pos_c,
                                  w=w, hc=sizes["hc"][n - 1] * sy * 1.05, hr=sizes["hr"][n - 1] * sy,
                                  kind=_KIND_PRIM[n], primary=True))
        # permanent teeth 1-5 sit under their primary predecessors; 6-8 move mesially a bit
        prim_x = {(s["q"] - 4, s["n"]): s for s in slots if s["primary"]}
        for s in slots:
            if not s["primary"] and s["n"] <= 5:
                s["x"] = prim_x[(s["q"], s["n"])]["x"]
            elif not s["primary"]:
                p5 = prim_x[(s["q"], 5)]
                s["x"] = p5["x"] + s["side"] * (p5["w"] / 2 + 0.3 * sx + sum(
                    _PERM[s["arch"]]["w"][5:s["n"] - 1]) * sx + s["w"] / 2 + (s["n"] - 6) * 0.3 * sx)
    return g, slots


def _realistic_stage(rng, slot, young: bool, primary_mode: bool) -> str:
    n = slot["n"]
    if slot["primary"]:
        return "H"
    if primary_mode:  # a child of about 7-10 years
        table = {1: "EFG", 2: "DEF", 3: "CDE", 4: "CDE", 5: "BCD", 6: "FGH", 7: "BCD", 8: "A"}
        return str(rng.choice(list(table[n])))
    if n == 8:
        return str(rng.choice(list("ABCDE" if young else "CDEFGHHH")))
    if young:
        table = {1: "H", 2: "H", 3: "GH", 4: "GH", 5: "FGH", 6: "H", 7: "EFG"}
        return str(rng.choice(list(table[n])))
    return "H"


def _tooth_geometry(slot, g, stage, impacted, rng):
    """Occlusal reference point O, apex direction a, width direction b, eruption depth."""
    x = slot["x"]
    upper = slot["arch"] == "upper"
    occ = g["occ"](x)
    slope = float(g["occ_slope"](x))
    phi = np.arctan(slope) * 0.8 * (1 if upper else -1) + rng.normal(0, 0.04)
    if "crowd_tilt" in slot:  # crowded teeth (make_opg(crowding=...)); absent otherwise
        phi = phi + slot["crowd_tilt"]
    cf, rf, _ = STAGE_GEOMETRY[stage]
    depth = 0.0
    if not slot["primary"] and rf < 0.8:  # not erupted yet: deeper as the root is shorter
        depth = (1.0 - rf / 0.8) * slot["hr"] * 0.85 + 0.5 * slot["hc"] * (1 - cf)
    if slot.get("successor_of") is not None:
        p = slot["successor_of"]
        depth = max(depth, p["hc"] + p["hr"] * 0.45)
    if impacted:
        mesial = -slot["side"]  # towards the midline
        phi = -mesial * rng.uniform(0.45, 1.2 if slot["n"] == 8 else 0.7)
        depth = max(depth, slot["hc"] * rng.uniform(0.6, 1.1))
        x = x + slot["side"] * rng.uniform(0.0, 0.3) * slot["w"]
    y0 = occ - g["gap"] / 2 if upper else occ + g["gap"] / 2
    a = np.array([np.sin(phi), -np.cos(phi)] if upper else [np.sin(phi), np.cos(phi)])
    b = np.array([np.cos(phi), np.sin(phi)] if upper else [np.cos(phi), -np.sin(phi)])
    if b[0] < 0:
        b = -b
    if "crowd_depth" in slot:
        depth = depth + slot["crowd_depth"]
    O = np.array([x, y0]) + a * depth
    return O, a, b


def _tooth_fields(u, v, sp):
    """Tooth rendering on local coordinates (u across, v from the occlusal surface to the apex).

    Returns (attenuation, mask, crown_mask, depth_crown, pulp_depth) on the patch.
    """
    w, hc, hr = sp["w"], sp["hc"], sp["hr"]
    cf, rf, openness = STAGE_GEOMETRY[sp["stage"]]
    kind = sp["kind"]
    un = np.clip(u / (w / 2), -1.0, 1.0)
    d = 0.16 * hc
    if kind == "molar":
        top = d * (1 + np.cos(2 * np.pi * un)) / 2
    elif kind == "premolar":
        top = d * 0.8 * un ** 2
    elif kind == "canine":
        top = d * 1.2 * np.abs(un)
    else:
        top = d * 0.25 * un ** 2
    t = v / hc
    hw_c = (w / 2) * np.clip(t / 0.15, 0.05, 1.0) ** 0.5 * (1 - 0.28 * np.clip((t - 0.55) / 0.45, 0, 1) ** 1.5)
    depth_c = np.minimum(hw_c - np.abs(u), v - top)
    depth_c = np.minimum(depth_c, (min(cf, 1.0) * hc) - v)  # calcified part only
    if sp["stage"] == "A":  # separate cusp tips
        cusp = np.abs(np.sin(np.pi * (un * (2 if kind == "molar" else 1) + (0 if kind == "molar" else 0.5))))
        depth_c = np.minimum(depth_c, (cusp - 0.45) * w * 0.3)
    cerv = (w / 2) * 0.72
    s = (v - hc) / hr
    rlen = rf * hr
    if rlen > 0:
        taper = (1 - np.clip(s, 0, 1)) ** 0.55 * 0.82 + 0.18
        end_depth = (hc + rlen) - v
        if sp["stage"] == "H":  # closed, rounded apex
            end_depth = end_depth + 0.0
        if sp["roots"] == 2:
            sep = cerv * (0.5 + 0.45 * np.clip(s, 0, 1) * sp.get("div", 1.0))
            hw_r = cerv * 0.47 * taper
            trunk = np.where(s < 0.15, cerv - np.abs(u), -1e3)
            dr = np.maximum(np.maximum(hw_r - np.abs(u - sep), hw_r - np.abs(u + sep)), trunk)
            rc = np.where(u >= 0, sep, -sep)
        else:
            hw_r = cerv * taper
            dr = hw_r - np.abs(u)
            rc = 0.0
        depth_r = np.minimum(np.minimum(dr, end_depth), v - hc + 1.0)
        # canal: narrow and closing for H, funnel-shaped for open apices
        frac = np.clip(s / max(rf, 1e-3), 0, 1)
        canal_hw = hw_r * (0.2 + 0.6 * openness * frac ** 2)
        if sp["stage"] == "H":
            canal_hw = canal_hw * (1 - frac ** 3)
        pulp_r = np.minimum(canal_hw - np.abs(u - rc), end_depth + 0.5 * openness * 3)
    else:
        depth_r = np.full_like(u, -1e3)
        pulp_r = np.full_like(u, -1e3)
    pulp_hw = w * (0.11 + 0.12 * openness) * np.clip((v - 0.45 * hc) / (0.25 * hc), 0.3, 1.0)
    pulp_c = np.minimum(pulp_hw - np.abs(u), v - (0.45 - 0.12 * openness) * hc)
    pulp_c = np.minimum(pulp_c, cf * hc - v - 1.0)
    pulp = np.maximum(pulp_c, np.where(v > hc, pulp_r, -1e3))
    depth = np.maximum(depth_c, depth_r)
    mask = depth >= 0
    crown = (depth_c >= 0) & mask
    e_th = 0.1 * w
    enamel = _smooth(depth_c) * (depth_c < e_th) * (t < 0.92)
    att = 0.62 * _smooth(depth) + 0.45 * enamel - 0.4 * _smooth(pulp) * mask
    # periodontal ligament (dark) and lamina dura (bright) around the roots
    if rlen > 0:
        root_zone = (v > hc) & (v < hc + rlen)
        att = (att - 0.10 * ((depth_r < 0) & (depth_r > -2.2) & root_zone)
               + 0.07 * ((depth_r <= -2.2) & (depth_r > -4.5) & root_zone))
    return att, mask, crown, depth_c, depth


def _patch_bounds(O, a, b, sp, margin, H, W):
    ext_v = sp["hc"] + sp["hr"] + margin
    ext_u = sp["w"] * 0.75 + margin
    pts = [O + a * vv + b * uu for vv in (-margin, ext_v) for uu in (-ext_u, ext_u)]
    pts = np.array(pts)
    x0 = int(np.clip(np.floor(pts[:, 0].min()), 0, W))
    x1 = int(np.clip(np.ceil(pts[:, 0].max()) + 1, 0, W))
    y0 = int(np.clip(np.floor(pts[:, 1].min()), 0, H))
    y1 = int(np.clip(np.ceil(pts[:, 1].max()) + 1, 0, H))
    return x0, y0, x1, y1


def _rotation_inverse(angle_deg: float, H: int, W: int):
    """(matrix, offset) mapping an output pixel-centre (x, y) of the turned picture back to the
    source: p_src = M @ p_out + off. The picture turns counter-clockwise on the screen (y down)
    about the image centre (W / 2, H / 2) in pixel-edge coordinates."""
    t = np.deg2rad(angle_deg)
    c, s = np.cos(t), np.sin(t)
    # forward: x' = cx + c (x - cx) + s (y - cy); y' = cy - s (x - cx) + c (y - cy); M = its inverse
    M = np.array([[c, -s], [s, c]])
    centre = np.array([W / 2.0, H / 2.0])
    return M, centre - M @ centre


def _rotate_image(img: np.ndarray, angle_deg: float) -> np.ndarray:
    """Bilinear turn of the whole attenuation image (see :func:`_rotation_inverse`)."""
    H, W = img.shape
    M, off = _rotation_inverse(angle_deg, H, W)
    # ndimage works in (row, col) index space, pixel centre = index: src_rc = Mrc @ out_rc + off_rc
    Mrc = M[::-1, ::-1]
    off_rc = (off[::-1] + Mrc @ np.array([0.5, 0.5]) - 0.5)
    return ndimage.affine_transform(img, Mrc, offset=off_rc, order=1, mode="nearest").astype(np.float32)


def _rotate_tooth(t: dict, angle_deg: float, H: int, W: int) -> Optional[dict]:
    """One tooth's masks turned like :func:`_rotate_image` (nearest sampling), re-cropped to the
    tight box of tooth + anomaly; None when the turned tooth leaves the image."""
    x0, y0, x1, y1 = t["box"]
    M, off = _rotation_inverse(angle_deg, H, W)
    Minv = np.linalg.inv(M)
    corners = np.array([[x, y] for x in (x0, x1) for y in (y0, y1)], float)
    fwd = (corners - off) @ Minv.T
    nx0, ny0 = max(0, int(np.floor(fwd[:, 0].min())) - 1), max(0, int(np.floor(fwd[:, 1].min())) - 1)
    nx1, ny1 = min(W, int(np.ceil(fwd[:, 0].max())) + 1), min(H, int(np.ceil(fwd[:, 1].max())) + 1)
    if nx1 <= nx0 or ny1 <= ny0:
        return None
    yy, xx = np.mgrid[ny0:ny1, nx0:nx1].astype(np.float64)
    src = np.stack([xx + 0.5, yy + 0.5], -1) @ M.T + off
    ci, ri = np.floor(src[..., 0]).astype(int) - x0, np.floor(src[..., 1]).astype(int) - y0
    inside = (ci >= 0) & (ri >= 0) & (ci < x1 - x0) & (ri < y1 - y0)
    ci, ri = np.clip(ci, 0, x1 - x0 - 1), np.clip(ri, 0, y1 - y0 - 1)
    turned = {k: t[k][ri, ci] & inside for k in ("mask", "caries_mask", "anomaly_mask")}
    both = turned["mask"] | turned["anomaly_mask"]
    if not turned["mask"].any():
        return None
    rows, cols = np.nonzero(both.any(axis=1))[0], np.nonzero(both.any(axis=0))[0]
    crop = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    out = dict(t, box=(nx0 + int(cols[0]), ny0 + int(rows[0]), nx0 + int(cols[-1]) + 1, ny0 + int(rows[-1]) + 1))
    for k, m in turned.items():
        out[k] = m[crop].copy()
    return out


def _caries_field(u, v, sp, rng, deep: bool):
    """Signed depth (px, positive inside) of a caries ellipse on the crown surface."""
    w, hc = sp["w"], sp["hc"]
    site = rng.choice(["mesial", "distal", "occlusal"], p=[0.4, 0.35, 0.25])
    if site == "occlusal":
        cu, cv = rng.uniform(-0.25, 0.25) * w, 0.05 * hc
    else:
        sgn = sp["mesial_u"] if site == "mesial" else -sp["mesial_u"]
        cu, cv = sgn * 0.47 * w, rng.uniform(0.25, 0.55) * hc
    r = (0.36 if deep else 0.2) * w * rng.uniform(0.85, 1.15)
    rv = (0.38 if deep else 0.18) * hc * rng.uniform(0.85, 1.15)
    if site == "occlusal":
        rv *= 1.6
    rr = np.sqrt(((u - cu) / r) ** 2 + ((v - cv) / rv) ** 2)
    return (1 - rr) * min(r, rv)


def make_opg(seed: SeedLike = 0, size: Tuple[int, int] = (512, 1024), primary_teeth: bool = False,
             pixel_spacing_mm: Optional[float] = None, dtype: str = "uint8",
             missing_rate: Tuple[float, float] = (0.05, 0.15), caries_rate: float = 0.08,
             impacted_rate: float = 0.25, periapical_rate: float = 0.04,
             stage: Union[None, str, Dict[int, str]] = None, noise: float = 1.0,
             restoration_rate: float = 0.04, missing_teeth: Sequence[int] = (), crowding: float = 0.0,
             rotation_deg: float = 0.0) -> SyntheticOPG:
    """One random synthetic OPG with teeth, FDI numbers, lesions and stages.

    Args:
        seed: int / SeedSequence / Generator; the output depends only on it (and the arguments).
        size: (H, W) in pixels. The anatomy scales with the image (whole dentition in view).
        primary_teeth: draw a child's mixed dentition (primary 51-85 plus developing permanents).
        pixel_spacing_mm: nominal (isotropic) pixel size written into the Volume; default
            ``280 / W`` (a typical OPG field about 280 mm wide, magnification included). It is
            metadata only: it does not change the drawing.
        dtype: "uint8" (0-255) or "uint16" (0-65535).
        missing_rate: per-image missing-tooth probability drawn uniformly in this range
            (third molars twice as likely); 0 for a complete dentition with ``(0, 0)``.
        caries_rate: per erupted-tooth probability of a caries lesion (a third of them deep).
        impacted_rate: per-candidate probability (third molars; canines at a fifth of it).
        periapical_rate: per erupted-tooth probability of a periapical lesion.
        stage: None for realistic stages (adult: mostly H, third molars C-H; a quarter of the
            images are adolescents), ``"uniform"`` for an independent uniform stage per tooth,
            a letter "A".."H" for all permanent teeth, or a dict {fdi: letter}.
        noise: scale of the noise (1 = default, 0 = none).
        restoration_rate: probability of an (unlabelled) bright filling per erupted tooth.
        missing_teeth: FDI numbers that are always missing (on top of ``missing_rate``), e.g.
            ``(16, 26)`` for gaps in the arch.
        crowding: 0 (default) to 1: incisors, canines and premolars overlap their neighbours by up
            to 35 % of their width, with extra tilt and vertical displacement (crowded dentition).
        rotation_deg: the whole picture (anatomy, teeth, labels) turned about the image centre by
            this angle, counter-clockwise as seen on the screen (a tilted head / occlusal plane);
            the corners are filled from the nearest edge. Boxes are the tight boxes of the turned
            masks.

    The three options above draw random numbers only when they are used, so images made without
    them are bit-identical to those of earlier versions (committed demo weights depend on it).
    """
    rng = seeded_rng(seed)
    H, W = int(size[0]), int(size[1])
    if H < 64 or W < 128:
        raise ValueError(f"size {size} too small for an OPG (need at least 64 x 128)")
    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"dtype must be 'uint8' or 'uint16', got {dtype!r}")
    crowding = float(crowding)
    if not 0.0 <= crowding <= 1.0:
        raise ValueError(f"crowding must be between 0 and 1, got {crowding}")
    rotation_deg = float(rotation_deg)
    if not (np.isfinite(rotation_deg) and abs(rotation_deg) <= 45):
        raise ValueError(f"rotation_deg must be between -45 and 45, got {rotation_deg}")
    missing_set = set()
    for f in missing_teeth:
        fdi_quadrant_tooth(f)  # ValueError for a non-FDI number
        missing_set.add(int(f))
    g, slots = _tooth_layout(rng, H, W, primary_teeth, crowding)
    young = (not primary_teeth) and rng.random() < 0.25
    p_missing = rng.uniform(*missing_rate) if missing_rate[1] > 0 else 0.0
    by_fdi = {s["fdi"]: s for s in slots}
    if primary_teeth:
        for s in slots:
            if not s["primary"] and s["n"] <= 5:
                s["successor_of"] = by_fdi[10 * (s["q"] + 4) + s["n"]]

    img = _background(rng, H, W, g)
    teeth_att = np.zeros((H, W), np.float32)
    lesion_att = np.zeros((H, W), np.float32)  # radiolucencies taken off bone and teeth
    teeth: List[dict] = []
    for s in slots:
        # per-slot draws happen in a fixed order so that seeds stay stable
        r_missing, r_car, r_deep, r_imp, r_pa, r_rest = rng.random(6)
        if isinstance(stage, dict):
            st = stage.get(s["fdi"]) or _realistic_stage(rng, s, young, primary_teeth)
        elif stage == "uniform":
            st = "H" if s["primary"] else str(rng.choice(STAGES))
        elif isinstance(stage, str):
            if stage not in STAGES:
                raise ValueError(f"stage must be one of {STAGES}, 'uniform', a dict or None; got {stage!r}")
            st = "H" if s["primary"] else stage
        else:
            st = _realistic_stage(rng, s, young, primary_teeth)
        miss_p = p_missing * (2.0 if s["n"] == 8 and not s["primary"] else 1.0)
        if primary_teeth and not s["primary"] and s["n"] == 8:
            miss_p = max(miss_p, 0.5)
        if r_missing < miss_p or s["fdi"] in missing_set:
            continue
        anomaly = None
        candidate = (not s["primary"]) and (s["n"] == 8 or (s["n"] == 3 and s["arch"] == "upper" and not primary_teeth))
        rate = impacted_rate if s["n"] == 8 else impacted_rate / 5
        if candidate and r_imp < rate and st in (("G", "H") if stage is None else ("F", "G", "H")):
            anomaly = "impacted"
        erupted = (STAGE_GEOMETRY[st][1] >= 0.8 and anomaly is None
                   and not (primary_teeth and not s["primary"] and s["n"] <= 5))
        if erupted and st == "H" and r_pa < periapical_rate:
            anomaly = "periapical_lesion"
        caries_type = None
        if erupted and r_car < caries_rate:
            caries_type = "deep" if r_deep < 0.33 else "caries"
        sp = dict(s)
        sp.update(stage=st, roots=2 if s["kind"] == "molar" else 1, div=rng.uniform(0.6, 1.4),
                  mesial_u=1.0 if s["side"] < 0 else -1.0)
        if primary_teeth and s["primary"]:
            sp["div"] = 2.2
        O, a, b = _tooth_geometry(s, g, st, anomaly == "impacted", rng)
        sp["mesial_u"] = float(np.sign(b[0] * -s["side"])) or 1.0
        margin = 6.0 + (0.7 * s["w"] if anomaly == "periapical_lesion" else 0.0)
        bx0, by0, bx1, by1 = _patch_bounds(O, a, b, sp, margin, H, W)
        if bx1 - bx0 < 2 or by1 - by0 < 2:
            continue
        yy, xx = np.mgrid[by0:by1, bx0:bx1].astype(np.float32)
        dx, dy = xx + 0.5 - O[0], yy + 0.5 - O[1]  # pixel centres
        u = dx * b[0] + dy * b[1]
        v = dx * a[0] + dy * a[1]
        att, mask, crown, depth_c, depth = _tooth_fields(u, v, sp)
        if not mask.any():
            continue
        bright = rng.uniform(0.85, 1.1)
        # developing / impacted teeth lie in a dark follicle around the crown
        if STAGE_GEOMETRY[st][1] < 0.5 or anomaly == "impacted":
            fol = np.minimum(depth_c, 0)
            crown_zone = v < sp["hc"] * 1.05
            att = att - 0.08 * ((depth_c < 0) & (depth_c > -0.35 * s["w"]) & crown_zone) \
                + 0.06 * ((depth_c <= -0.35 * s["w"]) & (depth_c > -0.35 * s["w"] - 2.0) & crown_zone)
            del fol
        car = np.zeros_like(mask)
        if caries_type is not None:
            cd = _caries_field(u, v, sp, rng, caries_type == "deep")
            car = (cd >= 0) & crown
            if car.sum() < 4:  # too small to be a lesion: drop it
                caries_type, car = None, np.zeros_like(mask)
            else:
                att = att - 0.75 * _smooth(cd) * crown * np.clip(att, 0, None)
        if r_rest < restoration_rate and caries_type is None and erupted:
            rd = _caries_field(u, v, sp, rng, False)
            att = att + 0.9 * _smooth(rd) * crown
        an = np.zeros_like(mask)
        if anomaly == "periapical_lesion":
            rf = STAGE_GEOMETRY[st][1]
            apex_v = sp["hc"] + rf * sp["hr"]
            apex_u = (sp["mesial_u"] * 0.72 * s["w"] / 2 * 0.9) if sp["roots"] == 2 else 0.0
            rad = s["w"] * rng.uniform(0.28, 0.45)
            rr = np.sqrt((u - apex_u) ** 2 + (v - apex_v + 0.2 * rad) ** 2)
            ld = rad - rr
            an = (ld >= 0) & ~mask
            lesion_patch = 0.28 * _smooth(ld) - 0.06 * ((ld < 0) & (ld > -2.0))
            sl = (slice(by0, by1), slice(bx0, bx1))
            lesion_att[sl] = np.maximum(lesion_att[sl], lesion_patch)
        elif anomaly == "impacted":
            an = mask.copy()
        teeth_att[by0:by1, bx0:bx1] += bright * att
        # tight box over the tooth (and its lesion)
        both = mask | an
        rows, cols = np.nonzero(both.any(axis=1))[0], np.nonzero(both.any(axis=0))[0]
        ty0, ty1 = by0 + int(rows[0]), by0 + int(rows[-1]) + 1
        tx0, tx1 = bx0 + int(cols[0]), bx0 + int(cols[-1]) + 1
        crop = (slice(ty0 - by0, ty1 - by0), slice(tx0 - bx0, tx1 - bx0))
        diagnoses = []
        if anomaly == "impacted":
            diagnoses.append("Impacted")
        if caries_type == "caries":
            diagnoses.append("Caries")
        if caries_type == "deep":
            diagnoses.append("Deep Caries")
        if anomaly == "periapical_lesion":
            diagnoses.append("Periapical Lesion")
        teeth.append(dict(fdi=int(s["fdi"]), box=(tx0, ty0, tx1, ty1), mask=mask[crop].copy(),
                          label=0, caries=caries_type is not None, caries_type=caries_type,
                          caries_mask=car[crop].copy(), anomaly=anomaly, anomaly_mask=an[crop].copy(),
                          stage=st, primary=bool(s["primary"]), diagnoses=diagnoses))

    if rotation_deg:
        teeth = [t for t in (_rotate_tooth(t, rotation_deg, H, W) for t in teeth) if t is not None]
    teeth.sort(key=lambda t: t["fdi"])
    labels = np.zeros((H, W), np.uint8)
    caries = np.zeros((H, W), np.uint8)
    anomaly_m = np.zeros((H, W), np.uint8)
    for idx, t in enumerate(teeth):
        t["label"] = idx + 1
        x0, y0, x1, y1 = t["box"]
        labels[y0:y1, x0:x1][t["mask"]] = idx + 1
        caries[y0:y1, x0:x1][t["caries_mask"]] = 1
        anomaly_m[y0:y1, x0:x1][t["anomaly_mask"]] = 1

    # compose: bone/soft tissue, radiolucent lesions, teeth on top (X-ray attenuation adds up)
    img = img * (1 - lesion_att) + teeth_att * (1 - 0.5 * lesion_att)
    img = np.clip(img, 0, None)
    if rotation_deg:
        img = _rotate_image(img, rotation_deg)
    img = 1.0 - np.exp(-1.6 * img)  # detector response: compresses the bright end
    # exposure bias (low frequency), blur, noise, contrast
    yb = np.arange(H, dtype=np.float32)[:, None]
    xb = np.arange(W, dtype=np.float32)[None, :]
    bias = 1 + rng.uniform(0.03, 0.1) * np.cos(2 * np.pi * (xb / W * rng.uniform(0.5, 1.5) + rng.random())) \
        * np.cos(2 * np.pi * (yb / H * rng.uniform(0.3, 1.0) + rng.random()))
    img = img * bias
    img = ndimage.gaussian_filter(img, rng.uniform(0.6, 1.4) * max(H / 512.0, 0.5))
    if noise > 0:
        corr = ndimage.gaussian_filter(rng.standard_normal((H, W)).astype(np.float32), 1.5)
        img = img + noise * (rng.uniform(0.012, 0.025) * corr / (corr.std() + 1e-6)
                             + rng.uniform(0.008, 0.02) * rng.standard_normal((H, W)).astype(np.float32))
    lo, hi = np.percentile(img[::3, ::3], [0.5, 99.8])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    img = img ** rng.uniform(0.75, 1.35)  # contrast variation
    img = img * rng.uniform(0.88, 1.0) + rng.uniform(0.0, 0.06)
    img = np.clip(img, 0, 1)
    maxv = 255 if dtype == "uint8" else 65535
    arr = np.round(img * maxv).astype(dtype)

    sp_mm = float(pixel_spacing_mm) if pixel_spacing_mm else 280.0 / W
    vol = Volume(arr[None], spacing=(sp_mm, sp_mm, 1.0))
    params = dict(size=(H, W), primary_teeth=primary_teeth, adolescent=bool(young), missing_rate=float(p_missing),
                  pixel_spacing_mm=sp_mm, midline_x=float(g["xc"]))
    if missing_set or crowding or rotation_deg:  # only then, so default params stay as they were
        params.update(missing_teeth=sorted(missing_set), crowding=crowding, rotation_deg=rotation_deg)
    return SyntheticOPG(image=vol, teeth=teeth, tooth_labels=vol.with_array(labels[None]),
                        caries_mask=vol.with_array(caries[None]), anomaly_mask=vol.with_array(anomaly_m[None]),
                        params=params)


# ------------------------------------------------------------------------------------------
# datasets and DENTEX export
# ------------------------------------------------------------------------------------------


def _mask_polygons(mask: np.ndarray, x0: int, y0: int) -> List[List[float]]:
    """Outline polygons (COCO flat lists, image pixel-edge coordinates) of a cropped bool mask."""
    import contourpy  # a matplotlib dependency

    z = np.pad(mask.astype(np.float64), 1)
    gen = contourpy.contour_generator(z=z, line_type="Separate")
    polys = []
    for line in gen.lines(0.5):
        if len(line) < 4:
            continue
        # array index (r, c) of the padded mask -> pixel centre (c - 1 + 0.5, r - 1 + 0.5)
        xs = line[:, 0] - 1 + 0.5 + x0
        ys = line[:, 1] - 1 + 0.5 + y0
        pts = np.stack([xs, ys], 1)
        if np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]
        # the 0.5 level line lies between inside and outside pixel centres, so rasterising the
        # polygon at pixel centres gives the mask back
        polys.append([round(float(p), 2) for p in pts.reshape(-1)])
    return polys


def opg_to_dentex_json(opgs: Sequence[SyntheticOPG], file_names: Sequence[str]) -> dict:
    """A DENTEX-style COCO dict (``categories_1/2/3``, 0-based ids) for generated OPGs.

    One annotation per (tooth, diagnosis); healthy teeth get one annotation without
    ``category_id_3``. Primary teeth use quadrants 5-8 (ids 4-7), an extension of DENTEX.
    Non-DENTEX keys kept per annotation: ``fdi``, ``stage``.
    """
    diag_id = {v: k for k, v in DENTEX_DIAGNOSES.items()}
    any_primary = any(t["primary"] for o in opgs for t in o.teeth)
    nq = 8 if any_primary else 4
    out = {
        "images": [],
        "annotations": [],
        "categories_1": [{"id": q - 1, "name": str(q), "supercategory": str(q)} for q in range(1, nq + 1)],
        "categories_2": [{"id": n - 1, "name": str(n), "supercategory": str(n)} for n in range(1, 9)],
        "categories_3": [{"id": k, "name": v, "supercategory": v} for k, v in DENTEX_DIAGNOSES.items()],
    }
    ann_id = 1
    for img_id, (o, fn) in enumerate(zip(opgs, file_names), start=1):
        _, H, W = o.image.shape
        out["images"].append({"id": img_id, "file_name": fn, "height": H, "width": W})
        for t in o.teeth:
            q, n = fdi_quadrant_tooth(t["fdi"])
            x0, y0, x1, y1 = t["box"]
            base = {"image_id": img_id, "iscrowd": 0, "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(t["mask"].sum()), "segmentation": _mask_polygons(t["mask"], x0, y0),
                    "category_id_1": q - 1, "category_id_2": n - 1, "fdi": t["fdi"], "stage": t["stage"]}
            for d in (t["diagnoses"] or [None]):
                ann = dict(base, id=ann_id)
                if d is not None:
                    ann["category_id_3"] = diag_id[d]
                out["annotations"].append(ann)
                ann_id += 1
    return out


def make_opg_dataset(n: int, seed: SeedLike = 0, out_dir: Optional[str] = None,
                     **kw) -> Union[Iterator[SyntheticOPG], dict]:
    """``n`` independent OPGs; image ``c`` depends only on (seed, c), not on ``n``.

    Without ``out_dir``: a lazy iterator of :class:`SyntheticOPG`. With ``out_dir``: writes
    ``images/opg_XXXX.png`` (8- or 16-bit grayscale, as ``dtype``), ``masks/opg_XXXX_teeth.png``
    (the ``tooth_labels`` map), ``masks/opg_XXXX_caries.png`` and ``masks/opg_XXXX_anomaly.png``
    (0/255), and ``annotations.json`` in DENTEX format (:func:`opg_to_dentex_json`, file names
    relative to ``images/``), plus ``stages.json`` ({file: {fdi: stage}}). Returns
    ``{"json": path, "image_dir": path, "images": [paths]}``. ``kw`` go to :func:`make_opg`.
    """
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(2 ** 63))
    children = np.random.SeedSequence(seed).spawn(int(n))

    def gen():
        for ss in children:
            yield make_opg(np.random.default_rng(ss), **kw)

    if out_dir is None:
        return gen()
    from PIL import Image

    img_dir = os.path.join(out_dir, "images")
    mask_dir = os.path.join(out_dir, "masks")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    opgs, names, paths, stages = [], [], [], {}
    for c, o in enumerate(gen()):
        name = f"opg_{c:04d}.png"
        a = o.image.array[0]
        pil = Image.fromarray(a) if a.dtype == np.uint8 else Image.fromarray(a.astype(np.uint16), mode="I;16")
        p = os.path.join(img_dir, name)
        pil.save(p)
        Image.fromarray(o.tooth_labels.array[0]).save(os.path.join(mask_dir, f"opg_{c:04d}_teeth.png"))
        Image.fromarray(o.caries_mask.array[0] * 255).save(os.path.join(mask_dir, f"opg_{c:04d}_caries.png"))
        Image.fromarray(o.anomaly_mask.array[0] * 255).save(os.path.join(mask_dir, f"opg_{c:04d}_anomaly.png"))
        stages[name] = {str(t["fdi"]): t["stage"] for t in o.teeth}
        # keep only what the JSON needs: the masks are cropped, so this stays small
        opgs.append(o)
        names.append(name)
        paths.append(p)
    js = os.path.join(out_dir, "annotations.json")
    with open(js, "w") as f:
        json.dump(opg_to_dentex_json(opgs, names), f)
    with open(os.path.join(out_dir, "stages.json"), "w") as f:
        json.dump(stages, f)
    return {"json": js, "image_dir": img_dir, "images": paths}
