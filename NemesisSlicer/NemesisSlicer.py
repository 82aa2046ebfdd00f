"""NemesisSlicer: 3D Slicer module of the Pantheon extension (NEMESIS CT foundation model).

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
# NemesisSlicer
#


class NemesisSlicer(ScriptedLoadableModule):
    """Module declaration (title, category, help, acknowledgement)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("NEMESIS")
        self.parent.categories = ["Pantheon"]
        self.parent.dependencies = []
        self.parent.contributors = ["Pantheon developers"]
        self.parent.helpText = _("""
<p>NEMESIS, a self-supervised masked-autoencoder foundation model for 3D CT (superpatch encoder features, reconstruction and downstream heads).</p>
<p>Paper: NEMESIS: Noise-suppressed Efficient MAE with Enhanced Superpatch Integration Strategy. arXiv:2604.01612; IEEE AICAS 2026.
<a href="https://arxiv.org/abs/2604.01612">https://arxiv.org/abs/2604.01612</a></p>
<p>The published NEMESIS MAE checkpoints can be used; small demo weights trained on synthetic phantoms are also provided and are labelled as such.</p>
<p>For research use only; not for clinical decisions.</p>
<p>The analysis panel is coming in a later release.</p>
""")
        self.parent.acknowledgementText = _("""
<p>NemesisSlicer is part of Pantheon, a 3D Slicer extension for the NEMESIS, MATHENA and NeoNet research
models. The model and method are the work of the authors of the paper cited in the help text;
Pantheon re-implements them for research use. Built on 3D Slicer, PyTorch and MONAI.</p>
""")


#
# NemesisSlicerWidget
#


class NemesisSlicerWidget(ScriptedLoadableModuleWidget):
    """Thin panel: loads Resources/UI/NemesisSlicer.ui. The full panel comes in a later release."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.ui = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NemesisSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NemesisSlicerLogic()


#
# NemesisSlicerLogic
#


class NemesisSlicerLogic(ScriptedLoadableModuleLogic):
    """Logic stub. Processing will be delegated to Pantheon's worker process (no torch here)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)


#
# NemesisSlicerTest
#


class NemesisSlicerTest(ScriptedLoadableModuleTest):
    """Self-test, run by CTest (slicer_add_python_unittest) and from the Reload & Test button."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LogicInstantiates()

    def test_LogicInstantiates(self):
        self.delayDisplay("Starting the test")
        logic = NemesisSlicerLogic()
        self.assertIsInstance(logic, ScriptedLoadableModuleLogic)
        self.assertEqual(logic.moduleName, "NemesisSlicer")
        self.delayDisplay("Test passed")
