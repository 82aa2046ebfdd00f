"""Load Pantheon's modules in the real-Qt harness from one folder, in a Python where ``pantheon``
is importable only the way Slicer would find it, open every panel, and run ToothAnalysis's Analyze
once.

Run with ``python -S`` (no site: the editable install's import hook, a .pth file, is not
installed), so that the test process's own ``pantheon`` cannot leak in::

    python -S Testing/qt_harness/isolated.py SITE_PACKAGES MODULE[,MODULE ...] MODULE_FOLDER [MODULE_FOLDER ...]

MODULE names the modules to look for (the test derives them from the model plug-ins, so a new
model's module is covered without editing this file). Each MODULE_FOLDER is put on ``sys.path``
as Slicer does (only the module's own folder: the install tree's qt-scripted-modules, or a source
module folder). The last stdout line is a JSON report: where ``pantheon`` came from, which file
each demo card resolved to, which modules loaded and which panels opened, what landed in the scene.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv) -> int:
    site_packages, names, folders = argv[0], argv[1].split(","), [Path(f) for f in argv[2:]]
    sys.path.append(site_packages)  # the third-party packages, without running their .pth files
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Testing/, for the harness itself
    from qt_harness.application import SlicerHarness

    harness = SlicerHarness().install()
    report = {"pantheon_importable_before": _importable("pantheon")}
    for folder in folders:
        for name in names:
            if (folder / f"{name}.py").is_file() or (folder / name / f"{name}.py").is_file():
                module_dir = folder if (folder / f"{name}.py").is_file() else folder / name
                harness.load_module(module_dir, name)
    harness.finish_startup()
    import pantheon
    from pantheon.registry import list_cards, resolve_weights
    report["pantheon"] = str(Path(pantheon.__file__).resolve().parent)
    report["weights"] = {card.id: str(resolve_weights(card)) for card in list_cards() if card.demo}
    report["modules"] = sorted(harness.app._h_module_manager.modulesNames())
    report["panels"] = {}  # module -> the class of the widget its panel shows
    for name in report["modules"]:
        report["panels"][name] = type(harness.show_module(name)).__name__

    import slicer

    from pantheon.synth.opg import make_opg
    widget = harness.show_module("ToothAnalysis")
    array, ijk_to_ras = make_opg(2, size=(256, 512)).image.to_slicer()
    node = slicer.util.addVolumeFromArray(array, ijkToRAS=ijk_to_ras, name="OPG")
    widget.ui.inputVolumeSelector._h_choose(node)
    widget.ui.applyButton.click()
    harness.wait_until(lambda: widget.task is None, 600, "the analysis")
    report["status"] = widget.ui.statusLabel.text
    report["error"] = widget.ui.errorLabel.text
    report["rows"] = widget.ui.findingsTableWidget.rowCount
    # the Slicer side of the panel never imports the deep-learning stack (the worker does)
    report["heavy"] = sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "monai", "safetensors"))
    for name in report["modules"]:
        harness.unload_module(name)
    harness.uninstall()
    print(json.dumps(report))
    return 0


def _importable(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
