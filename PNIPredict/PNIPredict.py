"""PNIPredict: 3D Slicer module of the Pantheon extension (NeoNet perineural invasion prediction in MRI).

The Slicer process never imports torch, MONAI or model code: NeoSeg, PattenNet and NeoGen run in
Pantheon's long-lived worker process (``pantheon.worker.client``, pipelines ``pni.predict`` and
``pni.synthesize``), which keeps loaded weights between clicks. Scene conversion goes through
``pantheon.slicerbridge``; GUI-free helpers live in ``PNIPredictLib``.

Scripting (Slicer's Python console), blocking::

    logic = slicer.util.getModuleLogic("PNIPredict")   # or PNIPredictLogic()
    result = logic.process(mriNode)                      # NeoSeg finds the tumour
    result = logic.process(mriNode, segmentationNode, "tumour")   # your tumour segment
    result.scalars["pni_probability"], result.nodes["tumour"], result.nodes["pni_attention"],
    result.nodes["crop_box"]                             # the markups ROI of the crop
    patch = logic.synthesize(segmentationNode, mriNode, steps=50, seed=0, pni=1)
"""

import logging
import os
import sys
from typing import Annotated, Optional

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _addPantheonPackageToPath():
    """Slicer puts only this module's folder on sys.path. The built extension installs the pantheon
    package beside the module; in a source checkout (module folders added to the additional module
    paths) it is one folder up."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(folder, "pantheon", "__init__.py")):
            if folder not in sys.path:
                sys.path.insert(1, folder)  # after the module's own folder
            return


_addPantheonPackageToPath()

from PNIPredictLib import core as lib  # noqa: E402 - needs the path set up above

from pantheon.slicerbridge.panel import PanelWidgetMixin, WorkerLogicMixin, selftest_skip_reason  # noqa: E402 - needs the path set up above

log = logging.getLogger("PNIPredict")

PROBABILITY_ATTRIBUTE = "Pantheon.PNIProbability"


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
<p>NeoNet, prediction of perineural invasion (PNI) in cholangiocarcinoma from 3D MRI with """
"""generation-driven classification.</p>
<p>Paper: NeoNet: An End-to-End 3D MRI-Based Deep Learning Framework for Non-Invasive Prediction of """
"""Perineural Invasion via Generation-Driven Classification. arXiv:2603.29449.
<a href="https://arxiv.org/abs/2603.29449">https://arxiv.org/abs/2603.29449</a></p>
<p><b>Predict PNI</b>: choose a hepatobiliary-phase liver MRI and, optionally, your tumour segment (otherwise
NeoSeg segments liver and tumour). The crop around the tumour (TLCR) is classified by PattenNet. You get the
PNI probability (shown large, with its caveats), the tumour segmentation, PattenNet's attention heat map over
the MRI (inside the crop only; where the classifier looked, not a map of invasion) and the crop box as a
markups ROI. A re-run updates the same nodes.</p>
<p><b>Synthesize</b>: pick a segmentation with liver/tumour segments and a reference volume; NeoGen (latent
diffusion + ControlNet) returns a synthetic MR patch on the reference grid. Same seed, same patch.</p>
<p>Computation runs in a separate worker process; its Python needs PyTorch and MONAI, which the module offers to
install on first use (never silently).</p>
<p>No official weights are published. Pantheon ships <b>demo weights trained on synthetic phantoms only</b>:
their probabilities are not a clinical model's and the 0.5 threshold is not calibrated. Weights files you
trained (<code>pantheon pni train</code>) can be chosen under Weights and device.</p>
<p>For research use only; not for clinical decisions.</p>
""")
        self.parent.acknowledgementText = _("""
<p>PNIPredict is part of Pantheon, a 3D Slicer extension for the NEMESIS, MATHENA and NeoNet research
models. The model and method are the work of the authors of the paper cited in the help text;
Pantheon re-implements them for research use. Built on 3D Slicer, PyTorch and MONAI.</p>
""")
        # the synthetic cases in Sample Data (category "Pantheon"); idempotent, so each module may ask
        slicer.app.connect("startupCompleted()", registerSampleData)



