"""DENTEX / COCO reader: hand-written JSON files, rasterisation, errors, round trip."""

import json

import numpy as np
import pytest

from pantheon.data.dentex import quadrant_tooth_to_fdi, rasterise_polygons, read_dentex
from pantheon.errors import InputError

CATS = {
    "categories_1": [{"id": i, "name": str(i + 1), "supercategory": str(i + 1)} for i in range(4)],
    "categories_2": [{"id": i, "name": str(i + 1), "supercategory": str(i + 1)} for i in range(8)],
    "categories_3": [{"id": 0, "name": "Impacted"}, {"id": 1, "name": "Caries"},
                     {"id": 2, "name": "Periapical Lesion"}, {"id": 3, "name": "Deep Caries"}],
}


def _doc():
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 60},
                   {"id": 2, "file_name": "b.png", "height": 20, "width": 30}],
        "annotations": [
            # quadrant id 2 -> "3", tooth id 5 -> "6": FDI 36; rectangle 4 x 3 at (10, 5)
            {"id": 1, "image_id": 1, "bbox": [10, 5, 4, 3], "segmentation": [[10, 5, 14, 5, 14, 8, 10, 8]],
             "category_id_1": 2, "category_id_2": 5, "category_id_3": 1},
            # same tooth, second finding -> merged
            {"id": 2, "image_id": 1, "bbox": [10, 5, 4, 6], "segmentation": [[10, 8, 14, 8, 14, 11, 10, 11]],
             "category_id_1": 2, "category_id_2": 5, "category_id_3": 2},
            # quadrant "1", tooth "8": FDI 18; right triangle (0,0) (10,0) (0,10) -> 45 pixel centres
            {"id": 3, "image_id": 1, "bbox": [0, 0, 10, 10], "segmentation": [[0, 0, 10, 0, 0, 10]],
             "category_id_1": 0, "category_id_2": 7, "category_id_3": 0},
            # quadrant only (no enumeration) on image 2
            {"id": 4, "image_id": 2, "bbox": [1.5, 2.5, 3, 4], "category_id_1": 3},
        ],
        **CATS,
    }


