"""Every segment Pantheon writes carries an entry of 3D Slicer's own terminology lists.

The lists are Slicer's JSON files, copied into ``Testing/terminology/`` (see its README). An entry
"exists" when, in the context it names, its category, type and type modifier are there with the
same coding scheme, code value and code meaning, its anatomic context name is Slicer's anatomic
context, and its anatomic region (if any) is in that context under a category that shows anatomy.
Checked for the terminology string (.seg.nrrd, Slicer scene) and for the DICOM SEG segment
description of every segment of the three models, the sample data and the generic fallback.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from pantheon import anatomy
from pantheon.results import Segment
from pantheon.slicerbridge import terms

TERMINOLOGY_DIR = Path(__file__).resolve().parent / "terminology"
SEGMENTATION_FILES = ("SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json",
                      "SegmentationCategoryTypeModifier-DICOM-Master.json")
ANATOMIC_FILE = "AnatomicRegionAndModifier-DICOM-Master.json"


def _key(item):
    return item["CodingSchemeDesignator"], item["CodeValue"]


class SlicerLists:
    """Slicer's segmentation and anatomic contexts, indexed by (scheme, value) at each level."""

    def __init__(self, folder=TERMINOLOGY_DIR):
        self.contexts = {}
        for name in SEGMENTATION_FILES:
            doc = json.loads((folder / name).read_text(encoding="utf-8"))
            cats = {}
            for cat in doc["SegmentationCodes"]["Category"]:
                types = {_key(t): (t, {_key(m): m for m in t.get("Modifier", [])}) for t in cat.get("Type", [])}
                cats[_key(cat)] = (cat, types)
            self.contexts[doc["SegmentationCategoryTypeContextName"]] = cats
        doc = json.loads((folder / ANATOMIC_FILE).read_text(encoding="utf-8"))
        self.anatomic_context = doc["AnatomicContextName"]
        self.regions = {_key(r): (r, {_key(m): m for m in r.get("Modifier", [])})
                        for r in doc["AnatomicCodes"]["AnatomicRegion"]}

    @staticmethod
    def _same(item, code, what):
        if code[2] != item["CodeMeaning"]:
            return [f"{what} {code} has Slicer's meaning {item['CodeMeaning']!r}"]
        return []

    def problems(self, parts: dict) -> list:
        """What is not in Slicer's lists about a parsed entry (terms.parse_terminology); [] = found."""
        out = []
        if parts["context"] not in self.contexts:
            return [f"unknown context {parts['context']!r}"]
        cats = self.contexts[parts["context"]]
        cat = parts["category"]
        if not cat or (cat[0], cat[1]) not in cats:
            return [f"category {cat} not in {parts['context']!r}"]
        cat_item, types = cats[(cat[0], cat[1])]
        out += self._same(cat_item, cat, "category")
        typ = parts["type"]
        if not typ or (typ[0], typ[1]) not in types:
            return out + [f"type {typ} not under category {cat[2]!r} in {parts['context']!r}"]
        type_item, modifiers = types[(typ[0], typ[1])]
        out += self._same(type_item, typ, "type")
        mod = parts["modifier"]
        if mod:
            if (mod[0], mod[1]) not in modifiers:
                out.append(f"modifier {mod} not offered for {typ[2]!r} in {parts['context']!r}")
            else:
                out += self._same(modifiers[(mod[0], mod[1])], mod, "modifier")
        if parts["region_context"] != self.anatomic_context:
            out.append(f"anatomic context name {parts['region_context']!r} is not {self.anatomic_context!r}")
        region = parts["region"]
        if region:
            if not cat_item.get("showAnatomy", False):
                out.append(f"a region on category {cat[2]!r}, which Slicer shows without anatomy")
            if (region[0], region[1]) not in self.regions:
                out.append(f"region {region} not in {self.anatomic_context!r}")
            else:
                region_item, region_mods = self.regions[(region[0], region[1])]
                out += self._same(region_item, region, "region")
                rmod = parts["region_modifier"]
                if rmod and (rmod[0], rmod[1]) not in region_mods:
                    out.append(f"region modifier {rmod} not offered for {region[2]!r}")
        elif parts["region_modifier"]:
            out.append("a region modifier without a region")
        return out


@pytest.fixture(scope="module")
def lists():
    return SlicerLists()


def pantheon_segments():
    """(where, Segment) for every segment Pantheon writes: all three models, the sample data, the
    generic fallback (no code, unlisted label values)."""
    from pantheon.models.mathena import ALL_FDI
    from pantheon.pipelines import mathena, neonet
    from pantheon.sampledata.build import MRI_SEGMENTS

    out = [(f"BTCV {name}", Segment(idx, name, rgb, ("SCT", code, meaning)))
           for name, idx, rgb, code, meaning in anatomy.BTCV_ORGANS]
    out += [(f"NeoNet {s.name}", s) for s in neonet.SEGMENTS]
    out += [(f"MATHENA tooth {fdi}", Segment(fdi, mathena.tooth_name(fdi), mathena.tooth_color(fdi),
                                             anatomy.tooth_code(fdi))) for fdi in ALL_FDI]
    out += [("MATHENA caries", Segment(1, "caries", (0.9, 0.1, 0.1), mathena.CARIES_CODE)),
            ("MATHENA anomaly", Segment(1, "anomaly", (1.0, 0.6, 0.0), mathena.ANOMALY_CODE))]
    out += [(f"sample data {name}", Segment(v, name, c, code)) for v, name, c, code in MRI_SEGMENTS]
    out += [("uncoded / unlisted", Segment(7, "Label 7", (0.5, 0.5, 0.5), None))]
    return out