def registerSampleData():
    """Add Pantheon's synthetic sample cases (CT, panoramic X-ray, liver MRI) to Slicer's Sample Data."""
    from pantheon.slicerbridge.sampledata import register_sample_data
    register_sample_data()


#
# Parameter node
#


@parameterNodeWrapper
class PNIPredictParameterNode:
    """Panel state, saved with the scene. Widgets bind through their SlicerParameterName property;
    the tumour segment selector, weights radio buttons, paths and device are synced in code."""

    inputVolume: vtkMRMLScalarVolumeNode
    useTumourSegmentation: Annotated[bool, Default(False)]
    tumourSegmentation: vtkMRMLSegmentationNode
    tumourSegmentId: str
    weightsChoice: Annotated[str, Choice(list(lib.WEIGHTS_CHOICES)), Default(lib.WEIGHTS_DEMO)]
    neosegPath: str
    pattennetPath: str
    neogenPath: str
    device: Annotated[str, Default("auto")]  # auto, cpu or a GPU (cuda, cuda:N): checked by lib.build_params
    workerPython: str  # empty: Slicer's own Python
    showHeatmap: Annotated[bool, Default(True)]
    synthesisSegmentation: vtkMRMLSegmentationNode
    synthesisReference: vtkMRMLScalarVolumeNode
    synthesisSteps: Annotated[int, WithinRange(1, lib.MAX_STEPS), Default(lib.DEFAULT_STEPS)]
    synthesisSeed: Annotated[int, WithinRange(0, 2147483647), Default(0)]
    synthesisPNIPositive: Annotated[bool, Default(True)]


#
# PNIPredictWidget
#


