"""LiverSynthesis: 3D Slicer module of the Pantheon extension (3D-LLDM liver MRI synthesis, FOSCU pairs).

**Synthesize MRI**: a segmentation in the scene (segments named liver, portal vein, hepatic vein(s),
HCC or tumour; names are matched case- and punctuation-insensitively, numbered segments like
"HCC 2" count, SNOMED CT codes too; other segments are left out and listed) is exported as one
3D-LLDM label map (1 liver, 2 portal vein, 3 hepatic veins, 4 HCC; painted liver first, HCC last)
on the grid of a reference volume (default: the segmentation's reference geometry volume), sent
to the worker task ``lldm.synthesize`` with the DDIM steps, seed, ControlNet scale, the labels that
steer it ("Steered by": unchecked vessels are drawn by the model, an unchecked HCC becomes liver)
and HCC edits (remove HCCs by number, grow or shrink every HCC by N mm, a new HCC at each point of
a markups point list), and comes back as the scalar volume "<segmentation> synthetic MRI" on the reference
volume's exact voxels; with edits also "<segmentation> edited labels", the label map the volume
was conditioned on. A rerun replaces both (a rerun without edits removes the edited labels).

**Generate pairs (FOSCU)**: the worker task ``foscu.generate`` writes N new (MR volume, label
map) pairs into a folder (images/, labels/ with .seg.nrrd, cases.csv, index.html, resumable); the
panel then offers to open index.html and to load the first pair.

The Slicer process never imports torch, MONAI or model code: 3D-LLDM and the label generator run
in Pantheon's long-lived worker process (``pantheon.worker.client``), which keeps loaded weights
between clicks. Scene conversion goes through ``pantheon.slicerbridge``; GUI-free helpers live in
``LiverSynthesisLib``.

Scripting (Slicer's Python console), blocking::

    logic = slicer.util.getModuleLogic("LiverSynthesis")   # or LiverSynthesisLogic()
    result = logic.synthesize(segmentationNode, referenceVolumeNode, steps=50, seed=0)
    result.nodes["synthetic_mri"]                          # "<segmentation> synthetic MRI"
    result = logic.synthesize(segmentationNode, referenceVolumeNode, edits=dict(remove_hcc=[1], grow_hcc_mm=5.0))
    result.nodes["labels"]                                 # "<segmentation> edited labels"
    summary = logic.generate(output="/data/synthetic", n=10, seed=0)   # folder, pairs, made_now, csv, index
    volumeNode, segmentationNode = logic.loadPair(summary)
"""

import logging
import os
import sys
from typing import Annotated, Optional

import qt
import slicer
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
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

from LiverSynthesisLib import core as lib  # noqa: E402 - needs the path set up above

from pantheon.slicerbridge.panel import PanelWidgetMixin, WorkerLogicMixin, selftest_skip_reason  # noqa: E402

log = logging.getLogger("LiverSynthesis")

#: Output names of ``lldm.synthesize`` and the node names the panel gives them (after the segmentation).
OUTPUT_NAMES = {"synthetic_mri": "{segmentation} synthetic MRI", "labels": "{segmentation} edited labels"}


#
# LiverSynthesis
#


class LiverSynthesis(ScriptedLoadableModule):
    """Module declaration (title, category, help, acknowledgement)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver MRI Synthesis (3D-LLDM)")
        self.parent.categories = ["Pantheon"]
        self.parent.dependencies = []
        self.parent.contributors = ["Pantheon developers"]
        self.parent.helpText = _("""
