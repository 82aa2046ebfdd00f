"""pantheon.slicerbridge.terms: BTCV table, terminology strings, label assignment (no Slicer needed)."""

import pytest

from pantheon import anatomy
from pantheon.errors import InputError
from pantheon.slicerbridge import terms


def test_btcv_codes_are_laterality_specific_snomed_ct():
    codes = {name: code for name, _idx, _rgb, code, _m in terms.BTCV_ORGANS}
    # "Kidney structure" (64033007) has no side; each kidney needs its own code
    assert codes["left kidney"] == "18639004" and codes["right kidney"] == "9846003"
    assert len(set(codes.values())) == len(codes)
    assert terms.btcv_organ_from_code("18639004") == "left kidney"
    assert terms.btcv_organ_from_code("64033007") is None  # side-less: the name decides


def test_terminology_string_round_trip():
    s = terms.terminology_string(("SCT", "78961009", "Spleen"))
    assert s == ("Segmentation category and type - 3D Slicer General Anatomy list"
                 "~SCT^123037004^Anatomical Structure~SCT^78961009^Spleen~^^"
                 "~Anatomic codes - DICOM master list~^^~^^")
    p = terms.parse_terminology(s)
    assert p["type"] == ("SCT", "78961009", "Spleen")
    assert p["category"] == anatomy.ANATOMICAL_STRUCTURE and p["modifier"] is None
    assert p["region_context"] == "Anatomic codes - DICOM master list" and p["region"] is None
    assert terms.parse_terminology("")["type"] is None
    with pytest.raises(ValueError):
        terms.terminology_string(("SCT", "1^2", "x"))


def test_terminology_string_uses_slicers_entries_for_pantheon_codes():
    """A segment's own code becomes the entry of Slicer's lists (pantheon.anatomy): laterality as a
    modifier, the tumour and caries in their own categories, no code = Slicer's default Tissue."""
    p = terms.parse_terminology(terms.terminology_string(("SCT", "9846003", "Right kidney")))
    assert (p["type"], p["modifier"]) == (("SCT", "64033007", "Kidney"), ("SCT", "24028007", "Right"))
    assert terms.btcv_organ_from_code(p["type"][1], p["modifier"][1]) == "right kidney"  # read back as written
    p = terms.parse_terminology(terms.terminology_string(("SCT", "108369006", "Neoplasm")))
    assert p["context"] == "Segmentation category and type - DICOM master list"
    assert p["category"] == ("SCT", "49755003", "Morphologically Altered Structure")
    p = terms.parse_terminology(terms.terminology_string(("SCT", "80967001", "Dental caries")))
    assert (p["category"][2], p["type"], p["region"]) == (
        "Spatial and Relational Concept", ("DCM", "112084", "Lucency"), ("SCT", "38199008", "Tooth"))
    p = terms.parse_terminology(terms.terminology_string(None))
    assert (p["context"], p["category"], p["type"]) == (terms.TERMINOLOGY_CONTEXT, ("SCT", "85756007", "Tissue"),
                                                        ("SCT", "85756007", "Tissue"))
    # a code Pantheon does not know is written as given, as an anatomical structure
    p = terms.parse_terminology(terms.terminology_string(("SCT", "1", "X")))
    assert (p["category"], p["type"]) == (anatomy.ANATOMICAL_STRUCTURE, ("SCT", "1", "X"))


def test_resolve_by_code_and_name():
    k = terms.terminology_string(("SCT", terms.SCT_KIDNEY, "Kidney"), modifier=("SCT", terms.SCT_RIGHT, "Right"))
    segs = [("a", "Segment_1", terms.terminology_string(("SCT", "10200004", "Liver"))),
            ("b", "Kidney_Left", ""),
            ("c", "whatever", k),
            ("d", "Gall bladder", None),
            # plain "Kidney" code is ambiguous: the name decides
            ("e", "Left kidney", terms.terminology_string(("SCT", terms.SCT_KIDNEY, "Left kidney")))]
    assert terms.resolve_label_values(segs) == {"a": 6, "b": 3, "c": 2, "d": 4, "e": 3}


def test_unknown_segments_are_listed():
    segs = [("a", "liver", ""), ("b", "tumour", ""), ("c", "Segment_3", terms.terminology_string(("SCT", "1", "X")))]
    with pytest.raises(InputError) as exc:
        terms.resolve_label_values(segs)
    msg = str(exc.value)
    assert "'tumour'" in msg and "'Segment_3'" in msg and "liver'" not in msg.split("Known")[0]


def test_explicit_label_values_ignore_the_rest():
    segs = [("a", "Tumour", ""), ("b", "liver", ""),
            ("c", "x", terms.terminology_string(("SCT", "78961009", "Spleen")))]
    assert terms.resolve_label_values(segs, {"tumour": 5, "78961009": 9}) == {"a": 5, "c": 9}
    with pytest.raises(InputError):
        terms.resolve_label_values(segs, {"tumour": 0})
