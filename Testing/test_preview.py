"""The preview a person looks at: the grey window fits the modality, every heatmap has a colour
bar, label maps are outlined, the chosen point is marked, the slices go through what matters, and
the title (model, key numbers, the clinical-use warning) fits the picture."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pantheon.io import Volume
from pantheon.preview import CT_WINDOW, build_preview, display_window, save_preview
from pantheon.results import HeatmapOutput, LabelOutput, Result, Segment

pytest.importorskip("matplotlib")


def _volume(array, spacing=(2.0, 2.0, 4.0)):
    return Volume(np.asarray(array, np.float32), spacing, (0.0, 0.0, 0.0), np.eye(3))


def _ct():
    a = np.full((20, 32, 32), -1000.0, np.float32)
    a[:, 6:26, 6:26] = 40.0  # soft tissue
    a[:, 14:18, 14:18] = 700.0  # bone
    return _volume(a)


def _mri():
    rng = np.random.default_rng(0)
    a = rng.normal(30, 5, (20, 32, 32)).astype(np.float32)
    a[:, 6:26, 6:26] = 600 + rng.normal(0, 20, (20, 20, 20))
    return _volume(a)


def _fits(fig, artist) -> bool:
    fig.canvas.draw()
    box = artist.get_window_extent(fig.canvas.get_renderer())
    width, height = fig.canvas.get_width_height()
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height


def test_window_follows_the_modality():
    assert display_window(_ct()) == (CT_WINDOW, "CT soft tissue")
    (lo, hi), kind = display_window(_mri())
    assert kind == "1st-99th percentile" and 450 < lo < 600 < hi < 700  # the body, not the background


def test_every_heatmap_has_a_colour_bar_and_the_title_fits():
    ct = _ct()
    res = Result()
    for organ in ("liver", "spleen", "aorta"):
        res.heatmaps[organ] = HeatmapOutput(ct.with_array(np.linspace(0, 1, ct.array.size).reshape(ct.shape)),
                                            "inferno", (0.0, 1.0), f"Probability that the {organ} is present")
    res.notes = {"model": "NEMESIS (arXiv 2604.01612)", "weights": "nemesis-demo",
                 "warning": "Demo weights trained on synthetic phantoms: not for clinical use."}
    fig, info = build_preview(ct, res)
    assert info["colorbars"] == 3 and info["panels"] == ["input", "liver", "spleen", "aorta"]
    assert info["window_kind"] == "CT soft tissue"
    assert "not for clinical use" in info["title"] and _fits(fig, fig._suptitle)
    # the middle of the strongest map (its maximum is at the last voxel)
    assert info["centre_from"] == "map maximum"


def test_labels_are_outlined_the_number_is_in_the_title_and_the_point_marked(tmp_path):
    mri = _mri()
    lab = np.zeros(mri.shape, np.uint8)
    lab[2:18, 8:24, 8:24] = 1
    lab[8:12, 12:16, 18:22] = 2
    res = Result()
    res.labels["tumour"] = LabelOutput(mri.with_array(lab), [Segment(1, "liver", (0.9, 0.5, 0.3)),
                                                             Segment(2, "tumour", (0.8, 0.2, 0.55))])
    res.heatmaps["pni_attention"] = HeatmapOutput(mri.with_array(np.zeros(mri.shape, np.float32)), "inferno",
                                                  (0.0, 1.0), "attention")
    res.scalars = {"pni_probability": 0.7134, "tumour_volume_ml": 40.33}
    res.notes = {"model": "NeoNet (arXiv 2603.29449)", "warning": "Demo weights: not for clinical use."}
    fig, info = build_preview(mri, res)
    assert info["window_kind"] == "1st-99th percentile"
    assert "PNI probability 0.71" in info["title"] and "40.3 ml" in info["title"]
    assert info["centre_from"] == "label"  # the slices go through the labelled structures
    input_axes = fig.axes[0]
    assert len(input_axes.collections) >= 2  # liver and tumour outlines
    res.notes["point_lps"] = json.dumps([20.0, 30.0, 40.0])
    fig, info = build_preview(mri, res)
    assert info["centre_from"] == "point" and np.allclose(info["centre"], [20.0, 30.0, 40.0])
    assert any(line.get_marker() == "+" for line in fig.axes[0].lines)
    path = save_preview(mri, res, tmp_path / "preview.png")
    assert path.stat().st_size > 10_000
