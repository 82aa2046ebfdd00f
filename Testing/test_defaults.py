"""pantheon.defaults: one value per shared setting, read by the pipelines, the command line, the
worker and the Slicer panels alike, from a module the Slicer process can import (nothing heavy)."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

from slicer_standins import module_lib

from pantheon import defaults

REPO = Path(__file__).resolve().parents[1]


def test_imports_nothing():
    code = ("import sys; before = set(sys.modules); import pantheon.defaults; "
            "print(sorted(m for m in set(sys.modules) - before if not m.startswith('pantheon')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    new = eval(out.stdout)
    assert not [m for m in new if m.split(".")[0] in ("numpy", "torch", "monai", "SimpleITK", "scipy")], new


def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


def test_panels_offer_the_pipelines_defaults():
    from pantheon.pipelines import mathena, nemesis, neonet
    pni = module_lib(REPO / "PNIPredict", "PNIPredictLib")
    tooth = module_lib(REPO / "ToothAnalysis", "ToothAnalysisLib")
    nem = module_lib(REPO / "NemesisSlicer", "NemesisSlicerLib")

    assert pni.DEFAULT_STEPS == _default(neonet.synthesize, "steps") == defaults.NEOGEN_DDIM_STEPS == 50
    assert pni.MAX_STEPS == neonet.MAX_STEPS
    assert pni.DEMO_CARDS == {"neoseg": neonet.DEMO_NEOSEG_CARD, "neogen": neonet.DEMO_NEOGEN_CARD,
                              "pattennet": neonet.DEMO_PATTENNET_CARD}
    ui = (REPO / "PNIPredict" / "Resources" / "UI" / "PNIPredict.ui").read_text()
    spin = re.search(r'name="synthesisStepsSpinBox">.*?<property name="value">\s*<number>(\d+)</number>', ui, re.S)
    assert int(spin.group(1)) == pni.DEFAULT_STEPS

    assert tooth.DEFAULT_SCORE_THRESHOLD == _default(mathena.analyze, "score_thresh") == 0.3
    assert (tooth.DEMO_DETECTOR_CARD, tooth.DEMO_HENA_CARD) == (mathena.DEMO_DETECTOR_CARD, mathena.DEMO_HENA_CARD)

    assert tuple(nem.DEFAULT_MASK_RATIO) == tuple(_default(nemesis.reconstruct, "mask_ratio")) == (0.5, 0.5)
    assert (nem.DEMO_CARD, nem.DEMO_PROBE_CARD) == (nemesis.DEMO_ENCODER_CARD, nemesis.DEMO_PROBE_CARD)


def test_worker_tasks_use_the_same_defaults():
    from pantheon.models.neonet import tasks as neonet_tasks
    assert neonet_tasks.MAX_STEPS == defaults.NEOGEN_MAX_DDIM_STEPS
    assert neonet_tasks.MAX_PATCHES == defaults.NEOGEN_MAX_PATCHES
