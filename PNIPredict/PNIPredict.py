"""PNIPredict: 3D Slicer module of the Pantheon extension (NeoNet perineural invasion prediction in MRI).

This file only declares the module, a thin widget, a logic stub and the self-test.
It must stay importable in Slicer's own Python without torch, MONAI or any model code:
computations run in Pantheon's worker process, never in the Slicer process.
"""

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


#
# PNIPredict
#


class PNIPredict(ScriptedLoadableModule):
    """Module declaration (title, category, help, acknowledgement)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PNI Prediction (NeoNet)")
        self.parent.categories = ["Pantheon"]
        self.parent.dependencies = []
        self.parent.contributors = ["Pantheon developers"]
        self.parent.helpText = _("""
<p>NeoNet, prediction of perineural invasion (PNI) in cholangiocarcinoma from 3D MRI with generation-driven classification.</p>
<p>Paper: NeoNet: An End-to-End 3D MRI-Based Deep Learning Framework for Non-Invasive Prediction of Perineural Invasion via Generation-Driven Classification. arXiv:2603.29449.
<a href="https://arxiv.org/abs/2603.29449">https://arxiv.org/abs/2603.29449</a></p>
<p>No official weights are published; Pantheon ships demo weights trained on synthetic phantoms only, which are not a clinical model.</p>
<p>For research use only; not for clinical decisions.</p>
<p>The analysis panel is coming in a later release.</p>
""")
        self.parent.acknowledgementText = _("""
<p>PNIPredict is part of Pantheon, a 3D Slicer extension for the NEMESIS, MATHENA and NeoNet research
models. The model and method are the work of the authors of the paper cited in the help text;
Pantheon re-implements them for research use. Built on 3D Slicer, PyTorch and MONAI.</p>
""")


#
# PNIPredictWidget
#


class PNIPredictWidget(ScriptedLoadableModuleWidget):
    """Thin panel: loads Resources/UI/PNIPredict.ui. The full panel comes in a later release."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.ui = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PNIPredict.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PNIPredictLogic()


#
# PNIPredictLogic
#


class PNIPredictLogic(ScriptedLoadableModuleLogic):
    """Logic stub. Processing will be delegated to Pantheon's worker process (no torch here)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)


#
# PNIPredictTest
#


class PNIPredictTest(ScriptedLoadableModuleTest):
    """Self-test, run by CTest (slicer_add_python_unittest) and from the Reload & Test button."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LogicInstantiates()

    def test_LogicInstantiates(self):
        self.delayDisplay("Starting the test")
        logic = PNIPredictLogic()
        self.assertIsInstance(logic, ScriptedLoadableModuleLogic)
        self.assertEqual(logic.moduleName, "PNIPredict")
        self.delayDisplay("Test passed")