def test_lists_are_slicers_files():
    lists = SlicerLists()
    assert set(lists.contexts) == {anatomy.GENERAL_ANATOMY, anatomy.DICOM_MASTER}
    assert lists.anatomic_context == anatomy.ANATOMIC_CONTEXT
    assert len(lists.regions) > 500 and sum(len(t) for _c, t in lists.contexts[anatomy.DICOM_MASTER].values()) > 600


def test_checker_rejects_what_slicer_does_not_list(lists):
    """Negative controls: the entries Pantheon used to write, and near misses, are all caught."""
    def entry(context, category, typ, modifier=None, region_context=anatomy.ANATOMIC_CONTEXT, region=None):
        return terms.parse_terminology(terms.serialize_term(anatomy.Term(context, category, typ, modifier, region,
                                                                         region_context=region_context)))

    AS, GA, DM = anatomy.ANATOMICAL_STRUCTURE, anatomy.GENERAL_ANATOMY, anatomy.DICOM_MASTER
    bad = {
        "laterality-specific kidney": entry(GA, AS, ("SCT", "9846003", "Right kidney")),
        "neoplasm as anatomy": entry(GA, AS, ("SCT", "108369006", "Neoplasm")),
        "caries as anatomy": entry(GA, AS, ("SCT", "80967001", "Dental caries")),
        "Label N as anatomy/tissue": entry(GA, AS, anatomy.TISSUE),
        "no anatomic context": entry(GA, AS, ("SCT", "10200004", "Liver"), region_context=""),
        "wrong meaning": entry(GA, AS, ("SCT", "10200004", "Hepar")),
        "modifier the list lacks": entry(GA, AS, anatomy.TOOTH, anatomy.RIGHT),  # only DICOM master has it
        "region on anatomy": entry(DM, AS, anatomy.TOOTH, region=anatomy.JAW_REGION),
        "region not listed": entry(DM, anatomy.TISSUE, anatomy.TISSUE, region=("SCT", "1", "Nowhere")),
    }
    for what, parts in bad.items():
        assert lists.problems(parts), what
    assert lists.problems(entry(GA, AS, anatomy.KIDNEY, anatomy.RIGHT)) == []  # ... and the fix passes


def test_every_segment_pantheon_writes_is_in_slicers_lists(lists):
    missing = {}
    for where, seg in pantheon_segments():
        entry = terms.terminology_string(tuple(seg.code) if seg.code else None)
        parts = terms.parse_terminology(entry)
        problems = lists.problems(parts)
        if problems:
            missing[where] = problems
        assert parts["region_context"] == anatomy.ANATOMIC_CONTEXT, where
    assert missing == {}


def test_slicers_own_parser_reads_every_entry():
    slicer = pytest.importorskip("slicer")
    for where, seg in pantheon_segments():
        entry = terms.terminology_string(tuple(seg.code) if seg.code else None)
        parsed = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(entry, parsed), where
        ours = terms.parse_terminology(entry)
        assert parsed.GetTerminologyContextName() == ours["context"]
        assert parsed.GetRegionContextName() == anatomy.ANATOMIC_CONTEXT
        assert parsed.GetTypeObject().GetCodeValue() == ours["type"][1], where
        assert parsed.GetCategoryObject().GetCodeValue() == ours["category"][1], where
        assert (parsed.GetTypeModifierObject().GetCodeValue() or None) == (ours["modifier"] or (None, None))[1]
        assert (parsed.GetRegionObject().GetCodeValue() or None) == (ours["region"] or (None, None))[1]