<p>3D-LLDM, label-guided 3D latent diffusion for hepatobiliary-phase liver MRI, and FOSCU's Duo-Diffusion,
new (image, label) pairs without drawing labels.</p>
<p>Papers: 3D-LLDM, arXiv:2603.23845 (<a href="https://arxiv.org/abs/2603.23845">https://arxiv.org/abs/2603.23845</a>);
FOSCU, arXiv:2603.29343 (<a href="https://arxiv.org/abs/2603.29343">https://arxiv.org/abs/2603.29343</a>).
Pantheon reconstructs both from their abstracts.</p>
<p><b>Synthesize MRI</b>: choose a segmentation whose segments are named liver, portal vein, hepatic vein(s) and
HCC (or tumour; "HCC 2", "portal_vein", "Hepatic veins" are understood; other segments are left out, and the panel
lists what it uses). A liver segment is required. The segments are exported on the grid of the reference volume
(by default the segmentation's own reference geometry volume; for a .seg.nrrd loaded without its image, "Use the
segmentation's own grid" adds an empty volume on the grid the file carries) and the synthetic MRI lands on exactly
that grid, as
"&lt;segmentation&gt; synthetic MRI". HCC edits act before synthesis, in millimetres: remove HCCs by number (1 = the
largest), grow or shrink every HCC, add an HCC at each point of a point list. With edits the label map the volume
was made from comes back too ("&lt;segmentation&gt; edited labels"). Same labels and seed, same volume; a rerun
replaces the outputs.</p>
<p><b>Generate pairs (FOSCU)</b>: N new pairs into a folder (images/, labels/ with .seg.nrrd, cases.csv,
index.html with thumbnails); a rerun adds only the missing pairs. Then open index.html or load the first pair.</p>
<p>Computation runs in a separate worker process; its Python needs PyTorch and MONAI, which the module offers to
install on first use (never silently).</p>
<p>No official weights are published. Pantheon ships <b>demo weights trained on synthetic phantoms only</b>: the
liver lands on its label and HCCs come out dark, but vessels less dark than in a real hepatobiliary phase. Weights
you trained (<code>pantheon lldm train</code>, <code>pantheon foscu train</code>) can be chosen under Weights and
device.</p>
<p>Synthetic images for research and data augmentation only; never for diagnosis.</p>
""")
        self.parent.acknowledgementText = _("""
<p>LiverSynthesis is part of Pantheon, a 3D Slicer extension for research models (NEMESIS, MATHENA, NeoNet,
3D-LLDM, FOSCU). The models and methods are the work of the authors of the papers cited in the help text;
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
class LiverSynthesisParameterNode:
    """Panel state, saved with the scene. Widgets bind through their SlicerParameterName property;
    the weights radio buttons, paths (weights, output folder) and device are synced in code."""

    segmentation: vtkMRMLSegmentationNode
    referenceVolume: vtkMRMLScalarVolumeNode
    synthesisSteps: Annotated[int, WithinRange(1, lib.MAX_STEPS), Default(lib.DEFAULT_STEPS)]
    synthesisSeed: Annotated[int, WithinRange(0, lib.MAX_SEED), Default(0)]
    useControlNetScale: Annotated[bool, Default(False)]
    controlNetScale: Annotated[float, WithinRange(0.0, lib.MAX_SCALE), Default(3.0)]  # the demo weights' own
    steerPortalVein: Annotated[bool, Default(True)]  # unchecked: the model draws the vessels itself
    steerHepaticVein: Annotated[bool, Default(True)]
    steerHCC: Annotated[bool, Default(True)]  # unchecked: the HCC voxels become liver
    removeHCC: str  # HCC numbers, e.g. "1, 3": checked by lib.parse_hcc_numbers
    growHCCmm: Annotated[float, WithinRange(-lib.MAX_GROW_MM, lib.MAX_GROW_MM), Default(0.0)]
    addHCCPoints: vtkMRMLMarkupsFiducialNode
    addHCCDiameter: Annotated[float, WithinRange(*lib.HCC_DIAMETER_RANGE), Default(20.0)]
    weightsChoice: Annotated[str, Choice(list(lib.WEIGHTS_CHOICES)), Default(lib.WEIGHTS_DEMO)]
    lldmPath: str
    labelgenPath: str
    device: Annotated[str, Default("auto")]  # auto, cpu or a GPU (cuda, cuda:N): checked by lib.build_params
    workerPython: str  # empty: Slicer's own Python
    pairsCount: Annotated[int, WithinRange(1, lib.MAX_PAIRS), Default(4)]
    pairsSeed: Annotated[int, WithinRange(0, lib.MAX_SEED), Default(0)]
    pairsLabelSteps: Annotated[int, WithinRange(1, lib.MAX_STEPS), Default(lib.DEFAULT_STEPS)]
    pairsImageSteps: Annotated[int, WithinRange(1, lib.MAX_STEPS), Default(lib.DEFAULT_STEPS)]
    pairsFolder: str


#
# LiverSynthesisWidget
#


class LiverSynthesisWidget(PanelWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin panel: UI wiring and parameter-node sync. The Apply/Cancel state machine, polling, log,
    errors and worker settings come from :class:`pantheon.slicerbridge.panel.PanelWidgetMixin`."""

    panelTitle = "Liver MRI Synthesis"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.initPanelState()
        self.lastSummary = None  # the summary of the last generated folder
        self.urlOpener = lambda path: qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(path))

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverSynthesis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LiverSynthesisLogic()
        self.logic.logCallback = self.appendLog

        self.actionButtons = {"synthesize": self.ui.synthesizeButton, "generate": self.ui.generateButton}
        self.connectPanel(qt.QTimer(), slicer.mrmlScene, qt.QTimer.singleShot)
        self.connectSettings(lib.DEVICES,
                             weights={lib.WEIGHTS_DEMO: self.ui.weightsDemoRadioButton,
                                      lib.WEIGHTS_FILE: self.ui.weightsFileRadioButton},
                             paths={"lldmPath": self.ui.lldmPathLineEdit, "labelgenPath": self.ui.labelgenPathLineEdit,
                                    "pairsFolder": self.ui.pairsFolderPathLineEdit},
                             fileEdits=[self.ui.lldmPathLineEdit, self.ui.labelgenPathLineEdit])
        self.ui.segmentationGridButton.connect("clicked(bool)", self.onUseSegmentationGrid)
        self.ui.openIndexButton.connect("clicked(bool)", self.onOpenIndex)
        self.ui.loadPairButton.connect("clicked(bool)", self.onLoadPair)

        self.showError("")
        self.initializeParameterNode()
        self.updateButtons()

    # ------------------------------------------------------------------ parameter node
    def setParameterNode(self, inputParameterNode) -> None:
        self._followedSegmentationID = None
        if not self.bindParameterNode(inputParameterNode):
            self.observeSegmentation(None)
            return
        self.syncSettingsWidgets()
        self.onParameterNodeModified()

    def initializeParameterNode(self) -> None:
        """Bind the logic's parameter node; with no segmentation chosen, the scene's first one with a
        liver segment (its reference geometry volume becomes the reference)."""
        self.setParameterNode(self.logic.getParameterNode())
        self.pickInputIfNone()

    def pickInputIfNone(self) -> None:
        p = self._parameterNode
        if p is None or p.segmentation or self.task is not None:
            return
        node = self.logic.firstUsableSegmentation()
        if node is not None:
            p.segmentation = node

    def parameterNodeChanged(self) -> None:
        """The reference follows the chosen segmentation's reference geometry volume unless the user
        picked another one; the segments line says what each segment is used as (or why none can
        be); the weights caveat follows the weights choice."""
        p = self._parameterNode
        seg = p.segmentation
        segID = seg.GetID() if seg is not None else None
        followed = getattr(self, "_followedSegmentationID", None)
        if segID != followed:
            previous = self.logic.defaultReference(slicer.mrmlScene.GetNodeByID(followed)) if followed else None
            reference = p.referenceVolume
            default = self.logic.defaultReference(seg)
            if default is not None and (reference is None or reference is previous):
                p.referenceVolume = default
            self._followedSegmentationID = segID
            self.observeSegmentation(seg)
        self.showSegments()
        self.ui.warningLabel.text = lib.weights_warning(p.weightsChoice, p.lldmPath)
        self.ui.controlNetScaleSpinBox.enabled = bool(p.useControlNetScale)

    def observeSegmentation(self, node) -> None:
        """Follow the chosen segmentation's segments (added, removed, renamed) in the segments line."""
        old = getattr(self, "_observedSegmentation", None)
        if old is node:
            return
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        if old is not None:
            for event in events:
                self.removeObserver(old, event, self.onSegmentsChanged)
        self._observedSegmentation = node
        if node is not None:
            for event in events:
                self.addObserver(node, event, self.onSegmentsChanged)

    def onSegmentsChanged(self, caller=None, event=None) -> None:
        self.showSegments()
        self.updateButtons()

    def segmentProblem(self) -> Optional[str]:
        """Why the chosen segmentation cannot be synthesised from (one sentence), None when it can."""
        p = self._parameterNode
        if p is None or p.segmentation is None:
            return None
        try:
            self.logic.labelPlan(p.segmentation)
        except ValueError as exc:
            return str(exc)
        return None

    def showSegments(self) -> None:
        p = self._parameterNode
        seg = p.segmentation if p is not None else None
        if seg is None:
            text = _("Choose a segmentation with a liver segment.")
        else:
            try:
                text = lib.plan_text(self.logic.labelPlan(seg))
            except ValueError as exc:
                text = str(exc)
        self.ui.segmentsLabel.text = text

    def showInputHint(self) -> None:
        """While idle, the status line says why Synthesize MRI cannot run (a disabled button alone
        tells the user nothing); the hint goes when the inputs are fixed."""
        p = self._parameterNode
        hint = None
        if p is not None and p.segmentation is not None:
            hint = self.segmentProblem()
            if hint is None and p.referenceVolume is None:
                hint = (_("Choose the reference volume, or use the segmentation's own grid.")
                        if self.logic.segmentationGrid(p.segmentation) is not None else
                        _("Choose the reference volume: the grid the synthetic MRI lands on."))
        shown = getattr(self, "_inputHint", None)
        if hint:
            self.ui.statusLabel.text = hint
        elif shown and self.ui.statusLabel.text == shown:
            self.ui.statusLabel.text = _("Idle")
        self._inputHint = hint

    # ------------------------------------------------------------------ actions (PanelWidgetMixin hooks)
    def _canRun(self, action) -> bool:
        p = self._parameterNode
        if p is None:
            return False
        if action == "synthesize":
            return bool(p.segmentation and p.referenceVolume) and self.segmentProblem() is None
        return bool((p.pairsFolder or "").strip())

    def weightsArgument(self) -> dict:
        p = self._parameterNode
        return self.logic.weightsArgument(p.weightsChoice, lldm=p.lldmPath, labelgen=p.labelgenPath)

    def startAction(self, action):
        p = self._parameterNode
        common = dict(weights=self.weightsArgument(), device=p.device or "auto")
        if action == "synthesize":
            edits = self.logic.editParams(p.removeHCC, p.growHCCmm, p.addHCCPoints, p.addHCCDiameter, p.referenceVolume)
            scale = float(p.controlNetScale) if p.useControlNetScale else None
            self.ui.synthesisResultLabel.text = ""
            steer = lib.steer_params(p.steerPortalVein, p.steerHepaticVein, p.steerHCC)
            return self.logic.submitSynthesis(p.segmentation, p.referenceVolume, steps=p.synthesisSteps,
                                              seed=p.synthesisSeed, scale=scale, edits=edits, steer=steer, **common)
        if action == "generate":
            self.ui.generationResultLabel.text = ""
            return self.logic.submitGeneration(output=p.pairsFolder, n=p.pairsCount, seed=p.pairsSeed,
                                               label_steps=p.pairsLabelSteps, image_steps=p.pairsImageSteps, **common)
        raise ValueError(f"unknown action {action}")

    def onTaskDone(self, task) -> None:
        if task.action == "synthesize":
            self.ui.synthesisResultLabel.text = self.logic.lastSynthesisText
            return
        if task.action == "generate":
            self.lastSummary = lib.summary_of(task.imported)
            text = lib.generation_text(self.lastSummary)
            self.ui.generationResultLabel.text = text
            self.appendLog(text)
            self.updatePairButtons()

    def noteLine(self, key, value):
        if key == "model_cache":
            return None  # worker bookkeeping, not for the user
        return PanelWidgetMixin.noteLine(self, key, value)

    def updateButtons(self, *args) -> None:
        PanelWidgetMixin.updateButtons(self, *args)
        if self.ui is not None:
            self.updatePairButtons()
            p = self._parameterNode
            self.ui.segmentationGridButton.enabled = bool(
                self.task is None and p is not None and p.segmentation is not None and p.referenceVolume is None
                and self.logic.segmentationGrid(p.segmentation) is not None)

    def onUseSegmentationGrid(self) -> None:
        p = self._parameterNode
        try:
            p.referenceVolume = self.logic.gridVolume(p.segmentation)
        except ValueError as exc:
            self.showError(str(exc))

    def updatePairButtons(self) -> None:
        ready = self.lastSummary is not None and self.task is None
        pairs = int(self.lastSummary.get("pairs") or 0) if ready else 0
        self.ui.openIndexButton.enabled = ready and os.path.isfile(str(self.lastSummary.get("index") or ""))
        self.ui.loadPairButton.enabled = ready and pairs > 0

    def onOpenIndex(self, checked=False) -> None:
        if self.lastSummary is None:
            return
        path = str(self.lastSummary.get("index") or "")
        if not os.path.isfile(path):
            self.showError(_("{path} is gone; generate the pairs again.").format(path=path))
            return
        self.urlOpener(path)

    def onLoadPair(self, checked=False) -> None:
        if self.lastSummary is None:
            return
        self.showError("")
        try:
            volume, segmentation = self.logic.loadPair(self.lastSummary, 0)
        except (ValueError, RuntimeError) as exc:
            self.showError(str(exc))
            return
        self.appendLog(_("Loaded {volume} and {labels}.").format(volume=volume.GetName(),
                                                                 labels=segmentation.GetName()))

    def onSceneStartClose(self, caller=None, event=None) -> None:
        PanelWidgetMixin.onSceneStartClose(self, caller, event)
        self.ui.synthesisResultLabel.text = ""


#
# LiverSynthesisLogic
#


class LiverSynthesisLogic(WorkerLogicMixin, ScriptedLoadableModuleLogic):
    """GUI-free 3D-LLDM / FOSCU logic; usable from the Python console, scripts and tests.

    Owns one long-lived worker client (created on first use, never at import; see
    :class:`pantheon.slicerbridge.panel.WorkerLogicMixin`). ``submitSynthesis`` / ``submitGeneration``
    are non-blocking (they return a task to poll from the GUI thread); ``synthesize`` / ``generate``
    block.
    """

    modelName = "3D-LLDM"
    logger = log

    def __init__(self, workerPython: Optional[str] = None, clientFactory=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.initWorker(workerPython, clientFactory)
        self.lastResult = None
        self.lastSynthesisText = ""

    def getParameterNode(self):
        return LiverSynthesisParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ parameters
    def weightsArgument(self, choice=lib.WEIGHTS_DEMO, lldm=None, labelgen=None) -> dict:
        """UI weights choice -> worker parameters (model-card ids or weights files per component)."""
        return lib.weights_params(choice, {"lldm": lldm, "labelgen": labelgen})

    def buildParams(self, action, **kw) -> dict:
        return lib.build_params(action, **kw)

    def editParams(self, remove="", growMM=0.0, pointsNode=None, diameterMM=20.0, referenceVolumeNode=None) -> dict:
        """The HCC edits as worker parameters; each defined point of ``pointsNode`` becomes a new HCC
        centre (in ``referenceVolumeNode``'s frame, where the label map is)."""
        return lib.edit_params(remove, growMM, self.pointsLPS(pointsNode, referenceVolumeNode), diameterMM)

    @staticmethod
    def pointsLPS(markupsNode, referenceVolumeNode=None) -> list:
        """The defined control points of ``markupsNode`` as LPS mm in the reference volume's local frame
        (its IJKToRAS frame: a linear parent transform of the volume is undone)."""
        if markupsNode is None:
            return []
        import vtk
        fromWorld = vtk.vtkMatrix4x4()
        parent = referenceVolumeNode.GetParentTransformNode() if referenceVolumeNode is not None else None
        if parent is not None:
            if not parent.IsTransformToWorldLinear():
                raise ValueError(f"The volume {referenceVolumeNode.GetName()!r} is under a non-linear transform; "
                                 "harden it before adding HCCs at points.")
            parent.GetMatrixTransformFromWorld(fromWorld)
        points = []
        for i in range(markupsNode.GetNumberOfControlPoints()):
            if markupsNode.GetNthControlPointPositionStatus(i) != markupsNode.PositionDefined:
                continue
            ras = [0.0, 0.0, 0.0]
            markupsNode.GetNthControlPointPositionWorld(i, ras)
            local = fromWorld.MultiplyPoint([ras[0], ras[1], ras[2], 1.0])
            points.append(lib.ras_to_lps(local[:3]))
        return points

    # ------------------------------------------------------------------ segments
    @staticmethod
    def segmentsOf(segmentationNode) -> list:
        """``(segment ID, name, terminology entry)`` of each segment, in the segmentation's order."""
        from pantheon import slicerbridge as bridge
        seg = segmentationNode.GetSegmentation()
        out = []
        for i in range(seg.GetNumberOfSegments()):
            sid = seg.GetNthSegmentID(i)
            segment = seg.GetSegment(sid)
            out.append((sid, segment.GetName(), bridge.segment_terminology(segment)))
        return out

    def labelPlan(self, segmentationNode) -> "lib.LabelPlan":
        """Which segment becomes which 3D-LLDM label (ValueError in one sentence without a liver)."""
        if segmentationNode is None:
            raise ValueError("Choose a segmentation with a liver segment.")
        return lib.plan_labels(self.segmentsOf(segmentationNode), segmentationNode.GetName())

    @staticmethod
    def defaultReference(segmentationNode):
        """The segmentation's reference geometry volume (set by the Segment Editor's source volume or
        ``SetReferenceImageGeometryParameterFromVolumeNode``), None when it has none."""
        if segmentationNode is None:
            return None
        node = segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())
        if node is not None and node.IsA("vtkMRMLScalarVolumeNode") and node.GetImageData() is not None:
            return node
        return None

    @staticmethod
    def segmentationGrid(segmentationNode):
        """The grid a segmentation carries as its "Reference image geometry" conversion parameter
        (Slicer's .seg.nrrd files and Pantheon's do): (IJK-to-RAS 4x4 array, (K, J, I) shape), or
        None when it carries none."""
        import vtk
        if segmentationNode is None or segmentationNode.GetSegmentation() is None:
            return None
        segmentation = segmentationNode.GetSegmentation()
        name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        # asking for a parameter that is not there logs an error: look in the serialised list first
        if f"{name}|" not in (segmentation.SerializeAllConversionParameters() or ""):
            return None
        geometry = slicer.vtkOrientedImageData()
        if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(segmentation.GetConversionParameter(name),
                                                                        geometry):
            return None
        i0, i1, j0, j1, k0, k1 = geometry.GetExtent()
        if i1 < i0 or j1 < j0 or k1 < k0:
            return None
        matrix = vtk.vtkMatrix4x4()
        geometry.GetImageToWorldMatrix(matrix)
        ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix)
        ijk_to_ras[:3, 3] = (ijk_to_ras @ [i0, j0, k0, 1.0])[:3]  # voxel (0, 0, 0) of the node = the extent's first
        return ijk_to_ras, (k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)

    def gridVolume(self, segmentationNode):
        """An empty volume "<segmentation> grid" on the grid the segmentation carries, under the
        segmentation's transform, made the segmentation's reference geometry volume (the same
        geometry, so its segments are unchanged)."""
        import numpy as np
        grid = self.segmentationGrid(segmentationNode)
        if grid is None:
            raise ValueError(f"The segmentation {segmentationNode.GetName()!r} does not carry its grid; choose the "
                             "reference volume.")
        ijk_to_ras, shape = grid
        node = slicer.util.addVolumeFromArray(np.zeros(shape, np.uint8), ijkToRAS=ijk_to_ras,
                                              name=f"{segmentationNode.GetName()} grid",
                                              nodeClassName="vtkMRMLScalarVolumeNode")
        node.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(node)
        return node

    def firstUsableSegmentation(self):
        """The scene's first segmentation with a liver segment that is not one of Pantheon's outputs."""
        from pantheon import slicerbridge as bridge
        for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            if node.GetAttribute(bridge.ATTR_OUTPUT) is not None:
                continue
            try:
                self.labelPlan(node)
            except ValueError:
                continue
            return node
        return None

    def exportLabels(self, segmentationNode, referenceVolumeNode, path) -> tuple:
        """Write the segments as one 3D-LLDM label map on the reference volume's voxels (painted in the
        plan's order: liver, portal vein, hepatic veins, HCC); returns (path, plan)."""
        import numpy as np

        from pantheon import slicerbridge as bridge
        if referenceVolumeNode is None or referenceVolumeNode.GetImageData() is None:
            raise ValueError("Choose the reference volume: the grid the synthetic MRI lands on.")
        plan = self.labelPlan(segmentationNode)
        out = np.zeros(tuple(reversed(referenceVolumeNode.GetImageData().GetDimensions())), np.uint8)
        for sid, mask in bridge.iter_segment_masks(segmentationNode, referenceVolumeNode, plan.order):
            out[mask] = plan.values[sid]
        if not (out == lib.LIVER).any():
            raise ValueError(f"The liver segment of {segmentationNode.GetName()!r} has no voxel inside "
                             f"{referenceVolumeNode.GetName()!r}; choose the volume the segmentation was drawn on.")
        return str(bridge.write_label_array(out, referenceVolumeNode, path)), plan

    # ------------------------------------------------------------------ synthesis
    def submitSynthesis(self, segmentationNode, referenceVolumeNode, params=None, show=True, **kw):
        """Start 3D-LLDM on the segments of ``segmentationNode``, exported on ``referenceVolumeNode``'s
        grid; returns a task to poll. ``kw``: :func:`LiverSynthesisLib.core.build_params` (steps,
        seed, scale, edits, steer, weights, device)."""
        from pantheon import slicerbridge as bridge
        if segmentationNode is None:
            raise ValueError("Choose a segmentation with a liver segment.")
        if referenceVolumeNode is None:
            raise ValueError("Choose the reference volume: the grid the synthetic MRI lands on.")
        full = dict(params) if params is not None else self.buildParams("synthesize", **kw)
        edited = any(full.get(k) for k in ("remove_hcc", "grow_hcc_mm", "add_hcc"))
        tmp = lib.private_temp_dir("lldm-synthesize-")
        try:
            labels, plan = self.exportLabels(segmentationNode, referenceVolumeNode, os.path.join(tmp, "labels.nrrd"))
        except Exception:
            lib.remove_tree(tmp)
            raise
        self.log(lib.plan_text(plan))
        if edited:
            self.log(lib.edits_text(full))
        if full.get("use"):
            self.log(lib.steer_text(full))
        # one output set per segmentation and reference volume: a rerun replaces it
        action = f"synthesize:{segmentationNode.GetID()}"
        segName = segmentationNode.GetName()

        def onResult(result):
            result = dict(result)
            if not edited:  # the conditioning labels are the user's own segments: nothing new to show
                result["outputs"] = {k: v for k, v in (result.get("outputs") or {}).items() if k != "labels"}
            before = {n.GetID() for n in bridge.outputs_of(referenceVolumeNode, action)}
            imported = bridge.import_result(result, referenceVolumeNode, action, show=False,
                                            protect=[segmentationNode])
            for name, node in imported.nodes.items():
                if node.GetID() not in before and name in OUTPUT_NAMES:
                    node.SetName(slicer.mrmlScene.GenerateUniqueName(OUTPUT_NAMES[name].format(segmentation=segName)))
            volume = imported.nodes.get("synthetic_mri")
            self.lastSynthesisText = " ".join(t for t in (
                f"{volume.GetName()}: on the grid of {referenceVolumeNode.GetName()}." if volume is not None else "",
                lib.edits_text(full), lib.steer_text(full), lib.volumes_text(imported)) if t)
            self.log(self.lastSynthesisText)
            if show and volume is not None and getattr(slicer, "app", None) is not None:
                slicer.util.setSliceViewerLayers(background=volume, foreground=referenceVolumeNode,
                                                 foregroundOpacity=0.0)
            self.lastResult = imported
            return imported

        return self.startJob("synthesize", lib.ACTIONS["synthesize"], full, {"labels": labels}, tmp, onResult,
                             context=referenceVolumeNode)

    def synthesize(self, segmentationNode, referenceVolumeNode, progress=None, cancel=None, timeout=None, show=True,
                   params=None, **kw):
        """Blocking synthesis; returns the ImportedResult (nodes ``synthetic_mri`` and, with edits, ``labels``;
        scalars ``liver_ml`` ... ``hcc_ml``, ``steps``, ``seed``)."""
        task = self.submitSynthesis(segmentationNode, referenceVolumeNode, params=params, show=show, **kw)
        return self.wait(task, progress, cancel, timeout)

    # ------------------------------------------------------------------ pairs
    def submitGeneration(self, params=None, **kw):
        """Start FOSCU's ``foscu.generate`` (N pairs into a folder); returns a task to poll whose
        ``imported`` is the result document (``summary``: folder, pairs, made_now, csv, index)."""
        full = dict(params) if params is not None else self.buildParams("generate", **kw)
        tmp = lib.private_temp_dir("foscu-generate-")

        def onResult(result):
            lib.summary_of(result)  # a result without its summary fails the task, in words
            self.lastResult = result
            return result

        self.log(f"Generating {full['n']} pair{'s' if full['n'] != 1 else ''} into {full['output']}")
        return self.startJob("generate", lib.ACTIONS["generate"], full, {}, tmp, onResult)

    def generate(self, progress=None, cancel=None, timeout=None, params=None, **kw) -> dict:
        """Blocking generation; returns the folder's summary (folder, pairs, made_now, csv, index)."""
        task = self.submitGeneration(params=params, **kw)
        return lib.summary_of(self.wait(task, progress, cancel, timeout))

    def loadPair(self, summary, index: int = 0, show: bool = True) -> tuple:
        """Load pair ``index`` of a generated folder: its volume and its labels as a segmentation (named
        segments; the volume as its reference geometry, so it can be synthesised from at once)."""
        case, image, label = lib.pair_files(summary, index)
        volume = slicer.util.loadVolume(image, {"name": case, "show": False})
        segmentation = slicer.util.loadSegmentation(label, {"name": f"{case} labels"})
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        if show and getattr(slicer, "app", None) is not None:
            slicer.util.setSliceViewerLayers(background=volume, fit=True)
        return volume, segmentation


#
# LiverSynthesisTest
#


class LiverSynthesisTest(ScriptedLoadableModuleTest):
    """Self-test, run by CTest (slicer_add_python_unittest) and from the Reload & Test button.

    The end-to-end part makes an oblique liver MRI phantom with its 3D-LLDM labels (with the worker's
    Python), turns the labels into a segmentation with annotators' names, synthesises the MRI with the
    bundled demo weights (2 DDIM steps), checks it lies on the MRI's voxels, then removes the largest
    HCC and checks the edited labels come back. It is skipped, with a message, when the worker's
    Python lacks PyTorch/MONAI, unless PANTHEON_SELFTEST_REQUIRE_WORKER=1.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LogicInstantiates()
        self.setUp()
        self.test_SegmentNames()
        self.setUp()
        self.test_SynthesizeOnPhantom()

    def test_LogicInstantiates(self):
        self.delayDisplay("Starting the test")
        logic = LiverSynthesisLogic()
        self.assertIsInstance(logic, ScriptedLoadableModuleLogic)
        self.assertEqual(logic.moduleName, "LiverSynthesis")
        self.assertIsNone(logic._client)  # the worker starts on first use only
        self.assertEqual(logic.weightsArgument()["lldm"], lib.DEMO_CARDS["lldm"])
        self.delayDisplay("Test passed")

    def test_SegmentNames(self):
        plan = lib.plan_labels([("a", "Liver", None), ("b", "portal_vein", None), ("c", "Hepatic veins", None),
                                ("d", "HCC 1", None), ("e", "spleen", None)], "annotation")
        self.assertEqual([plan.values[s] for s in plan.order], [1, 2, 3, 4])
        self.assertEqual(plan.ignored, ["spleen"])
        with self.assertRaises(ValueError):
            lib.plan_labels([("a", "spleen", None)])
        self.delayDisplay("Segment names: passed")

    def test_SynthesizeOnPhantom(self):
        import numpy as np
        import vtk

        logic = LiverSynthesisLogic()
        try:
            skip = selftest_skip_reason(logic, slicer.mrmlScene)
            if skip:
                self.delayDisplay(skip)
                return
            self.delayDisplay("Making a synthetic liver MRI")
            folder = lib.private_temp_dir("lldm-selftest-")
            try:
                mriPath, labelPath, _ = lib.make_phantom_files(folder, logic.workerPythonExecutable(), seed=7,
                                                               oblique=12.0, shape=(24, 64, 72), orientation="PIL",
                                                               n_hcc=2)
                mri = slicer.util.loadVolume(mriPath, {"name": "LiverMRIPhantom", "show": False})
                labels = slicer.util.loadVolume(labelPath, {"name": "labels", "show": False})
            finally:
                lib.remove_tree(folder)
            arr = slicer.util.arrayFromVolume(labels).astype(np.uint8)
            labelMap = slicer.util.addVolumeFromArray(arr, ijkToRAS=ijkToRASArray(mri), name="phantom labels",
                                                      nodeClassName="vtkMRMLLabelMapVolumeNode")
            slicer.mrmlScene.RemoveNode(labels)
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "annotation")
            ids = vtk.vtkStringArray()
            for name in ("Liver", "portal_vein", "Hepatic veins", "HCC"):
                ids.InsertNextValue(name)
            self.assertTrue(slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                labelMap, segmentation, ids))
            slicer.mrmlScene.RemoveNode(labelMap)
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(mri)
            self.assertIs(logic.defaultReference(segmentation), mri)
            self.delayDisplay("Synthesizing the MRI (2 DDIM steps)")
            first = logic.synthesize(segmentation, mri, device="cpu", steps=2, seed=1, show=False)
            volume = first.nodes["synthetic_mri"]
            self.assertEqual(volume.GetName(), "annotation synthetic MRI")
            self.assertNotIn("labels", first.nodes)
            self.assertEqual(volume.GetImageData().GetDimensions(), mri.GetImageData().GetDimensions())
            np.testing.assert_allclose(ijkToRASArray(volume), ijkToRASArray(mri), atol=1e-4)
            self.assertTrue(np.isfinite(slicer.util.arrayFromVolume(volume)).all())
            self.delayDisplay("Removing the largest HCC and synthesizing again")
            second = logic.synthesize(segmentation, mri, device="cpu", steps=2, seed=1, show=False,
                                      edits=lib.edit_params("1"))
            self.assertEqual(second.nodes["synthetic_mri"].GetID(), volume.GetID())  # a rerun replaces it
            edited = second.nodes["labels"]
            self.assertEqual(edited.GetName(), "annotation edited labels")
            self.assertLess(second.scalars["hcc_ml"], first.scalars["hcc_ml"])
            self.delayDisplay("Test passed")
        finally:
            logic.shutdown()


def ijkToRASArray(volumeNode):
    """The node's IJKToRAS matrix as a 4x4 numpy array."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)
