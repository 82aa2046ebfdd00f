"""Synthetic hepatobiliary-phase liver MRI with the 3D-LLDM label set: liver, portal vein tree,
hepatic veins and 0-3 hepatocellular carcinomas (HCC).

Why: label-guided MR synthesis (3D-LLDM, arXiv 2603.23845) and image + label generation (FOSCU,
arXiv 2603.29343) learn from (image, label map) pairs with exactly these labels; no such data can
be shipped, so tests, demos and demo weights use this phantom.

How: the patient of :mod:`pantheon.synth.mri_phantom` (its anatomy, gadoxetic-acid HBP contrast,
blur, coil shading and Rician noise, random spacing, orientation and obliquity) without the
cholangiocarcinoma and its nerve, with instead 0-3 HCC nodules placed inside the liver:
hypointense in the HBP (0.35-0.55 of the parenchyma, a darker core, textured), 10-50 mm equivalent
diameter, slightly lobulated, apart from each other. Drawn in world coordinates, so the same
patient on any grid keeps every structure in place.

Label map (uint8, :data:`HCC_LABELS`): 0 background, 1 liver (parenchyma and the bile ducts inside
it), 2 portal vein (trunk and intrahepatic branches), 3 hepatic veins (inside the liver), 4 HCC.
The IVC, extrahepatic ducts and other organs are background (in the image, not in the labels).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import numpy as np

from pantheon.anatomy import HCC_COLORS, HCC_LABELS  # noqa: F401 - re-exported: the phantom's label set
from pantheon.io.volume import Volume
from pantheon.synth.ct_phantom import Blob, Sampler, seeded_rng, small_rotation
from pantheon.synth.mri_phantom import (
    MRI_LABEL_OF,
    random_mri_grid,
    random_mri_patient,
    sample_mri_on_grid,
)

HCC_LABEL_OF: Dict[str, int] = {v: k for k, v in HCC_LABELS.items()}

SeedLike = Union[int, np.integer, np.random.Generator, np.random.SeedSequence, None]


def _inside_liver(patient, p: np.ndarray, margin: float) -> bool:
    """Whether the patient-frame point ``p`` lies at least ``margin`` (normalised radius units,
    about) inside one of the liver's blobs."""
    for b in patient.shapes["liver"]:
        u = b.rot.T @ (p - b.centre) / b.radii
        if np.linalg.norm(u) <= 1.0 - margin:
            return True
    return False


def random_hcc_patient(seed: SeedLike = None, n_hcc: Optional[int] = None,
                       diameter_mm: Tuple[float, float] = (10.0, 50.0)):
    """One patient: the NeoNet MRI anatomy, no cholangiocarcinoma, ``n_hcc`` (default drawn 0-3)
    HCC nodules inside the liver. Returns the :class:`~pantheon.synth.mri_phantom.MRIPatient` (its
    ``shapes["tumour"]`` are the HCCs) and the list of (centre, diameter) in the patient frame."""
    rng = seeded_rng(seed)
    patient = random_mri_patient(rng, pni=False)
    patient.shapes["tumour"] = []
    patient.shapes["tentacle"] = []
    patient.shapes["nerve"] = []
    patient.rel["tumour"] = float(rng.uniform(0.35, 0.55))
    n = int(rng.integers(0, 4)) if n_hcc is None else int(n_hcc)
    if not 0 <= n <= 6:
        raise ValueError(f"n_hcc must be 0 to 6, got {n}.")
    livers = patient.shapes["liver"]
    weights = np.array([np.prod(b.radii) for b in livers])
    placed = []
    for _ in range(n):
        for _attempt in range(200):
            d = float(rng.uniform(*diameter_mm))
            b = livers[int(rng.choice(len(livers), p=weights / weights.sum()))]
            u = rng.normal(size=3)
            u *= rng.uniform(0.0, 0.75) / np.linalg.norm(u)
            c = b.centre + b.rot @ (u * b.radii)
            margin = min(0.6, (d / 2.0) / float(np.min(b.radii)))
            if not _inside_liver(patient, c, margin * 0.8):
                continue
            if any(np.linalg.norm(c - c2) < (d + d2) / 2 + 5.0 for c2, d2 in placed):
                continue
            placed.append((c, d))
            break
    for c, d in placed:
        r = d / 2.0
        radii = r * rng.uniform(0.85, 1.15, size=3)
        radii *= r / np.cbrt(np.prod(radii))  # keep the equivalent diameter
        k = rng.normal(size=(3, 3))
        k *= (rng.uniform(1.5, 3.0, size=3) / np.linalg.norm(k, axis=1))[:, None]
        patient.shapes["tumour"].append(Blob(c, radii, small_rotation(rng, 180.0), k, rng.uniform(0, 2 * np.pi, 3),
                                             rng.uniform(0.3, 1.0, 3) * 0.06))
    return patient, placed


