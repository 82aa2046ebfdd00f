"""Anatomical label tables and the standard terminology of every segment Pantheon writes (no torch
here: the Slicer process imports this).

Two layers of codes:

- A segment's own ``code`` (:class:`pantheon.results.Segment`) says *what* it is, as precisely as a
  standard code allows: "Right kidney" (SNOMED CT 9846003), a tooth by FDI number (the DICOM
  CID 4018/4019 tooth codes), "Dental caries" (80967001).
- :func:`slicer_term` turns that code into the entry of 3D Slicer's own terminology lists that
  Slicer, dcmqi and the DICOM SEG writer use: context, category, type, type modifier, anatomic
  region (+ modifier). Every entry below exists, with these codes and meanings, in Slicer's
  ``SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json`` or
  ``SegmentationCategoryTypeModifier-DICOM-Master.json`` and, for regions,
  ``AnatomicRegionAndModifier-DICOM-Master.json`` (copies in ``Testing/terminology/``;
  ``Testing/test_terminology.py`` checks each one).

Choices where Slicer's lists have no exact entry (Slicer's lists are the target, so the nearest
entry *in them* is used; the segment name keeps the precise meaning):

- **Kidneys**: Slicer has no laterality-specific kidney type; "Kidney" (64033007) + modifier
  Right/Left, as Slicer's General Anatomy list offers it.
- **Tumour** (NeoNet): "Neoplasm" (108369006) is only in the DICOM master list, under
  "Morphologically Altered Structure".
- **Teeth**: both lists have only "Tooth" (38199008); the DICOM master list gives it a Right/Left
  modifier, taken from the FDI quadrant (1, 4, 5, 8 right; 2, 3, 6, 7 left). The FDI number stays in
  the segment name ("tooth 11") and, in a DICOM SEG, the exact tooth code goes into the segment's
  Primary Anatomic Structure (Slicer's lists have no per-tooth codes).
- **Caries** (MATHENA): neither list has a caries type, nor does "Morphologically Altered
  Structure" offer anything close (mass, nodule, cyst, necrosis...). MATHENA segments caries on a
  radiograph, where they are radiolucent areas of a tooth: "Lucency" (DCM 112084, category
  "Spatial and Relational Concept", DICOM master list) with anatomic region "Tooth".
- **Anomaly** (MATHENA: impacted teeth and periapical lesions, one class): no list type covers
  both, so Slicer's own default "Tissue"/"Tissue", anatomic region "Jaw region"; its own code is
  SNOMED CT 263654008 "Abnormal".
- A segment without a code (and a label value no segment lists) gets "Tissue"/"Tissue" in the
  General Anatomy list: what Slicer gives a new segment.
- Also listed: the sample data's bile duct (DICOM master list). A code Pantheon does not list (a
  user's own) is written as given, as the type of an Anatomical Structure (:func:`term_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

Code = Tuple[str, str, str]  # (coding scheme designator, code value, code meaning)

# The 8 BTCV organs of the NEMESIS paper's organ-presence task, in the paper's column order:
# (name, BTCV label index, RGB colour, SNOMED CT code, code meaning). The kidney codes are the
# laterality-specific concepts; Slicer's form (Kidney + Right/Left) comes from slicer_term().
BTCV_ORGANS = [
    ("aorta", 8, (0.84, 0.18, 0.14), "15825003", "Aorta"),
    ("gallbladder", 4, (0.55, 0.71, 0.24), "28231008", "Gallbladder"),
    ("spleen", 1, (0.62, 0.33, 0.60), "78961009", "Spleen"),
    ("left kidney", 3, (0.73, 0.50, 0.36), "18639004", "Left kidney"),
    ("right kidney", 2, (0.85, 0.62, 0.46), "9846003", "Right kidney"),
    ("liver", 6, (0.87, 0.51, 0.28), "10200004", "Liver"),
    ("stomach", 7, (0.85, 0.73, 0.55), "69695003", "Stomach"),
    ("pancreas", 11, (0.97, 0.83, 0.50), "15776009", "Pancreas"),
]

# --------------------------------------------------------------------------- Slicer's lists
GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

TISSUE: Code = ("SCT", "85756007", "Tissue")
ANATOMICAL_STRUCTURE: Code = ("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED_STRUCTURE: Code = ("SCT", "49755003", "Morphologically Altered Structure")
SPATIAL_AND_RELATIONAL_CONCEPT: Code = ("SCT", "309825002", "Spatial and Relational Concept")
RIGHT: Code = ("SCT", "24028007", "Right")
LEFT: Code = ("SCT", "7771000", "Left")
KIDNEY: Code = ("SCT", "64033007", "Kidney")
TOOTH: Code = ("SCT", "38199008", "Tooth")
NEOPLASM: Code = ("SCT", "108369006", "Neoplasm")
LUCENCY: Code = ("DCM", "112084", "Lucency")
JAW_REGION: Code = ("SCT", "661005", "Jaw region")

# Pantheon's own codes for segments whose Slicer entry is not their code (see the module doc).
DENTAL_CARIES: Code = ("SCT", "80967001", "Dental caries")
ABNORMAL: Code = ("SCT", "263654008", "Abnormal")


@dataclass(frozen=True)
class Term:
    """One entry of Slicer's terminology lists (what a segment's TerminologyEntry holds)."""

    context: str
    category: Code
    type: Code
    modifier: Optional[Code] = None
    region: Optional[Code] = None
    region_modifier: Optional[Code] = None
    region_context: str = ANATOMIC_CONTEXT
    # A more specific anatomic structure than ``type`` (a tooth by FDI number); DICOM SEG only.
    structure: Optional[Code] = None


GENERIC_TERM = Term(GENERAL_ANATOMY, TISSUE, TISSUE)  # Slicer's default for a new segment

# --------------------------------------------------------------------------- teeth
# FDI tooth number -> SNOMED CT code of that tooth, as listed in DICOM PS3.16 CID 4018 (permanent)
# and CID 4019 (deciduous), meanings verbatim (32 is "Mandibular left lateral tooth" there).
FDI_TOOTH_CODES: Dict[int, Tuple[str, str]] = {
    11: ("422653006", "Permanent maxillary right central incisor tooth"),
    12: ("424877001", "Permanent maxillary right lateral incisor tooth"),
    13: ("860767006", "Permanent maxillary right canine tooth"),
    14: ("57826002", "Permanent maxillary right first premolar tooth"),
    15: ("36492000", "Permanent maxillary right second premolar tooth"),
    16: ("865995000", "Permanent maxillary right first molar tooth"),
    17: ("863902006", "Permanent maxillary right second molar tooth"),
    18: ("68085002", "Permanent maxillary right third molar tooth"),
    21: ("424399000", "Permanent maxillary left central incisor tooth"),
    22: ("423185002", "Permanent maxillary left lateral incisor tooth"),
    23: ("860780009", "Permanent maxillary left canine tooth"),
    24: ("61897005", "Permanent maxillary left first premolar tooth"),
    25: ("23226009", "Permanent maxillary left second premolar tooth"),
    26: ("865988009", "Permanent maxillary left first molar tooth"),
    27: ("863901004", "Permanent maxillary left second molar tooth"),
    28: ("87704003", "Permanent maxillary left third molar tooth"),
    31: ("425106001", "Mandibular left central incisor tooth"),
    32: ("423331005", "Mandibular left lateral tooth"),
    33: ("860782001", "Mandibular left canine tooth"),
    34: ("2400006", "Mandibular left first premolar tooth"),
    35: ("24573005", "Mandibular left second premolar tooth"),
    36: ("866006002", "Mandibular left first molar tooth"),
    37: ("863898000", "Mandibular left second molar tooth"),
    38: ("74344005", "Mandibular left third molar tooth"),
    41: ("424575004", "Mandibular right central incisor tooth"),
    42: ("423937004", "Mandibular right lateral incisor tooth"),
    43: ("860785004", "Mandibular right canine tooth"),
    44: ("80140008", "Mandibular right first premolar tooth"),
    45: ("8873007", "Mandibular right second premolar tooth"),
    46: ("866005003", "Mandibular right first molar tooth"),
    47: ("863899008", "Mandibular right second molar tooth"),
    48: ("38994002", "Mandibular right third molar tooth"),
    51: ("88824007", "Deciduous maxillary right central incisor tooth"),
    52: ("65624003", "Deciduous maxillary right lateral incisor tooth"),
    53: ("30618001", "Deciduous maxillary right canine tooth"),
    54: ("17505006", "Deciduous maxillary right first molar tooth"),
    55: ("27855007", "Deciduous maxillary right second molar tooth"),
    61: ("51678005", "Deciduous maxillary left central incisor tooth"),
    62: ("43622005", "Deciduous maxillary left lateral incisor tooth"),
    63: ("73937000", "Deciduous maxillary left canine tooth"),
    64: ("45234009", "Deciduous maxillary left first molar tooth"),
    65: ("51943008", "Deciduous maxillary left second molar tooth"),
    71: ("89552004", "Deciduous mandibular left central incisor tooth"),
    72: ("14770005", "Deciduous mandibular left lateral incisor tooth"),
    73: ("43281008", "Deciduous mandibular left canine tooth"),
    74: ("38896004", "Deciduous mandibular left first molar tooth"),
    75: ("49330006", "Deciduous mandibular left second molar tooth"),
    81: ("67834006", "Deciduous mandibular right central incisor tooth"),
    82: ("22445006", "Deciduous mandibular right lateral incisor tooth"),
    83: ("6062009", "Deciduous mandibular right canine tooth"),
    84: ("58646007", "Deciduous mandibular right first molar tooth"),
    85: ("61868007", "Deciduous mandibular right second molar tooth"),
}


def fdi_side(fdi: int) -> Code:
    """The patient's side of an FDI tooth: quadrants 1, 4 (and 5, 8) right; 2, 3 (6, 7) left."""
    q = int(fdi) // 10
    return RIGHT if (q - 1) % 4 + 1 in (1, 4) else LEFT