class PNIPredictWidget(PanelWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin panel: UI wiring and parameter-node sync. The Apply/Cancel state machine, polling, log,
    errors and worker settings come from :class:`pantheon.slicerbridge.panel.PanelWidgetMixin`."""

    panelTitle = "PNI Prediction"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.initPanelState()
        self.predictionTexts = {}  # input node ID -> (probability, caveats, crop box) of its last prediction

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PNIPredict.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PNIPredictLogic()
        self.logic.logCallback = self.appendLog

        self.actionButtons = {"predict": self.ui.applyButton, "synthesize": self.ui.synthesizeButton}
        self.connectPanel(qt.QTimer(), slicer.mrmlScene, qt.QTimer.singleShot)
        self.connectSettings(lib.DEVICES,
                             weights={lib.WEIGHTS_DEMO: self.ui.weightsDemoRadioButton,
                                      lib.WEIGHTS_FILE: self.ui.weightsFileRadioButton},
                             paths={"neosegPath": self.ui.neosegPathLineEdit,
                                    "pattennetPath": self.ui.pattennetPathLineEdit,
                                    "neogenPath": self.ui.neogenPathLineEdit})

        # the segment selector is synced in code; the bound widgets (input, check box, synthesis
        # selectors) are followed through the parameter node (parameterNodeChanged)
        self.ui.tumourSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onTumourSegmentChanged)
        self.ui.tumourSegmentSelector.connect("currentSegmentChanged(QString)", self.onTumourSegmentChanged)

        self.showError("")
        self.initializeParameterNode()
        self.updateButtons()

    # ------------------------------------------------------------------ parameter node
    def setParameterNode(self, inputParameterNode) -> None:
        # setCurrentNode below may change the segment ID through the selector's signal
        segmentId = inputParameterNode.tumourSegmentId if inputParameterNode is not None else ""
        self._followedInputID = None
        if not self.bindParameterNode(inputParameterNode):
            return
        self.syncSettingsWidgets()
        self.ui.tumourSegmentSelector.setCurrentNode(self._parameterNode.tumourSegmentation)
        if segmentId:
            self.ui.tumourSegmentSelector.setCurrentSegmentID(segmentId)
        self.onParameterNodeModified()

    def parameterNodeChanged(self) -> None:
        """The synthesis reference follows the chosen MRI unless the user picked another reference;
        the tumour segment selector is usable only with "use my tumour segmentation"."""
        p = self._parameterNode
        node = p.inputVolume
        nodeID = node.GetID() if node is not None else None
        followed = getattr(self, "_followedInputID", None)
        if nodeID != followed:
            reference = p.synthesisReference
            if node is not None and (reference is None or reference.GetID() == followed):
                p.synthesisReference = node
            self._followedInputID = nodeID
            if self.task is None or self.task.action != "predict":
                self.showPrediction(node)
        self.ui.tumourSegmentSelector.enabled = bool(p.useTumourSegmentation)

    def onTumourSegmentChanged(self, *args) -> None:
        p = self._parameterNode
        if p is None:
            return
        p.tumourSegmentation = self.ui.tumourSegmentSelector.currentNode()
        p.tumourSegmentId = self.ui.tumourSegmentSelector.currentSegmentID() or ""

    # ------------------------------------------------------------------ actions (PanelWidgetMixin hooks)
    def _canRun(self, action) -> bool:
        p = self._parameterNode
        if p is None:
            return False
        if action == "synthesize":
            return bool(p.synthesisSegmentation and p.synthesisReference)
        if p.useTumourSegmentation and not (p.tumourSegmentation and p.tumourSegmentId):
            return False
        return bool(p.inputVolume)

    def weightsArgument(self) -> dict:
        p = self._parameterNode
        return self.logic.weightsArgument(p.weightsChoice, neoseg=p.neosegPath, pattennet=p.pattennetPath,
                                          neogen=p.neogenPath)

    def startAction(self, action):
        p = self._parameterNode
        common = dict(weights=self.weightsArgument(), device=p.device or "auto")
        if action == "predict":
            useMine = bool(p.useTumourSegmentation)
            segmentation = p.tumourSegmentation if useMine else None
            segmentId = (p.tumourSegmentId or None) if useMine else None
            task = self.logic.submit(p.inputVolume, segmentation, segmentId, show=p.showHeatmap, **common)
            self.ui.probabilityLabel.text = _("PNI probability: computing...")
            return task
        if action == "synthesize":
            return self.logic.submitSynthesis(p.synthesisSegmentation, p.synthesisReference, steps=p.synthesisSteps,
                                              seed=p.synthesisSeed, pni=1 if p.synthesisPNIPositive else 0, **common)
        raise ValueError(f"unknown action {action}")

    def onTaskDone(self, task) -> None:
        if task.action != "predict":
            return
        imported = task.imported
        texts = (lib.prediction_text(imported), lib.caveats_text(imported),
                 lib.crop_box_text(lib.crop_box_of(imported)))
        self.predictionTexts[task.context.GetID()] = texts
        p = self._parameterNode
        if p is not None and p.inputVolume is task.context:
            self.showPrediction(task.context)
        tumour = imported.nodes.get("tumour")
        p = self._parameterNode
        if tumour is not None and p is not None:
            # the synthesis segmentation follows the newest prediction unless the user chose their own
            current = p.synthesisSegmentation
            if current is None or current.GetAttribute("Pantheon.Output") is not None:
                p.synthesisSegmentation = tumour

    def noteLine(self, key, value):
        if key == "crop_box":  # JSON for the scene; words for the log
            return lib.crop_box_text(lib.crop_box_of({"notes": {key: value}}))
        return PanelWidgetMixin.noteLine(self, key, value)

    def onTaskEnded(self, task) -> None:
        if task.action == "predict" and task.state != "done":
            self.ui.probabilityLabel.text = _("PNI probability: not computed")

    def showPrediction(self, inputNode) -> None:
        """The probability, caveats and crop box of ``inputNode``'s last prediction (or none yet)."""
        texts = self.predictionTexts.get(inputNode.GetID()) if inputNode is not None else None
        if texts is None:
            texts = (_("PNI probability: not computed yet"),
                     _("Research software: not validated for clinical use."), "")
        self.ui.probabilityLabel.text = lib.probability_html(texts[0])
        self.ui.caveatsLabel.text, self.ui.cropBoxLabel.text = texts[1], texts[2]

    def onSceneStartClose(self, caller=None, event=None) -> None:
        PanelWidgetMixin.onSceneStartClose(self, caller, event)
        self.predictionTexts = {}  # node IDs are reused by the next scene
        self.showPrediction(None)


#
# PNIPredictLogic
#


class PNIPredictLogic(WorkerLogicMixin, ScriptedLoadableModuleLogic):
    """GUI-free NeoNet logic; usable from the Python console, scripts and tests.

    Owns one long-lived worker client (created on first use, never at import; see
    :class:`pantheon.slicerbridge.panel.WorkerLogicMixin`). ``submit`` / ``submitSynthesis`` are
    non-blocking (they return a task to poll from the GUI thread); ``process`` / ``synthesize`` block.
    """

    modelName = "NeoNet"
    logger = log

    def __init__(self, workerPython: Optional[str] = None, clientFactory=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.initWorker(workerPython, clientFactory)
        self.lastResult = None

    def getParameterNode(self):
        return PNIPredictParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ parameters
    def weightsArgument(self, choice=lib.WEIGHTS_DEMO, neoseg=None, pattennet=None, neogen=None) -> dict:
        """UI weights choice -> worker parameters (model-card ids or weights files per component)."""
        return lib.weights_params(choice, {"neoseg": neoseg, "pattennet": pattennet, "neogen": neogen})

    def buildParams(self, action, **kw) -> dict:
        return lib.build_params(action, **kw)

    # ------------------------------------------------------------------ masks
    @staticmethod
    def _segmentNames(segmentationNode) -> dict:
        seg = segmentationNode.GetSegmentation()
        return {seg.GetNthSegmentID(i): seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())}

    def _segmentName(self, segmentationNode, segmentId, what) -> str:
        names = self._segmentNames(segmentationNode)
        if segmentId not in names:
            raise ValueError(f"The {what} segment {segmentId!r} is not in {segmentationNode.GetName()!r}.")
        from pantheon.slicerbridge.terms import normalize_name
        name = names[segmentId]
        same = [i for i, n in names.items() if normalize_name(n) == normalize_name(name)]
        if len(same) > 1:
            raise ValueError(f"Several segments of {segmentationNode.GetName()!r} are named {name!r}; "
                             "rename them so the tumour segment is unique.")
        return name

    def exportTumourMask(self, segmentationNode, segmentId, referenceVolumeNode, path) -> str:
        """Write the chosen tumour segment as a binary label map on the reference volume's grid."""
        from pantheon import slicerbridge as bridge
        if segmentationNode is None:
            raise ValueError("Choose the tumour segmentation.")
        if not segmentId:
            names = self._segmentNames(segmentationNode)
            if len(names) != 1:
                raise ValueError("Choose the tumour segment (the segmentation has several segments).")
            segmentId = next(iter(names))
        name = self._segmentName(segmentationNode, segmentId, "tumour")
        return str(bridge.export_segmentation(segmentationNode, referenceVolumeNode, path,
                                              label_values=lib.tumour_label_values(name)))

    def exportSynthesisMask(self, segmentationNode, referenceVolumeNode, path, tumourSegmentId=None,
                            liverSegmentId=None) -> str:
        """Write liver (1) and tumour (2) segments as one label map on the reference volume's grid."""
        from pantheon import slicerbridge as bridge
        if segmentationNode is None:
            raise ValueError("Choose a segmentation with liver and/or tumour segments.")
        tumour = self._segmentName(segmentationNode, tumourSegmentId, "tumour") if tumourSegmentId else None
        liver = self._segmentName(segmentationNode, liverSegmentId, "liver") if liverSegmentId else None
        values = lib.synthesis_label_values(tumour, liver)
        seg = segmentationNode.GetSegmentation()
        segments = [(seg.GetNthSegmentID(i), seg.GetNthSegment(i)) for i in range(seg.GetNumberOfSegments())]
        chosen = bridge.resolve_label_values(
            [(sid, s.GetName(), bridge.segment_terminology(s)) for sid, s in segments], values)
        if not chosen:
            names = ", ".join(repr(n) for n in self._segmentNames(segmentationNode).values()) or "none"
            raise ValueError(f"No liver or tumour segment found in {segmentationNode.GetName()!r} (segments: "
                             f"{names}); name them 'liver' / 'tumour' or choose them.")
        if set(chosen.values()) == {lib.LIVER_VALUE}:
            raise ValueError("Synthesis needs a tumour segment: NeoGen reads a mask with a single label (here "
                             "only the liver) as the tumour.")
        return str(bridge.export_segmentation(segmentationNode, referenceVolumeNode, path, label_values=values))

    # ------------------------------------------------------------------ prediction
    def submit(self, inputVolumeNode, tumourSegmentationNode=None, tumourSegmentId=None, params=None, show=True,
               **kw):
        """Start PNI prediction on ``inputVolumeNode`` in the worker; returns a task to poll.

        With ``tumourSegmentationNode`` (+ ``tumourSegmentId``; optional when it has one segment) that
        segment is the tumour and NeoSeg is skipped.
        """
        if inputVolumeNode is None:
            raise ValueError("Choose an input MRI.")
        full = dict(params) if params is not None else self.buildParams("predict", **kw)
        from pantheon import slicerbridge as bridge

        def writeInputs(folder):
            inputs = {"volume": str(bridge.export_volume(inputVolumeNode, os.path.join(folder, "input.nrrd")))}
            if tumourSegmentationNode is not None:
                inputs["tumour_mask"] = self.exportTumourMask(tumourSegmentationNode, tumourSegmentId,
                                                              inputVolumeNode, os.path.join(folder, "tumour.nrrd"))
            return inputs

        def after(imported):
            tumour = imported.nodes.get("tumour")
            if tumour is not None and "pni_probability" in imported.scalars:
                tumour.SetAttribute(PROBABILITY_ATTRIBUTE, f"{float(imported.scalars['pni_probability']):.6g}")
            self.lastResult = imported

        return self._submitJob("predict", inputVolumeNode, full, writeInputs, importShow=show, after=after,
                               protect=[tumourSegmentationNode])

    def _submitJob(self, action, node, params, writeInputs, importShow=True, after=None, protect=()):
        """Stage the inputs in a private folder (``writeInputs(folder) -> {name: path}``, removed when
        the task ends), submit ``action``; when it is done, import the result under ``node`` (a re-run
        reuses that input's output nodes) with its crop box as a markups ROI, then call ``after``."""
        from pantheon import slicerbridge as bridge
        tmp = lib.private_temp_dir(f"pni-{action}-")
        try:
            inputs = writeInputs(tmp)
        except Exception:
            lib.remove_tree(tmp)
            raise

        def onResult(result):
            imported = bridge.import_result(result, node, action, show=importShow, protect=protect)
            box = lib.crop_box_of(result)
            if box is not None:
                imported.nodes["crop_box"] = bridge.import_roi(box, node, action)
            if after is not None:
                after(imported)
            return imported

        return self.startJob(action, lib.ACTIONS[action], params, inputs, tmp, onResult, context=node)

    def process(self, inputVolumeNode, tumourSegmentationNode=None, tumourSegmentId=None, progress=None, cancel=None,
                timeout=None, show=True, params=None, **kw):
        """Blocking prediction: export, run in the worker, import; returns the ImportedResult (nodes
        ``tumour``, ``pni_attention``, ``crop_box``; scalars ``pni_probability``, ``tumour_volume_ml``)."""
        task = self.submit(inputVolumeNode, tumourSegmentationNode, tumourSegmentId, params=params, show=show, **kw)
        return self.wait(task, progress, cancel, timeout)

    # ------------------------------------------------------------------ synthesis
    def submitSynthesis(self, segmentationNode, referenceVolumeNode, tumourSegmentId=None, liverSegmentId=None,
                        params=None, show=True, **kw):
        """Start NeoGen synthesis for the anatomy in ``segmentationNode``; returns a task to poll.
        The patch comes back as a volume on ``referenceVolumeNode``'s grid (zero outside the crop)."""
        if referenceVolumeNode is None:
            raise ValueError("Choose a reference volume (the grid the patch is made on).")
        full = dict(params) if params is not None else self.buildParams("synthesize", **kw)

        def writeInputs(folder):
            path = os.path.join(folder, "mask.nrrd")
            return {"mask": self.exportSynthesisMask(segmentationNode, referenceVolumeNode, path, tumourSegmentId,
                                                     liverSegmentId)}

        def after(imported):
            patch = next((n for n in imported.nodes.values() if n.IsA("vtkMRMLScalarVolumeNode")), None)
            if show and patch is not None and getattr(slicer, "app", None) is not None:
                slicer.util.setSliceViewerLayers(background=patch, foreground=referenceVolumeNode,
                                                 foregroundOpacity=0.0)

        return self._submitJob("synthesize", referenceVolumeNode, full, writeInputs, importShow=False, after=after,
                               protect=[segmentationNode])

    def synthesize(self, segmentationNode, referenceVolumeNode, tumourSegmentId=None, liverSegmentId=None,
                   progress=None, cancel=None, timeout=None, show=True, params=None, **kw):
        """Blocking synthesis; returns the ImportedResult (nodes ``synthetic_mri_1`` ..., ``crop_box``)."""
        task = self.submitSynthesis(segmentationNode, referenceVolumeNode, tumourSegmentId, liverSegmentId,
                                    params=params, show=show, **kw)
        return self.wait(task, progress, cancel, timeout)


def ijkToRASArray(volumeNode):
    """The node's IJKToRAS matrix as a 4x4 numpy array."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


#
# PNIPredictTest
#


class PNIPredictTest(ScriptedLoadableModuleTest):
    """Self-test, run by CTest (slicer_add_python_unittest) and from the Reload & Test button.

    The end-to-end part makes an oblique, anisotropic liver MRI phantom (with the worker's Python),
    predicts PNI with the bundled demo weights (NeoSeg, then the predicted tumour segment as the
    user's), checks every output lies on the input's voxels and the crop ROI on the heat map, and
    synthesizes a patch with 2 DDIM steps. It is skipped, with a message, when the worker's Python
    lacks PyTorch/MONAI, unless PANTHEON_SELFTEST_REQUIRE_WORKER=1.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LogicInstantiates()
        self.setUp()
        self.test_TextsAndWeights()
        self.setUp()
        self.test_PredictAndSynthesizeOnPhantom()

    def test_LogicInstantiates(self):
        self.delayDisplay("Starting the test")
        logic = PNIPredictLogic()
        self.assertIsInstance(logic, ScriptedLoadableModuleLogic)
        self.assertEqual(logic.moduleName, "PNIPredict")
        self.assertIsNone(logic._client)  # the worker starts on first use only
        self.delayDisplay("Test passed")

    def test_TextsAndWeights(self):
        logic = PNIPredictLogic()
        self.assertEqual(logic.weightsArgument()["pattennet"], lib.DEMO_CARDS["pattennet"])
        self.assertIn("not for clinical use", lib.probability_text(0.73))
        self.delayDisplay("Texts and weights: passed")

    def test_PredictAndSynthesizeOnPhantom(self):
        import numpy as np

        from pantheon import slicerbridge as bridge

        logic = PNIPredictLogic()
        try:
            skip = selftest_skip_reason(logic, slicer.mrmlScene)
            if skip:
                self.delayDisplay(skip)
                return
            self.delayDisplay("Making a synthetic liver MRI")
            folder = lib.private_temp_dir("pni-selftest-")
            try:
                mriPath, _, _ = lib.make_phantom_files(folder, logic.workerPythonExecutable(), seed=3, oblique=10.0,
                                                       shape=(24, 64, 72), spacing=(4.0, 3.5, 6.0), orientation="LPI")
                volumeNode = slicer.util.loadVolume(mriPath, {"name": "PNIPhantom", "show": False})
            finally:
                lib.remove_tree(folder)
            before = slicer.util.arrayFromVolume(volumeNode).copy()
            self.delayDisplay("PNI prediction with NeoSeg (demo weights)")
            first = logic.process(volumeNode, device="cpu", show=False)
            p = first.scalars["pni_probability"]
            self.assertTrue(0.0 <= p <= 1.0)
            self.assertIn("not for clinical use", lib.prediction_text(first))
            segmentation = first.nodes["tumour"]
            tumourId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("tumour")
            self.assertTrue(tumourId)
            heat, roi = first.nodes["pni_attention"], first.nodes["crop_box"]
            ijkToRAS = ijkToRASArray(volumeNode)
            dims = volumeNode.GetImageData().GetDimensions()
            self.assertEqual(heat.GetImageData().GetDimensions(), dims)
            np.testing.assert_allclose(ijkToRASArray(heat), ijkToRAS, atol=1e-4)
            np.testing.assert_allclose(bridge.roi_node_corners(roi), bridge.roi_corners_ras(lib.crop_box_of(first)),
                                       atol=1e-3)
            self.assertTrue(heatInsideROI(heat, roi))
            self.delayDisplay("PNI prediction with the tumour segment as the user's")
            second = logic.process(volumeNode, segmentation, tumourId, device="cpu", show=False)
            self.assertEqual(second.notes["tumour_source"], "supplied tumour mask")
            self.assertEqual(second.nodes["crop_box"].GetID(), roi.GetID())  # re-run: same nodes
            self.assertEqual(second.nodes["pni_attention"].GetID(), heat.GetID())
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(volumeNode), before)
            self.delayDisplay("Synthesizing a patch (2 DDIM steps)")
            synth = logic.synthesize(second.nodes["tumour"], volumeNode, device="cpu", steps=2, seed=1, show=False)
            patch = synth.nodes["synthetic_mri_1"]
            self.assertEqual(patch.GetImageData().GetDimensions(), dims)
            np.testing.assert_allclose(ijkToRASArray(patch), ijkToRAS, atol=1e-4)
            self.delayDisplay("Test passed")
        finally:
            logic.shutdown()


def heatInsideROI(heatNode, roiNode, tolerance_mm=1e-3) -> bool:
    """True when every nonzero heat-map voxel centre lies inside the ROI box (the heat map is zero
    outside the crop, so this ties the ROI to where the classifier actually looked)."""
    import numpy as np

    arr = slicer.util.arrayFromVolume(heatNode)
    kji = np.argwhere(arr > 0)
    if kji.size == 0:
        return True
    ijk1 = np.c_[kji[:, ::-1], np.ones(len(kji))]
    ras = ijk1 @ ijkToRASArray(heatNode).T
    m = slicer.util.arrayFromVTKMatrix(roiNode.GetObjectToNodeMatrix())  # both in the input's local frame
    local = (ras[:, :3] - m[:3, 3]) @ m[:3, :3]  # rotation: inverse = transpose
    half = np.array(roiNode.GetSize(), dtype=float) / 2.0
    return bool(np.all(np.abs(local) <= half + tolerance_mm))