def _write(tmp_path, doc, name="ann.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(p)


def test_rasterise_hand_computed_areas():
    rect = rasterise_polygons([[10, 5, 14, 5, 14, 8, 10, 8]], 40, 60)
    assert rect.sum() == 12 and rect[5:8, 10:14].all()
    tri = rasterise_polygons([[0, 0, 10, 0, 0, 10]], 40, 60)
    assert tri.sum() == 45  # centres with i + j < 9: 9 + 8 + ... + 1
    assert tri[0, 8] and not tri[0, 9] and tri[8, 0] and not tri[1, 8]
    # L shape: 6x2 bar plus 2x4 leg below = 12 + 8 = 20; clipped outside the image
    ell = rasterise_polygons([[0, 0, 6, 0, 6, 2, 2, 2, 2, 6, 0, 6]], 40, 60)
    assert ell.sum() == 20
    assert rasterise_polygons([[-5, -5, 3, -5, 3, 3, -5, 3]], 40, 60).sum() == 9
    m, (x0, y0) = rasterise_polygons([[10, 5, 14, 5, 14, 8, 10, 8]], 40, 60, crop=True)
    assert m.sum() == 12 and (x0, y0) == (10, 5)


def test_fdi_mapping():
    assert quadrant_tooth_to_fdi(1, 1) == 11 and quadrant_tooth_to_fdi(3, 6) == 36
    assert quadrant_tooth_to_fdi(8, 5) == 85
    with pytest.raises(ValueError):
        quadrant_tooth_to_fdi(5, 7)


def test_read_hierarchical(tmp_path):
    recs = read_dentex(_write(tmp_path, _doc()))
    assert [r.file_name for r in recs] == ["a.png", "b.png"]
    a = recs[0]
    assert [t.fdi for t in a.teeth] == [36, 18]
    t36 = a.teeth[0]
    assert t36.quadrant == 3 and t36.tooth == 6
    assert t36.diagnoses == ["Caries", "Periapical Lesion"]
    assert t36.box == (10.0, 5.0, 14.0, 11.0) and t36.annotation_ids == [1, 2]
    full = t36.full_mask(40, 60)
    assert full.sum() == 24 and full[5:11, 10:14].all()
    t18 = a.teeth[1]
    assert t18.diagnoses == ["Impacted"] and t18.full_mask(40, 60).sum() == 45
    lm = a.label_map()
    assert lm.dtype == np.uint8 and set(np.unique(lm)) == {0, 18, 36}
    b = recs[1].teeth[0]
    assert b.quadrant == 4 and b.fdi is None and b.mask is None and b.box == (1.5, 2.5, 4.5, 6.5)
    # no merging: two records for 36
    assert [t.fdi for t in read_dentex(_write(tmp_path, _doc()), merge_same_tooth=False)[0].teeth] == [36, 36, 18]


def test_read_plain_coco(tmp_path):
    doc = {"images": [{"id": 7, "file_name": "x.png", "height": 10, "width": 10}],
           "categories": [{"id": 1, "name": "tooth 21"}, {"id": 2, "name": "Caries"}, {"id": 3, "name": "crown"}],
           "annotations": [{"id": 1, "image_id": 7, "bbox": [0, 0, 2, 2], "category_id": 1},
                           {"id": 2, "image_id": 7, "bbox": [0, 0, 2, 2], "category_id": 2},
                           {"id": 3, "image_id": 7, "bbox": [0, 0, 2, 2], "category_id": 3}]}
    teeth = read_dentex(_write(tmp_path, doc))[0].teeth
    assert teeth[0].fdi == 21 and teeth[0].quadrant == 2
    assert teeth[1].fdi is None and teeth[1].diagnoses == ["Caries"]
    assert teeth[2].category == "crown"


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.pop("images"), "missing key 'images'"),
    (lambda d: d["annotations"][0].pop("bbox"), "misses 'bbox'"),
    (lambda d: d["annotations"][0].update(image_id=99), "image id 99"),
    (lambda d: d["annotations"][0].update(category_id_1=9), "category_id_1 9"),
    (lambda d: d["annotations"][0].update(category_id_3=17), "category_id_3 17"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "bad bbox"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), "negative bbox"),
    (lambda d: d["annotations"][0].pop("category_id_1"), "category_id_1"),
    (lambda d: d["images"][0].pop("height"), "misses 'height'"),
    (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3]]), "polygon"),
])
def test_malformed_raise_input_error(tmp_path, mutate, words):
    doc = _doc()
    mutate(doc)
    path = _write(tmp_path, doc, "bad.json")
    with pytest.raises(InputError) as e:
        read_dentex(path)
    assert "bad.json" in str(e.value) and words in str(e.value)


def test_unreadable_and_absent_images(tmp_path):
    with pytest.raises(InputError, match="not valid JSON"):
        read_dentex(_write(tmp_path, "{not json", "broken.json"))
    with pytest.raises(InputError, match="not found"):
        read_dentex(str(tmp_path / "nope.json"))
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match="b.png.*absent"):
        read_dentex(_write(tmp_path, _doc()), image_dir=str(tmp_path))


def test_round_trip_generated_dataset(tmp_path):
    from pantheon.data.dentex import load_image
    from pantheon.synth.opg import make_opg_dataset

    out = make_opg_dataset(2, seed=11, out_dir=str(tmp_path / "ds"), size=(256, 512), caries_rate=0.3)
    opgs = list(make_opg_dataset(2, seed=11, size=(256, 512), caries_rate=0.3))
    recs = read_dentex(out["json"], image_dir=out["image_dir"])
    assert len(recs) == 2
    for rec, o in zip(recs, opgs):
        assert (rec.height, rec.width) == o.image.shape[1:]
        assert [t.fdi for t in rec.teeth] == [t["fdi"] for t in o.teeth]
        for rt, gt in zip(rec.teeth, o.teeth):
            assert rt.box == tuple(float(v) for v in gt["box"])
            assert sorted(rt.diagnoses) == sorted(gt["diagnoses"])
            assert rt.extra["stage"] == gt["stage"]
            got = rt.full_mask(rec.height, rec.width)
            ref = o.full_mask(o.teeth.index(gt))
            iou = (got & ref).sum() / max((got | ref).sum(), 1)
            assert iou > 0.97, (gt["fdi"], iou)
        img = load_image(rec)
        assert np.array_equal(img.array, o.image.array)