def tooth_code(fdi: int) -> Code:
    """The SNOMED CT code (scheme, value, meaning) of the tooth with FDI number ``fdi``."""
    if int(fdi) not in FDI_TOOTH_CODES:
        raise ValueError(f"{fdi!r} is not an FDI tooth number (11-48 permanent, 51-85 primary)")
    value, meaning = FDI_TOOTH_CODES[int(fdi)]
    return ("SCT", value, meaning)


# --------------------------------------------------------------------------- code -> Slicer entry
def _organ(code: Code, modifier: Optional[Code] = None) -> Term:
    return Term(GENERAL_ANATOMY, ANATOMICAL_STRUCTURE, code, modifier)


_TERMS: Dict[Tuple[str, str], Term] = {}
for _name, _idx, _rgb, _value, _meaning in BTCV_ORGANS:
    _TERMS[("SCT", _value)] = _organ(("SCT", _value, _meaning))
_TERMS[("SCT", "18639004")] = _organ(KIDNEY, LEFT)
_TERMS[("SCT", "9846003")] = _organ(KIDNEY, RIGHT)
_TERMS[("SCT", KIDNEY[1])] = _organ(KIDNEY)  # side unknown
_TERMS[("SCT", "28273000")] = Term(DICOM_MASTER, ANATOMICAL_STRUCTURE, ("SCT", "28273000", "Bile duct"))
_TERMS[("SCT", NEOPLASM[1])] = Term(DICOM_MASTER, MORPHOLOGICALLY_ALTERED_STRUCTURE, NEOPLASM)
_TERMS[("SCT", DENTAL_CARIES[1])] = Term(DICOM_MASTER, SPATIAL_AND_RELATIONAL_CONCEPT, LUCENCY, region=TOOTH)
_TERMS[("SCT", ABNORMAL[1])] = Term(DICOM_MASTER, TISSUE, TISSUE, region=JAW_REGION)
_TERMS[("SCT", TOOTH[1])] = Term(DICOM_MASTER, ANATOMICAL_STRUCTURE, TOOTH)  # side unknown
for _fdi in FDI_TOOTH_CODES:
    _TERMS[("SCT", FDI_TOOTH_CODES[_fdi][0])] = Term(DICOM_MASTER, ANATOMICAL_STRUCTURE, TOOTH, fdi_side(_fdi),
                                                     structure=tooth_code(_fdi))


