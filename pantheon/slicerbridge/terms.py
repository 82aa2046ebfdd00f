"""Segment names, colours and standard codes for the Slicer bridge, in plain Python (no Slicer).

- :data:`BTCV_ORGANS` comes from the torch-free :mod:`pantheon.anatomy` (the Slicer process never
  imports torch).
- Terminology entries are Slicer's serialised string (what ``vtkSegment.SetTerminology`` and the
  ``TerminologyEntry`` tag hold, and ``vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry``
  produces)::

      context~catScheme^catCode^catMeaning~typeScheme^typeCode^typeMeaning~typeModifier~anatomicContext~region~regionModifier

  :func:`terminology_string` of a segment's code gives the entry of Slicer's own lists that
  :func:`pantheon.anatomy.term_for` picks for it (kidneys as Kidney + Right/Left, the tumour under
  Morphologically Altered Structure, teeth as Tooth + side ...), always with the anatomic context
  name "Anatomic codes - DICOM master list", as Slicer writes it.
- :func:`resolve_label_values` decides which label value each segment gets when a segmentation is
  exported for the worker (see its docstring for the rules).
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from ..errors import InputError

Code = Tuple[str, str, str]  # (coding scheme designator, code value, code meaning)

# re-exported; torch-free
from ..anatomy import BTCV_ORGANS, GENERAL_ANATOMY, serialize_term, terminology_string  # noqa: E402, F401

TERMINOLOGY_CONTEXT = GENERAL_ANATOMY
SCT_LEFT = "7771000"
SCT_RIGHT = "24028007"
SCT_KIDNEY = "64033007"  # "Kidney structure": laterality comes from a modifier or the name

_BTCV_INDEX = {name: index for name, index, _c, _code, _m in BTCV_ORGANS}

# SNOMED CT type code (and optional modifier code) -> BTCV organ name. Both the laterality-specific
# kidney codes and Slicer's "Kidney + Left/Right modifier" form are understood. Plain "Kidney"
# without a modifier is ambiguous and falls back to the segment name.
_CODE_TO_ORGAN: Dict[Tuple[str, str], str] = {
    ("15825003", ""): "aorta",
    ("28231008", ""): "gallbladder",
    ("78961009", ""): "spleen",
    ("10200004", ""): "liver",
    ("69695003", ""): "stomach",
    ("15776009", ""): "pancreas",
    ("9846003", ""): "right kidney",
    ("18639004", ""): "left kidney",
    (SCT_KIDNEY, SCT_LEFT): "left kidney",
    (SCT_KIDNEY, SCT_RIGHT): "right kidney",
}

# Name spellings (after :func:`normalize_name`) -> BTCV organ name.
_NAME_ALIASES = {
    "gall bladder": "gallbladder",
    "kidney left": "left kidney",
    "kidney right": "right kidney",
    "l kidney": "left kidney",
    "r kidney": "right kidney",
    "abdominal aorta": "aorta",
}


def normalize_name(name: str) -> str:
    """Lower case, ``_``/``-`` as spaces, single spaces: "Kidney_Left" -> "kidney left"."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", str(name))).strip().lower()


def btcv_organ_from_name(name: str) -> Optional[str]:
    n = normalize_name(name)
    n = _NAME_ALIASES.get(n, n)
    return n if n in _BTCV_INDEX else None


def btcv_organ_from_code(type_code: Optional[str], modifier_code: Optional[str] = None) -> Optional[str]:
    if not type_code:
        return None
    return _CODE_TO_ORGAN.get((type_code, modifier_code or "")) or _CODE_TO_ORGAN.get((type_code, ""))


def parse_terminology(entry: Optional[str]) -> dict:
    """Parse a serialised terminology entry into its parts.

    Keys: "context", "region_context" (names or None) and "category", "type", "modifier",
    "region", "region_modifier" ((scheme, value, meaning) tuples, or None where empty). An empty
    or malformed entry gives all None.
    """
    keys = ("context", "category", "type", "modifier", "region_context", "region", "region_modifier")
    out = dict.fromkeys(keys)
    if not entry:
        return out
    parts = entry.split("~")
    if len(parts) < 3:
        return out

    def code(s: str):
        bits = (s.split("^") + ["", "", ""])[:3]
        return tuple(bits) if bits[1] else None

    parts += [""] * (7 - len(parts))
    out["context"] = parts[0] or None
    out["category"], out["type"], out["modifier"] = code(parts[1]), code(parts[2]), code(parts[3])
    out["region_context"] = parts[4] or None
    out["region"], out["region_modifier"] = code(parts[5]), code(parts[6])
    return out


# --------------------------------------------------------------------------- label assignment
def resolve_label_values(segments: Iterable[Tuple[str, str, Optional[str]]],
                         label_values: Optional[Mapping[str, int]] = None,
                         ignored: Optional[List[str]] = None) -> Dict[str, int]:
    """Label value for each segment ``(segment_id, name, terminology_entry)``; returns {id: value}.

    Without ``label_values`` (the default), segments are BTCV organs: matched first by their
    terminology code (SNOMED CT type, plus Left/Right modifier for "Kidney"), then by name
    (case-insensitive; "Left kidney", "kidney_left", "Gall bladder" ...), and given the BTCV
    index. A segment matching neither raises :class:`InputError` listing every such segment, unless
    ``ignored`` is a list: such segments are then left out and their names appended to it (a full
    13-structure BTCV segmentation trains the 8-organ probe on its 8 organs); with no organ at all
    it is still an error.

    With ``label_values`` ({segment name or code value: int}), a segment takes the value of its
    name (case-insensitive, normalised as above) or else of its terminology type code; segments
    in neither are *ignored* (left out of the label map), on purpose: the caller chose the labels.
    Values must be integers in 1..65535.
    """
    segments = list(segments)
    result: Dict[str, int] = {}
    if label_values is not None:
        by_key: Dict[str, int] = {}
        for key, value in label_values.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= int(value) <= 65535:
                raise InputError(f"label value for {key!r} must be an integer in 1..65535, got {value!r}")
            by_key[normalize_name(key)] = int(value)
        for seg_id, name, entry in segments:
            value = by_key.get(normalize_name(name))
            if value is None:
                type_code = parse_terminology(entry)["type"]
                if type_code:
                    value = by_key.get(normalize_name(type_code[1]))
            if value is not None:
                result[seg_id] = value
        return result

    unknown: List[str] = []
    for seg_id, name, entry in segments:
        term = parse_terminology(entry)
        organ = btcv_organ_from_code(term["type"][1] if term["type"] else None,
                                     term["modifier"][1] if term["modifier"] else None)
        if organ is None:
            organ = btcv_organ_from_name(name)
        if organ is None:
            code = f" (code {term['type'][0]} {term['type'][1]} {term['type'][2]!r})" if term["type"] else ""
            unknown.append(f"{name!r}{code}")
        else:
            result[seg_id] = _BTCV_INDEX[organ]
    known = ", ".join(o[0] for o in BTCV_ORGANS)
    if unknown and ignored is not None and result:
        ignored.extend(unknown)
    elif unknown:
        which = "none of the segments is" if not result else "these segments are not"
        raise InputError(
            f"{which} one of the {len(BTCV_ORGANS)} organs NEMESIS's organ probe knows: {', '.join(unknown)}. "
            f"It knows (by SNOMED CT code or name): {known}. Rename the segments, or pass "
            "label_values={name: value} to choose the labels (segments not in label_values are then left out).")
    return result
