"""Default values shared by the pipelines, the command line, the worker and the Slicer panels.

One place for each number or name that more than one of them offers, so that a panel and the
command line start from the same setting. This module imports nothing (no torch, no numpy): the
Slicer panels (``*Lib/core.py``, the module files) read it inside the Slicer process.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- MATHENA (ToothAnalysis)
#: Detection score threshold: boxes scoring below it are not teeth. The demo detector's numbering
#: evidence was fitted at this value (pantheon.models.mathena.numbering.EVIDENCE_LOGIT_OFFSET).
MATHENA_SCORE_THRESHOLD = 0.3
#: Model cards of the bundled demo weights.
MATHENA_DEMO_DETECTOR_CARD = "mathena-demo-detector"
MATHENA_DEMO_HENA_CARD = "mathena-demo-hena"

# ---------------------------------------------------------------------------- NeoNet (PNIPredict)
#: DDIM steps of NeoGen's synthesis, for the pipeline, worker, command line and panel alike, so a
#: patch made in Slicer is the one the command line makes with the same seed (the demo NeoGen takes
#: about a second a step on a CPU; fewer steps are a choice in the panel, not a different default).
NEOGEN_DDIM_STEPS = 50
#: Most DDIM steps accepted (NeoGen's noise schedule has 1000 training steps).
NEOGEN_MAX_DDIM_STEPS = 1000
#: Most patches one synthesis request makes through the worker or the panel.
NEOGEN_MAX_PATCHES = 16
#: Model cards of the bundled demo weights, by component.
NEONET_DEMO_CARDS = {"neoseg": "neonet-demo-neoseg", "pattennet": "neonet-demo-pattennet",
                     "neogen": "neonet-demo-neogen"}

# ---------------------------------------------------------------------------- NEMESIS
#: Reconstruction mask ratios (in-plane, through-depth): the paper's main model (MAE_768_0.5).
NEMESIS_MASK_RATIO = (0.5, 0.5)
#: Organ probe: an organ is present in a superpatch when it covers more than this many voxels
#: (the paper's BTCV presence labels; ``min_voxels`` of pantheon.train.nemesis, which trains it).
PROBE_PRESENCE_MIN_VOXELS = 100
#: Organ probe training: share of cases held out to measure AUROC, and epochs.
PROBE_HOLDOUT_FRACTION = 0.25
PROBE_EPOCHS = 300
#: Model cards of the bundled demo encoder and probe.
NEMESIS_DEMO_CARD = "nemesis-demo"
NEMESIS_DEMO_PROBE_CARD = "nemesis-demo-probe"
#: Model card of the bundled FOSCU label-map generator.
FOSCU_DEMO_LABELGEN_CARD = "foscu-demo-labelgen"