def slicer_term(code: Optional[Sequence[str]]) -> Optional[Term]:
    """Slicer's terminology entry for a segment whose own code is ``code``; None when Pantheon
    has none for it (see :func:`term_for` for the fallback)."""
    if not code or len(code) < 2:
        return None
    return _TERMS.get((str(code[0]), str(code[1])))


def term_for(code: Optional[Sequence[str]]) -> Term:
    """The entry to write for a segment with ``code``: :func:`slicer_term`, else for no code the
    generic Tissue entry, else (a code Pantheon does not know, e.g. a user's) that code as the type
    of an Anatomical Structure, as given."""
    term = slicer_term(code)
    if term is not None:
        return term
    if not code or not code[1]:
        return GENERIC_TERM
    return Term(GENERAL_ANATOMY, ANATOMICAL_STRUCTURE, tuple(str(c) for c in code[:3]))


# ---------------------------------------------------------------------------- 3D-LLDM liver MRI labels
#: The label set of 3D-LLDM / FOSCU (arXiv 2603.23845, 2603.29343) and of the HCC liver MRI phantom.
# --------------------------------------------------------------------------- terminology strings
def _triplet(code: Optional[Sequence[str]]) -> str:
    if not code:
        return "^^"
    scheme, value, meaning = (str(c) if c is not None else "" for c in code)
    for part in (scheme, value, meaning):
        if "~" in part or "^" in part:
            raise ValueError(f"terminology code parts may not contain '~' or '^': {code!r}")
    return f"{scheme}^{value}^{meaning}"