def test_dicom_seg_segment_descriptions_carry_the_same_entries(lists):
    """The DICOM SEG writer's segment descriptions hold the same category/type/modifier/region."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from pantheon.export.dicom_seg import _description

    algorithm = hd.AlgorithmIdentificationSequence(name="t", family=codes.cid7162.ArtificialIntelligence, version="1")

    def code(seq):
        return (str(seq[0].CodingSchemeDesignator), str(seq[0].CodeValue), str(seq[0].CodeMeaning)) if seq else None

    for n, (where, seg) in enumerate(pantheon_segments(), start=1):
        d = _description(n, seg, algorithm)
        typ = d.SegmentedPropertyTypeCodeSequence[0]
        region = d.get("AnatomicRegionSequence")
        parts = {"context": anatomy.term_for(seg.code).context, "region_context": anatomy.ANATOMIC_CONTEXT,
                 "category": code(d.SegmentedPropertyCategoryCodeSequence), "type": code([typ]),
                 "modifier": code(typ.get("SegmentedPropertyTypeModifierCodeSequence")),
                 "region": code(region), "region_modifier": code(region[0].get("AnatomicRegionModifierSequence"))
                 if region else None}
        assert lists.problems(parts) == [], where
        assert parts == {**terms.parse_terminology(terms.terminology_string(tuple(seg.code) if seg.code else None)),
                         "context": parts["context"]}, where
        structure = d.get("PrimaryAnatomicStructureSequence")
        if where.startswith("MATHENA tooth"):
            assert code(structure) == anatomy.tooth_code(int(where.rsplit(" ", 1)[1]))
        else:
            assert structure is None


def test_kidneys_teeth_and_findings_use_the_documented_entries():
    t = {w: anatomy.term_for(s.code) for w, s in pantheon_segments()}
    assert (t["BTCV left kidney"].type, t["BTCV left kidney"].modifier) == (anatomy.KIDNEY, anatomy.LEFT)
    assert (t["BTCV right kidney"].type, t["BTCV right kidney"].modifier) == (anatomy.KIDNEY, anatomy.RIGHT)
    assert t["NeoNet tumour"].category == anatomy.MORPHOLOGICALLY_ALTERED_STRUCTURE
    assert (t["MATHENA caries"].type, t["MATHENA caries"].region) == (anatomy.LUCENCY, anatomy.TOOTH)
    assert (t["MATHENA anomaly"].type, t["MATHENA anomaly"].region) == (anatomy.TISSUE, anatomy.JAW_REGION)
    assert t["uncoded / unlisted"] == anatomy.GENERIC_TERM
    for fdi, side in ((11, "Right"), (18, "Right"), (21, "Left"), (38, "Left"), (48, "Right"), (55, "Right"),
                      (65, "Left"), (75, "Left"), (85, "Right")):
        assert (t[f"MATHENA tooth {fdi}"].type, t[f"MATHENA tooth {fdi}"].modifier[2]) == (anatomy.TOOTH, side)


def test_tooth_codes_are_dicoms_per_tooth_codes():
    """FDI -> SNOMED CT as DICOM PS3.16 lists them (pydicom's copy of CID 4018 permanent, 4019
    deciduous): right code, verbatim meaning, and jaw / side / tooth agreeing with the FDI number."""
    from pydicom.sr._cid_dict import cid_concepts
    from pydicom.sr._concepts_dict import concepts

    from pantheon.models.mathena import ALL_FDI

    def cid_codes(cid):
        out = {}
        for name in cid_concepts[cid]["SCT"]:
            for value, (meaning, _cids) in concepts["SCT"][name].items():
                out[value] = meaning
        return out

    permanent, deciduous = cid_codes(4018), cid_codes(4019)
    assert set(anatomy.FDI_TOOTH_CODES) == set(ALL_FDI)
    position = {1: "central incisor", 2: "lateral", 3: "canine", 4: "first premolar", 5: "second premolar",
                6: "first molar", 7: "second molar", 8: "third molar"}
    primary_position = {1: "central incisor", 2: "lateral incisor", 3: "canine", 4: "first molar", 5: "second molar"}
    for fdi, (value, meaning) in anatomy.FDI_TOOTH_CODES.items():
        q, n = divmod(fdi, 10)
        table = deciduous if q >= 5 else permanent
        assert table.get(value) == meaning, fdi
        m = meaning.lower()
        assert ("maxillary" if (q - 1) % 4 < 2 else "mandibular") in m, fdi
        assert anatomy.fdi_side(fdi)[2].lower() in m.split(), fdi
        assert (primary_position if q >= 5 else position)[n] in m, fdi
        assert ("deciduous" in m) == (q >= 5), fdi
    assert len({v for v, _m in anatomy.FDI_TOOTH_CODES.values()}) == len(anatomy.FDI_TOOTH_CODES)
    with pytest.raises(ValueError):
        anatomy.tooth_code(19)


def test_seg_nrrd_tags_carry_the_entries(tmp_path, lists):
    """What write_seg_nrrd puts in each SegmentN_Tags is the checked entry, for coded and uncoded segments."""
    from pantheon.io import Volume
    from pantheon.io.segnrrd import read_seg_nrrd_header, write_seg_nrrd
    from pantheon.results import LabelOutput

    segs = [s for _w, s in pantheon_segments()]
    segs = [Segment(n + 1, s.name, s.color, s.code) for n, s in enumerate(segs)]  # distinct label values
    arr = np.arange(len(segs) + 1, dtype=np.uint8).reshape(1, 1, -1)
    path = write_seg_nrrd(LabelOutput(Volume(arr), segs), tmp_path / "all.seg.nrrd")
    header = read_seg_nrrd_header(path)
    for n, s in enumerate(segs):
        tags = dict(t.split(":", 1) for t in header[f"Segment{n}_Tags"].split("|") if t)
        parts = terms.parse_terminology(tags["TerminologyEntry"])
        assert lists.problems(parts) == [], s.name
        assert tags["TerminologyEntry"] == terms.terminology_string(tuple(s.code) if s.code else None)
