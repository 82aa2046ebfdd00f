"""benchmarks/synthesis_paper_figures.py (issue 17 section 4) end to end at toy size: the tables it
prints and the JSON it writes hold together (gains are differences of the two arms, every run of
every net and seed is there, the sets have the sizes asked for)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the benchmarks print non-ASCII (dB, "Fréchet"); CI may run under an ASCII locale
UTF8_ENV = {**os.environ, "PYTHONIOENCODING": "utf-8"}


@pytest.mark.slow
def test_paper_figures_at_toy_size(tmp_path):
    out = tmp_path / "figures.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "synthesis_paper_figures.py"), "--tiny",
                          "--threads", "1", "--out", str(out)], capture_output=True, encoding="utf-8", env=UTF8_ENV,
                         cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    f = json.loads(out.read_text())
    fid = f["fidelity_neoseg"]
    assert fid["paired"] and fid["n_real"] == fid["n_synthetic"] == 2
    assert fid["frechet_distance"] >= 0 and f["fidelity_random"]["frechet_distance"] >= 0
    assert 0 < fid["ms_ssim_fidelity"] <= 1 and set(fid["label_dice_synthetic"]) >= {"liver", "vessels", "hcc"}
    for source in ("lldm", "foscu"):
        aug = f[f"augmentation_{source}"]
        assert (aug["n_real"], aug["n_synthetic"], aug["n_held_out"]) == (2, 2, 2)
        assert [(r["net"], r["seed"]) for r in aug["runs"]] == [("unet", 0), ("unet", 1)]
        for r in aug["runs"]:
            assert math.isclose(r["gain"]["liver"], r["real+synthetic"]["liver"] - r["real"]["liver"], abs_tol=1e-12)
        assert math.isclose(aug["gain"]["liver"]["mean"], sum(r["gain"]["liver"] for r in aug["runs"]) / 2,
                            abs_tol=1e-12)
    # 2 held-out volumes, 2 + 2 synthetic cases, each timed
    assert f["ddim_seconds_per_volume"]["n"] == 6 and f["peak_rss_gb"] > 0
    assert "### Augmentation with foscu" in run.stdout and "Gain, mean [95 % CI]" in run.stdout
    assert run.stdout.count("unet seed 1: HCC Dice ") == 2  # each trained pair of arms reported as it ends
    # the augmentation alone (the fidelity tables from another run), as the protocol's runs are split
    out = tmp_path / "augmentation.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "synthesis_paper_figures.py"), "--tiny",
                          "--threads", "1", "--sources", "lldm", "--skip-fidelity", "--out", str(out)],
                         capture_output=True, encoding="utf-8", env=UTF8_ENV, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    f = json.loads(out.read_text())
    assert "fidelity_neoseg" not in f and "augmentation_foscu" not in f and len(f["augmentation_lldm"]["runs"]) == 2
    assert f["ddim_seconds_per_volume"]["n"] == 2 and "fidelity on the held-out" not in run.stdout
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "synthesis_paper_figures.py"), "--sources",
                          "gan"], capture_output=True, encoding="utf-8", env=UTF8_ENV, cwd=REPO, timeout=120)
    assert bad.returncode == 2
    assert "argument --sources: use lldm, foscu or both (comma-separated), got 'gan'" in bad.stderr