def hcc_labels(patient, nn_labels: Volume) -> Volume:
    """The 3D-LLDM label map from the NeoNet phantom's labels of the same render: vessels split
    into portal and hepatic veins by the patient's own tubes, the tumour label is HCC."""
    smp = Sampler(patient, nn_labels.shape, nn_labels.spacing, nn_labels.origin, nn_labels.direction)
    src = np.asarray(nn_labels.array)
    out = np.zeros(src.shape, np.uint8)
    out[(src == MRI_LABEL_OF["liver"]) | (src == MRI_LABEL_OF["bile_duct"])] = HCC_LABEL_OF["liver"]
    vessels = src == MRI_LABEL_OF["hepatic_vessels"]
    for name, label in (("portal", HCC_LABEL_OF["portal_vein"]), ("hepatic_vein", HCC_LABEL_OF["hepatic_vein"])):
        for tube in patient.shapes[name]:  # painted in this order, so a hepatic vein wins a crossing
            sl, sd = smp.tube(tube)
            if sl is not None:
                region = out[sl]
                region[(sd < 0) & vessels[sl]] = label
    # bile ducts outside the liver (the common hepatic duct) are not liver
    ducts = src == MRI_LABEL_OF["bile_duct"]
    if ducts.any():
        liver_blob = np.zeros(src.shape, bool)
        for b in patient.shapes["liver"]:
            sl, f, _ = smp.blob(b)
            if sl is not None:
                liver_blob[sl] |= f <= 1
        out[ducts & ~liver_blob] = 0
    out[src == MRI_LABEL_OF["tumour"]] = HCC_LABEL_OF["hcc"]
    return nn_labels.with_array(out)


def make_hcc_mri_phantom(seed: SeedLike, shape=None, spacing=None, orientation: Union[str, np.ndarray] = "random",
                         oblique: Union[bool, float] = False, n_hcc: Optional[int] = None, *,
                         noise: Optional[float] = None, fov_mm=None) -> Tuple[Volume, Volume, dict]:
    """One synthetic HBP liver MRI, its 3D-LLDM label map and ``info`` (``labels``: value -> name,
    ``hcc``: per nodule the LPS centre and the drawn diameter, ``hcc_volume_ml`` on this grid,
    ``seed``). Grid arguments as :func:`pantheon.synth.mri_phantom.random_mri_grid`."""
    seed_out = int(seed) if isinstance(seed, (int, np.integer)) else None
    rng = seeded_rng(seed)
    patient, placed = random_hcc_patient(rng, n_hcc)
    grid = random_mri_grid(rng, patient, shape=shape, spacing=spacing, orientation=orientation, oblique=oblique,
                           fov_mm=fov_mm)
    mri, nn_labels = sample_mri_on_grid(patient, *grid, noise=noise)
    labels = hcc_labels(patient, nn_labels)
    voxel_ml = float(np.prod(labels.spacing)) / 1000.0
    info = {"labels": dict(HCC_LABELS), "seed": seed_out,
            "hcc": [{"centre_lps": [float(v) for v in patient.world_of(c)[0]], "diameter_mm": float(d)}
                    for c, d in placed],
            "hcc_volume_ml": float(np.count_nonzero(labels.array == HCC_LABEL_OF["hcc"]) * voxel_ml)}
    return mri, labels, info