def serialize_term(term: Term) -> str:
    """Slicer's serialised form of a :class:`Term`."""
    return "~".join([term.context, _triplet(term.category), _triplet(term.type), _triplet(term.modifier),
                     term.region_context, _triplet(term.region), _triplet(term.region_modifier)])


def terminology_string(code: Optional[Sequence[str]], modifier: Optional[Sequence[str]] = None,
                       category: Optional[Sequence[str]] = None, context: Optional[str] = None) -> str:
    """Slicer's serialised terminology entry for a segment whose code is ``code``.

    With ``code`` alone (the usual call): the entry of Slicer's lists that
    :func:`term_for` gives for it (``None``: Slicer's default Tissue entry). With
    ``modifier``, ``category`` or ``context`` given, the entry is built as asked: type ``code``,
    category default Anatomical Structure, context default the General Anatomy list.
    """
    if code is not None and (len(code) != 3 or not code[1]):
        raise ValueError(f"a terminology code is (scheme, value, meaning), got {code!r}")
    if modifier is None and category is None and context is None:
        term = term_for(tuple(str(c) for c in code) if code is not None else None)
    else:
        if code is None:
            raise ValueError("a terminology entry built part by part needs a type code")
        term = Term(context or GENERAL_ANATOMY, tuple(category or ANATOMICAL_STRUCTURE), tuple(code),
                    tuple(modifier) if modifier else None)
    return serialize_term(term)



HCC_LABELS = {0: "background", 1: "liver", 2: "portal_vein", 3: "hepatic_vein", 4: "hcc"}
#: Slicer-style colours (RGB 0-1) for the label map's segments
HCC_COLORS = {"liver": (0.87, 0.51, 0.39), "portal_vein": (0.0, 0.59, 0.81), "hepatic_vein": (0.0, 0.36, 0.62),
              "hcc": (0.95, 0.85, 0.15)}
