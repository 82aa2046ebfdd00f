"""NemesisSlicer: 3D Slicer module of the Pantheon extension (NEMESIS CT foundation model).

The Slicer process never imports torch, MONAI or model code: every computation runs in
Pantheon's long-lived worker process (``pantheon.worker.client``), which keeps loaded weights
and computed features, so moving a similarity point is answered from cached features. Scene
conversion goes through ``pantheon.slicerbridge``. GUI-free helpers live in ``NemesisSlicerLib``.

Scripting (Slicer's Python console), blocking::

    logic = slicer.util.getModuleLogic("NemesisSlicer")   # or NemesisSlicerLogic()
    imported = logic.process("organs", volumeNode, organs=["liver", "spleen"])
    imported = logic.process("pca", volumeNode)
    imported = logic.process("similarity", volumeNode, point_lps=logic.pointLPSFromCrosshair())
    # the point in one CT, the map over another (on its voxels; best match in imported.bestMatchRAS)
    imported = logic.wait(logic.submitSimilarity(volumeNode, logic.pointLPSFromCrosshair(), otherVolumeNode))
    # strokes painted with the Segment Editor: segment 1 inside the structure, segment 2 around it
    imported = logic.segmentFromStrokes(volumeNode, strokesNode, "liver", "background")
"""

import json
import logging
import os
import sys
import time
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

from NemesisSlicerLib import core as lib  # noqa: E402 - needs the path set up above

from pantheon.slicerbridge.panel import PanelWidgetMixin, WorkerLogicMixin, selftest_skip_reason  # noqa: E402 - needs the path set up above

log = logging.getLogger("NemesisSlicer")


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
<p>NEMESIS, a self-supervised masked-autoencoder foundation model for 3D CT (superpatch encoder features, """
"""reconstruction and downstream heads).</p>
<p>Paper: NEMESIS: Noise-suppressed Efficient MAE with Enhanced Superpatch Integration Strategy. """
"""arXiv:2604.01612; IEEE AICAS 2026.
<a href="https://arxiv.org/abs/2604.01612">https://arxiv.org/abs/2604.01612</a></p>
<p>Organ maps, a reconstruction explorer (mask ratio and noise at the crosshair), an atypicality map (the
masked-reconstruction error over the whole CT, several mask draws averaged), a feature PCA map,
point similarity (move the point: the map updates from cached features), also shown in another loaded
CT (its best match marked), segmenting a structure from
a few paint strokes (updated as you paint) and training an organ probe from segmentations in the
scene. Computation runs in a separate worker process; its Python needs PyTorch and MONAI, which the
module offers to install on first use (never silently).</p>
<p>The published NEMESIS MAE checkpoints can be used (downloaded only after you agree); small demo weights """
"""trained on synthetic phantoms are also provided and are labelled as such.</p>
<p>For research use only; not for clinical decisions.</p>
""")
        self.parent.acknowledgementText = _("""
<p>NemesisSlicer is part of Pantheon, a 3D Slicer extension for the NEMESIS, MATHENA and NeoNet research
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
class NemesisSlicerParameterNode:
    """Panel state, saved with the scene. Widgets bind through their SlicerParameterName property."""

    inputVolume: vtkMRMLScalarVolumeNode
    weightsChoice: Annotated[str, Choice(list(lib.WEIGHTS_CHOICES)), Default(lib.WEIGHTS_DEMO)]
    weightsPath: str
    probePath: str
    device: Annotated[str, Default("auto")]  # auto, cpu or a GPU (cuda, cuda:N): checked by lib.build_params
    # int8 only runs on the CPU; the worker says so in one sentence when a GPU is chosen with it
    precision: Annotated[str, Choice(list(lib.PRECISIONS)), Default("fp32")]
    workerPython: str  # empty: Slicer's own Python
    organAorta: Annotated[bool, Default(True)]
    organGallbladder: Annotated[bool, Default(True)]
    organSpleen: Annotated[bool, Default(True)]
    organLeftKidney: Annotated[bool, Default(True)]
    organRightKidney: Annotated[bool, Default(True)]
    organLiver: Annotated[bool, Default(True)]
    organStomach: Annotated[bool, Default(True)]
    organPancreas: Annotated[bool, Default(True)]
    maskRatioPlane: Annotated[float, WithinRange(0.0, 0.95), Default(lib.DEFAULT_MASK_RATIO[0])]
    maskRatioAxis: Annotated[float, WithinRange(0.0, 0.95), Default(lib.DEFAULT_MASK_RATIO[1])]
    noiseStd: Annotated[float, WithinRange(0.0, 1.0), Default(0.0)]
    atypicalityDraws: Annotated[int, WithinRange(1, 32), Default(lib.DEFAULT_ATYPICALITY_DRAWS)]
    similarityPoint: vtkMRMLMarkupsFiducialNode
    similarityAutoUpdate: Annotated[bool, Default(True)]
    similarityTarget: vtkMRMLScalarVolumeNode  # "Show in": None is the same CT (the input)
    similarityMarkBestMatch: Annotated[bool, Default(True)]
    strokeSegmentation: vtkMRMLSegmentationNode  # the annotator's strokes (never written by the module)
    strokeForegroundSegmentId: str
    strokeBackgroundSegmentId: str
    strokeOutputSegmentation: vtkMRMLSegmentationNode  # None: made on the first run
    strokesAutoUpdate: Annotated[bool, Default(True)]
    trainVolume: vtkMRMLScalarVolumeNode
    trainSegmentation: vtkMRMLSegmentationNode
    probeEpochs: Annotated[int, WithinRange(1, 2000), Default(100)]
    probeHoldout: Annotated[float, WithinRange(0.0, 0.5), Default(0.2)]


# organ name -> parameter node field (the check box of the same name + "CheckBox")
ORGAN_FIELDS = {name: box[:-len("CheckBox")] for name, box in lib.ORGANS}

# seconds of quiet after a paint stroke before "Update as I paint" runs (a stroke fires several events)
STROKES_DELAY_S = 0.5

# the markups point marking a similarity's best match in another CT (its name and its colour, not the query's)
BEST_MATCH = "best match"
BEST_MATCH_COLOR = (0.2, 0.9, 0.3)


#
# NemesisSlicerWidget
#


class NemesisSlicerWidget(PanelWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin panel: UI wiring, the official-weights download, the similarity point and the probe's
    training pairs. The Apply/Cancel state machine, polling, log, errors and worker settings come
    from :class:`pantheon.slicerbridge.panel.PanelWidgetMixin`."""

    panelTitle = "NEMESIS"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.initPanelState()
        self.trainPairs = []  # [(volume node, segmentation node)] added with "Add case"
        self._strokeNode = None  # the stroke segmentation observed for "Update as I paint"
        self._syncingStrokes = False  # True while the segment selectors are set from the parameter node
        self._strokesDebouncer = lib.Debouncer(STROKES_DELAY_S)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NemesisSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NemesisSlicerLogic()
        self.logic.logCallback = self.appendLog

        self.actionButtons = {
            "organs": self.ui.organsApplyButton,
            "reconstruct": self.ui.reconstructApplyButton,
            "atypicality": self.ui.atypicalityApplyButton,
            "pca": self.ui.pcaApplyButton,
            "similarity": self.ui.similarityApplyButton,
            "train_probe": self.ui.trainProbeButton,
            "strokes": self.ui.strokesApplyButton,
        }
        self.connectPanel(qt.QTimer(), slicer.mrmlScene, qt.QTimer.singleShot)
        self.connectSettings(
            lib.DEVICES,
            weights={lib.WEIGHTS_DEMO: self.ui.weightsDemoRadioButton,
                     lib.WEIGHTS_OFFICIAL: self.ui.weightsOfficialRadioButton,
                     lib.WEIGHTS_FILE: self.ui.weightsFileRadioButton},
            paths={"weightsPath": self.ui.weightsPathLineEdit, "probePath": self.ui.probePathLineEdit},
            fileEdits=(self.ui.weightsPathLineEdit,))

        self.ui.addTrainPairButton.connect("clicked(bool)", self.onAddTrainPair)
        self.ui.clearTrainPairsButton.connect("clicked(bool)", self.onClearTrainPairs)
        # the point selector and the auto-update check box are bound: followed in parameterNodeChanged
        self.logic.similarityRequested = self.onSimilarityRequested
        # the segment selectors are synced in code (the stroke segmentation selector is bound)
        for selector in (self.ui.strokeForegroundSelector, self.ui.strokeBackgroundSelector):
            selector.connect("currentSegmentChanged(QString)", self.onStrokeSegmentChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)

        self.showError("")
        self.initializeParameterNode()
        self.updateButtons()

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.logic.stopObservingSimilarityPoint()
        self._observedPoint = None
        self.onClearTrainPairs()  # the cases belong to the scene being closed
        self.ui.reconstructMetricsLabel.text = "-"
        self.logic.clearStrokesInput()
        self.logic.clearSimilarityInputs()
        PanelWidgetMixin.onSceneStartClose(self, caller, event)

    def onNodeRemoved(self, caller=None, event=None) -> None:
        """A case whose volume or segmentation left the scene is dropped (its ID may come back as
        another node's)."""
        kept = [(v, s) for v, s in self.trainPairs if v.GetScene() is not None and s.GetScene() is not None]
        if len(kept) != len(self.trainPairs):
            self.trainPairs = kept
            self.showTrainPairs()
            self.updateButtons()

    # ------------------------------------------------------------------ parameter node
    def setParameterNode(self, inputParameterNode) -> None:
        # the buttons follow every change of the node (e.g. an input volume picked after opening)
        self._observedPoint = None
        if self.bindParameterNode(inputParameterNode):
            self.syncSettingsWidgets()
            self.followStrokeSegmentation(self._parameterNode.strokeSegmentation)
            self.onParameterNodeModified()
        else:
            self.followStrokeSegmentation(None)

    def parameterNodeChanged(self) -> None:
        """Follow the similarity point, its auto-update, the input and the "Show in" CT (the point's
        observers are redone when any of them changes; another "Show in" CT runs the map again);
        the reconstruction metrics belong to their input."""
        p = self._parameterNode
        state = (p.similarityPoint, p.inputVolume, bool(p.similarityAutoUpdate), p.similarityTarget,
                 bool(p.similarityMarkBestMatch))
        old = getattr(self, "_observedPoint", None)
        if state != old:
            if old is not None and state[1] is not old[1]:
                self.ui.reconstructMetricsLabel.text = "-"
            self._observedPoint = state
            self.onSimilarityPointChanged()
            if old is not None and state[3] is not old[3] and p.similarityAutoUpdate:
                self.logic.requestSimilarity()  # the map goes where it is now asked for
        if p.strokeSegmentation is not self._strokeNode:
            self.followStrokeSegmentation(p.strokeSegmentation)

    # ------------------------------------------------------------------ actions (PanelWidgetMixin hooks)
    def _canRun(self, action) -> bool:
        p = self._parameterNode
        if p is None:
            return False
        if action == "train_probe":
            return len(self.trainPairs) >= lib.MIN_PROBE_CASES  # one case is held out
        if action == "similarity":
            return bool(p.inputVolume and p.similarityPoint and p.similarityPoint.GetNumberOfControlPoints())
        if action == "strokes":
            return bool(p.inputVolume and p.strokeSegmentation and p.strokeForegroundSegmentId
                        and p.strokeBackgroundSegmentId)
        return bool(p.inputVolume)

    def confirmAction(self, action) -> bool:
        """The official checkpoint, when chosen and not cached yet: what, from where, to where; asked
        before anything waits. Declining runs nothing."""
        self._downloadApproved = False
        p = self._parameterNode
        if p.weightsChoice != lib.WEIGHTS_OFFICIAL or self.logic.officialWeightsCached():
            return True
        if not slicer.util.confirmOkCancelDisplay(self.logic.officialDownloadText(),
                                                  windowTitle=_("Download NEMESIS weights")):
            raise ValueError(_("The official checkpoint is not downloaded; choose the demo weights or a file."))
        self._downloadApproved = True
        return True

    def startAction(self, action):
        """The official checkpoint's download first when the user agreed to it, else ``action``."""
        if getattr(self, "_downloadApproved", False):
            self._downloadApproved = False
            return self.logic.startOfficialWeightsDownload(followUp=action)
        return self.submitAction(action)

    def submitAction(self, action):
        p = self._parameterNode
        weights = self.weightsArgument()
        common = dict(weights=weights, device=p.device or "auto", precision=p.precision or "fp32")
        if action == "organs":
            organs = [name for name, fieldName in ORGAN_FIELDS.items() if getattr(p, fieldName)]
            if not organs:
                raise ValueError(_("Choose at least one organ."))
            return self.logic.submit("organs", p.inputVolume, organs=organs, probe=p.probePath or None, **common)
        if action == "pca":
            return self.logic.submit("pca", p.inputVolume, **common)
        if action == "reconstruct":
            point = self.logic.pointLPSFromCrosshair()
            return self.logic.submit("reconstruct", p.inputVolume, point_lps=point,
                                     mask_ratio=(p.maskRatioPlane, p.maskRatioAxis), noise_std=p.noiseStd, **common)
        if action == "atypicality":
            return self.logic.submit("atypicality", p.inputVolume, draws=p.atypicalityDraws, **common)
        if action == "similarity":
            point = self.logic.pointLPSFromMarkups(p.similarityPoint)
            self.logic.cancelPendingSimilarity()  # this job is for the point as it is now
            try:
                return self.logic.submitSimilarity(p.inputVolume, point, p.similarityTarget,
                                                   markBestMatch=p.similarityMarkBestMatch, **common)
            except lib.SimilarityProblem as exc:
                self.showSimilarityProblem(str(exc))
                return None
        if action == "train_probe":
            return self.logic.trainProbe(list(self.trainPairs), weights=weights, device=p.device or "auto",
                                         epochs=p.probeEpochs, holdout_fraction=p.probeHoldout, blocking=False)
        if action == "strokes":
            self._strokesDebouncer.cancel()  # this job is for the strokes as they are now
            try:
                return self.logic.segmentFromStrokes(p.inputVolume, p.strokeSegmentation,
                                                     p.strokeForegroundSegmentId, p.strokeBackgroundSegmentId,
                                                     p.strokeOutputSegmentation, blocking=False, **common)
            except lib.StrokesProblem as exc:
                # the annotator's next step, said in the panel: no pop-up, also while updating as they paint
                self.showError(str(exc))
                return None
        raise ValueError(f"unknown action {action}")

    def weightsArgument(self) -> dict:
        """The weights choice as worker parameters."""
        p = self._parameterNode
        return self.logic.weightsArgument(p.weightsChoice, p.weightsPath)

    def onTaskFinished(self, task) -> None:
        if getattr(task, "kind", None) == "download" and task.state == "done" and task.follow_up:
            self.task = None
            self.setState("idle")
            self.appendLog(f"Weights ready: {task.result}")
            self.onActionButton(task.follow_up)  # the action the download was for
            return
        if (getattr(task, "action", None) == "similarity" and task.state == "failed"
                and (task.error or {}).get("kind") == "input"):
            # e.g. the point dragged out of the CT while the map follows it: a sentence, no pop-up
            self.task = None
            self.setState("idle")
            self.showSimilarityProblem((task.error or {}).get("message", ""))
            self.onTaskEnded(task)
            return
        PanelWidgetMixin.onTaskFinished(self, task)

    def onTaskDone(self, task) -> None:
        if task.action == "reconstruct":
            scalars = getattr(task.imported, "scalars", {}) or {}
            self.ui.reconstructMetricsLabel.text = lib.metrics_text(scalars)
        if task.action == "atypicality":
            self.appendLog(lib.atypicality_text(getattr(task.imported, "scalars", {}) or {}))
        notes = getattr(task.imported, "notes", {}) or {}
        if task.action == "organs" and notes.get("organ_maps"):
            self.appendLog(notes["organ_maps"])  # what a value of the maps means
        if task.action == "train_probe" and self.logic.lastProbePath:
            self.ui.probePathLineEdit.currentPath = self.logic.lastProbePath
            self.appendLog(f"Probe saved to {self.logic.lastProbePath}; organ maps now use it.")
        target = getattr(task.imported, "targetVolumeNode", None)
        if task.action == "similarity" and target is not None:
            text = lib.best_match_text(task.imported.scalars, getattr(task.imported, "bestMatchRAS", None),
                                       target.GetName())
            self.ui.statusLabel.text = text
            self.appendLog(text)
        if task.action == "strokes":
            node = task.imported.nodes.get("segmentation")
            p = self._parameterNode
            if node is not None and p is not None and p.strokeOutputSegmentation is None:
                p.strokeOutputSegmentation = node  # the next run replaces its segment there
            self.appendLog(lib.strokes_text(task.imported.scalars, node.GetName() if node is not None else ""))

    def onTaskEnded(self, task) -> None:
        if self.logic.similarityPending() or self._strokesDebouncer.pending:
            self.timer.start()

    def onIdlePoll(self) -> bool:
        """Start the debounced similarity job when the point has moved, or the stroke segmentation
        job when strokes were painted (auto updates)."""
        p = self._parameterNode
        if p is not None and p.similarityAutoUpdate:
            try:
                task = self.logic.pumpSimilarity()
            except lib.SimilarityProblem as exc:  # the point left the CT: said in the status line
                self.showSimilarityProblem(str(exc))
                task = None
            except Exception as exc:  # e.g. a volume without image data: say so, keep the panel alive
                self.showError(str(exc))
                task = None
            if task is not None:
                self.track(task)
        if self.task is None and p is not None and self._strokesDebouncer.due():
            self._strokesDebouncer.take()
            if p.strokesAutoUpdate and self._canRun("strokes"):
                # as the button does: the worker's check first if needed, errors in the status line
                self.onActionButton("strokes")
        return self.task is not None or self.logic.similarityPending() or self._strokesDebouncer.pending

    # ------------------------------------------------------------------ similarity / probe pairs
    def onSimilarityPointChanged(self) -> None:
        """Observe the chosen point (auto update on) or stop observing it."""
        p = self._parameterNode
        if p is None:
            return
        point = p.similarityPoint
        self.observeMarkups(point)
        if p.similarityAutoUpdate and point and p.inputVolume:
            try:
                self.logic.observeSimilarityPoint(point, p.inputVolume, params=dict(
                    weights=self.logic.weightsArgument(p.weightsChoice, p.weightsPath), device=p.device or "auto",
                    precision=p.precision or "fp32"), targetVolumeNode=p.similarityTarget,
                    markBestMatch=p.similarityMarkBestMatch)
            except ValueError as exc:
                self.showError(str(exc))
                return
        else:
            self.logic.stopObservingSimilarityPoint()

    def observeMarkups(self, node) -> None:
        """Buttons follow the point: "Compute similarity" needs a placed control point."""
        old = getattr(self, "_markupsNode", None)
        if old is node:
            return
        if old is not None:
            for event in (old.PointAddedEvent, old.PointRemovedEvent, old.PointPositionDefinedEvent,
                          old.PointPositionUndefinedEvent):
                self.removeObserver(old, event, self.onMarkupsPointsChanged)
        self._markupsNode = node
        if node is not None:
            for event in (node.PointAddedEvent, node.PointRemovedEvent, node.PointPositionDefinedEvent,
                          node.PointPositionUndefinedEvent):
                self.addObserver(node, event, self.onMarkupsPointsChanged)

    def onMarkupsPointsChanged(self, caller=None, event=None) -> None:
        self.updateButtons()

    def showSimilarityProblem(self, message) -> None:
        """What keeps the similarity from running for the point as it is (one sentence), in the
        status line and the log; the next run for a good point replaces it."""
        self.ui.statusLabel.text = message
        self.appendLog(message)

    def onSimilarityRequested(self) -> None:
        """The logic has a debounced similarity request: the timer pumps it, also when idle."""
        self.updateButtons()
        if self.timer is not None:
            self.timer.start()

    # ------------------------------------------------------------------ segment from strokes
    def followStrokeSegmentation(self, node) -> None:
        """Observe the stroke segmentation (paint strokes -> a debounced update) and offer its
        segments in the foreground and background selectors."""
        old = self._strokeNode
        if old is not None:
            self.removeObserver(old, slicer.vtkSegmentation.SourceRepresentationModified, self.onStrokesPainted)
            for event in (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved):
                self.removeObserver(old, event, self.onStrokeSegmentsChanged)
        self._strokeNode = node
        self._strokesDebouncer.cancel()
        if node is not None:
            # the node re-invokes its segmentation's events: painting changes the source representation
            self.addObserver(node, slicer.vtkSegmentation.SourceRepresentationModified, self.onStrokesPainted)
            for event in (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved):
                self.addObserver(node, event, self.onStrokeSegmentsChanged)
        self.syncStrokeSelectors()

    def syncStrokeSelectors(self) -> None:
        """Show the stroke segmentation in both segment selectors with the chosen segments, or, where
        a choice is missing or gone, a segment named like background for the background and
        another one for the foreground."""
        p = self._parameterNode
        node = p.strokeSegmentation if p is not None else None
        chosen = (p.strokeForegroundSegmentId or "", p.strokeBackgroundSegmentId or "") if p is not None else ("", "")
        ids = ("", "")
        if node is not None:
            seg = node.GetSegmentation()
            ids = lib.default_stroke_segments([(seg.GetNthSegmentID(i), seg.GetNthSegment(i).GetName())
                                               for i in range(seg.GetNumberOfSegments())], *chosen)
        self._syncingStrokes = True
        try:
            for selector, sid in zip((self.ui.strokeForegroundSelector, self.ui.strokeBackgroundSelector), ids):
                selector.setCurrentNode(node)
                selector.setCurrentSegmentID(sid)
        finally:
            self._syncingStrokes = False
        if p is not None and ids != chosen:
            p.strokeForegroundSegmentId, p.strokeBackgroundSegmentId = ids

    def onStrokeSegmentChanged(self, *args) -> None:
        p = self._parameterNode
        if p is None or self._syncingStrokes:
            return
        p.strokeForegroundSegmentId = self.ui.strokeForegroundSelector.currentSegmentID() or ""
        p.strokeBackgroundSegmentId = self.ui.strokeBackgroundSelector.currentSegmentID() or ""

    def onStrokeSegmentsChanged(self, caller=None, event=None) -> None:
        """A segment added or removed: once the selectors have listed it, fill a missing choice."""
        qt.QTimer.singleShot(0, self.syncStrokeSelectors)

    def onStrokesPainted(self, caller=None, event=None) -> None:
        """Strokes changed: with "Update as I paint", a run once painting pauses (the widget's timer
        starts it; the work is the worker's)."""
        p = self._parameterNode
        if p is None or not p.strokesAutoUpdate:
            return
        self._strokesDebouncer.request(True)
        if self.timer is not None:
            self.timer.start()

    def onAddTrainPair(self) -> None:
        p = self._parameterNode
        if not (p.trainVolume and p.trainSegmentation):
            self.showError(_("Choose a volume and its segmentation first."))
            return
        pair = (p.trainVolume, p.trainSegmentation)
        if any(v is pair[0] and s is pair[1] for v, s in self.trainPairs):
            self.showError(_("This case is already in the list."))
            return
        self.showError("")
        self.trainPairs.append(pair)
        self.showTrainPairs()
        self.updateButtons()

    def onClearTrainPairs(self) -> None:
        self.trainPairs = []
        self.showTrainPairs()
        self.updateButtons()

    def showTrainPairs(self) -> None:
        box = self.ui.trainPairsListWidget
        box.clear()
        for volume, segmentation in self.trainPairs:
            box.addItem(f"{volume.GetName()}  +  {segmentation.GetName()}")


#
# NemesisSlicerLogic
#


class KeptVolumeFiles:
    """Volumes written as files for the worker, each written again only when its volume changed:
    the worker then finds the file in its cache (same path, size and time) instead of reading and
    hashing the CT again after every stroke or every move of a point."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.kept = {}  # volume node ID -> (volume key, folder, path)

    def path(self, volumeNode) -> str:
        from pantheon import slicerbridge as bridge
        if volumeNode.GetImageData() is None:
            raise ValueError(f"{volumeNode.GetName()} has no image data.")
        key = (volumeNode.GetImageData().GetMTime(), tuple(ijkToRASArray(volumeNode).ravel().tolist()))
        kept = self.kept.get(volumeNode.GetID())
        if kept is not None and kept[0] == key and os.path.isfile(kept[2]):
            return kept[2]
        if kept is not None:
            lib.remove_tree(kept[1])
        folder = lib.private_temp_dir(self.prefix)
        try:
            path = str(bridge.export_volume(volumeNode, os.path.join(folder, "input.nrrd")))
        except Exception:
            lib.remove_tree(folder)
            raise
        self.kept[volumeNode.GetID()] = (key, folder, path)
        return path

    def keepOnly(self, volumeNodes) -> None:
        ids = {n.GetID() for n in volumeNodes}
        for nodeId in [i for i in self.kept if i not in ids]:
            lib.remove_tree(self.kept.pop(nodeId)[1])

    def clear(self) -> None:
        for _key, folder, _path in self.kept.values():
            lib.remove_tree(folder)
        self.kept = {}


class NemesisSlicerLogic(WorkerLogicMixin, ScriptedLoadableModuleLogic):
    """GUI-free NEMESIS logic; usable from the Python console, scripts and tests.

    Owns one long-lived worker client (created on first use, never at import; see
    :class:`pantheon.slicerbridge.panel.WorkerLogicMixin`). ``submit`` is non-blocking (returns a
    ``NemesisTask`` to poll from the GUI thread); ``process`` blocks.
    """

    modelName = "NEMESIS"
    logger = log

    def __init__(self, workerPython: Optional[str] = None, clientFactory=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.initWorker(workerPython, clientFactory)
        self.lastProbePath = None
        self._similarity = None  # the observed point: markups node, volume, target, params, observer tags
        self._similarityDebouncer = lib.Debouncer(0.3)
        self._similarityTask = None
        self.similarityRequested = None  # called after each debounced request (the widget starts its timer)
        self.lastIgnoredSegments = []  # segments left out of the last probe training
        self._strokesFiles = KeptVolumeFiles("nemesis-strokes-ct-")  # the CT file stroke updates reuse
        self.lastStrokesResult = None  # ImportedResult of the last stroke segmentation
        self._similarityFiles = KeptVolumeFiles("nemesis-similarity-ct-")  # CT files a moving point reuses
        self.lastSimilarityResult = None  # ImportedResult of the last similarity over another CT

    def getParameterNode(self):
        return NemesisSlicerParameterNode(super().getParameterNode())

    def shutdown(self) -> None:
        self.stopObservingSimilarityPoint()
        self.clearStrokesInput()
        self.clearSimilarityInputs()
        WorkerLogicMixin.shutdown(self)

    # ------------------------------------------------------------------ weights
    def weightsArgument(self, choice, path=None, allowDownload=False) -> dict:
        """UI weights choice -> worker parameters (card id or checkpoint path, download flags)."""
        return lib.weights_params(choice, path, allow_download=allowDownload)

    def officialWeightsCached(self) -> bool:
        try:
            from pantheon.registry import cached_path, get_card
            return cached_path(get_card(lib.OFFICIAL_CARD)).is_file()
        except Exception:
            return False

    def downloadOfficialWeights(self, progress=None, cancel=None):
        """Download (with checksum recording) the official checkpoint into Pantheon's weights cache.
        Blocking; network and hashing only (no torch). Returns the file path."""
        from pantheon.registry import get_card, resolve_weights
        return str(resolve_weights(get_card(lib.OFFICIAL_CARD), allow_download=True, trust_unverified=True,
                                   progress=progress, cancel=cancel))

    def startOfficialWeightsDownload(self, followUp=None):
        """Non-blocking download on a background thread; returns a task with the NemesisTask interface."""
        return lib.ThreadTask(followUp or "download",
                              lambda progress, cancel: self.downloadOfficialWeights(progress, cancel), followUp)

    def officialDownloadText(self) -> str:
        try:
            from pantheon.registry import cached_path, get_card
            card = get_card(lib.OFFICIAL_CARD)
            url, dest = card.url, cached_path(card)
        except Exception:
            url, dest = "Hugging Face (whilethis/NEMESIS)", "Pantheon's weights cache"
        return (f"Download the official NEMESIS checkpoint ({lib.OFFICIAL_SIZE_TEXT})?\n\nFrom: {url}\nTo: {dest}\n\n"
                "The download runs in the worker with progress in this panel and can be cancelled. "
                "No SHA-256 is published for this file yet: the checksum computed after download is "
                "recorded next to it and checked on every later use.")

    # ------------------------------------------------------------------ points
    @staticmethod
    def pointLPSFromRAS(ras) -> list:
        return lib.ras_to_lps(ras)

    def pointLPSFromCrosshair(self) -> list:
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is None:
            raise ValueError("No crosshair in the scene; place the crosshair (Shift + move) first.")
        return lib.ras_to_lps(crosshair.GetCrosshairRAS())

    def pointLPSFromMarkups(self, markupsNode, index: int = 0) -> list:
        if markupsNode is None or markupsNode.GetNumberOfControlPoints() <= index:
            raise ValueError("Place a point first (Similarity: point).")
        ras = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(index, ras)
        return lib.ras_to_lps(ras)

    # ------------------------------------------------------------------ running jobs
    def buildParams(self, action, **kw) -> dict:
        return lib.build_params(action, **kw)

    def submit(self, action, inputVolumeNode, params=None, extraInputs=None, show=True, **kw):
        """Start ``action`` on ``inputVolumeNode`` in the worker; returns a NemesisTask to poll."""
        if action not in lib.ACTIONS:
            raise ValueError(f"Unknown action {action!r}; use one of {', '.join(lib.ACTIONS)}.")
        if inputVolumeNode is None and action != "train_probe":
            raise ValueError("Choose an input volume.")
        full = dict(params) if params is not None else self.buildParams(action, **kw)
        from pantheon import slicerbridge as bridge
        tmp = lib.private_temp_dir("nemesis-")
        try:
            inputs = {}
            if inputVolumeNode is not None:
                inputs["volume"] = str(bridge.export_volume(inputVolumeNode, os.path.join(tmp, "input.nrrd")))
            inputs.update(extraInputs or {})
        except Exception:
            lib.remove_tree(tmp)
            raise

        def onResult(result):
            if action == "train_probe":
                self.lastProbePath = lib.probe_path_from_result(result)
                return result
            # a re-run of the same action reuses that action's output nodes (same IDs)
            return bridge.import_result(result, inputVolumeNode, action, show=show)

        return self.startJob(action, lib.ACTIONS[action], full, inputs, tmp, onResult, context=inputVolumeNode)

    def process(self, action, inputVolumeNode, progress=None, cancel=None, timeout=None, show=True, params=None, **kw):
        """Blocking: export, run in the worker, import the results; returns the ImportedResult."""
        return self.wait(self.submit(action, inputVolumeNode, params=params, show=show, **kw),
                         progress, cancel, timeout)

    def trainProbe(self, pairs, weights=None, device="auto", epochs=100, holdout_fraction=0.2, outputFolder=None,
                   blocking=True, progress=None, cancel=None):
        """Train an organ probe from (volume node, segmentation node) pairs (segment names or SNOMED
        codes give the BTCV organ); returns the result dict (probe path, metrics)."""
        from pantheon import slicerbridge as bridge
        pairs = [(v, s) for v, s in pairs if v is not None and s is not None]
        if len(pairs) < lib.MIN_PROBE_CASES:
            raise ValueError(f"Add at least {lib.MIN_PROBE_CASES} volumes with their segmentations "
                             "(one case is held out to measure the probe).")
        outputFolder = outputFolder or os.path.join(os.path.expanduser("~"), ".cache", "pantheon", "probes",
                                                    time.strftime("nemesis-probe-%Y%m%d-%H%M%S"))
        os.makedirs(outputFolder, exist_ok=True)
        staging = lib.private_temp_dir("nemesis-train-")
        inputs = {}
        try:
            self.lastIgnoredSegments = []
            for n, (volumeNode, segmentationNode) in enumerate(pairs):
                inputs[f"image_{n}"] = str(bridge.export_volume(volumeNode, os.path.join(staging, f"image_{n}.nrrd")))
                # the probe's 8 organs; other structures (a full BTCV segmentation has 13) are left out
                ignored = []
                inputs[f"label_{n}"] = str(bridge.export_segmentation(segmentationNode, volumeNode,
                                                                      os.path.join(staging, f"label_{n}.nrrd"),
                                                                      ignored=ignored))
                if ignored:
                    self.lastIgnoredSegments.extend(ignored)
                    self.log(f"{segmentationNode.GetName()}: not probe organs, left out: {', '.join(ignored)}")
            params = dict(weights or lib.weights_params(lib.WEIGHTS_DEMO))
            params.update(device=device, epochs=int(epochs), holdout_fraction=float(holdout_fraction),
                          output=str(outputFolder))
            task = self.submit("train_probe", None, params=params, extraInputs=inputs)
        except Exception:
            lib.remove_tree(staging)
            raise
        task.on_finish = lambda t: lib.remove_tree(staging)
        if not blocking:
            return task
        return self.wait(task, progress, cancel)

    # ------------------------------------------------------------------ segment from strokes
    def segmentFromStrokes(self, inputVolumeNode, strokeSegmentationNode, foregroundSegmentId, backgroundSegmentId,
                           outputSegmentationNode=None, blocking=True, progress=None, cancel=None, timeout=None,
                           params=None, **kw):
        """Segment the structure marked by two segments of ``strokeSegmentationNode`` (painted with the
        Segment Editor on ``inputVolumeNode``): ``foregroundSegmentId`` inside it,
        ``backgroundSegmentId`` around it; voxels in both count as unlabelled. The result is one
        segment named as the worker names it ("Segmented from strokes") in
        ``outputSegmentationNode`` (None: this CT's strokes output node, made on the first run), on
        the CT's own voxels; a later run for the same stroke segmentation and foreground segment
        replaces it. The stroke segmentation is never written. Runs in the worker, which keeps this
        CT's prepared features: a run after a new stroke costs no encoder pass (note
        ``strokes_cache``: hit). ``kw``: weights, device, precision, stride (see ``buildParams``).

        Blocking: returns the ImportedResult (``nodes["segmentation"]``, ``segmentId``);
        ``blocking=False``: the task to poll. Strokes without foreground or background voxels raise
        ``lib.StrokesProblem`` (a ValueError) in one sentence before anything runs."""
        from pantheon import slicerbridge as bridge
        if inputVolumeNode is None:
            raise ValueError("Choose an input volume.")
        if strokeSegmentationNode is None:
            raise lib.StrokesProblem("Choose the segmentation that holds the strokes.")
        if not foregroundSegmentId or not backgroundSegmentId:
            raise lib.StrokesProblem("Choose the foreground and the background stroke segments.")
        if foregroundSegmentId == backgroundSegmentId:
            raise lib.StrokesProblem("Choose different segments for the foreground and the background strokes.")
        if outputSegmentationNode is strokeSegmentationNode:
            raise lib.StrokesProblem("Choose another output segmentation than the strokes: results must not become "
                                     "strokes.")
        segmentation = strokeSegmentationNode.GetSegmentation()
        names = []
        for sid in (foregroundSegmentId, backgroundSegmentId):
            segment = segmentation.GetSegment(sid)
            if segment is None:
                raise lib.StrokesProblem(f"The segment {sid!r} is not in {strokeSegmentationNode.GetName()!r}.")
            names.append(segment.GetName())
        masks = bridge.segment_masks(strokeSegmentationNode, inputVolumeNode,
                                     [foregroundSegmentId, backgroundSegmentId])
        strokes = lib.stroke_label_map(masks[foregroundSegmentId], masks[backgroundSegmentId], *names)
        del masks
        full = dict(params) if params is not None else self.buildParams("strokes", probability=False, **kw)
        tmp = lib.private_temp_dir("nemesis-strokes-")
        try:
            inputs = {"volume": self._strokesVolumeFile(inputVolumeNode),
                      "strokes": str(bridge.write_label_array(strokes, inputVolumeNode,
                                                              os.path.join(tmp, "strokes.nrrd")))}
        except Exception:
            lib.remove_tree(tmp)
            raise
        key = f"{strokeSegmentationNode.GetID()}/{foregroundSegmentId}"  # which earlier result this run replaces

        def onResult(result):
            from pathlib import Path

            from pantheon.io import read_volume
            spec = (result.get("outputs") or {}).get("segmentation")
            if not spec:
                raise ValueError("The worker returned no segmentation.")
            label = read_volume(Path(result["output_dir"]) / spec["file"])
            segment = (spec.get("segments") or [{}])[0]
            node = outputSegmentationNode
            if node is None or node.GetScene() is None:
                node = bridge.output_node(inputVolumeNode, "strokes", "segmentation", exclude=[strokeSegmentationNode])
            sid = bridge.import_segment(label, node, inputVolumeNode, segment.get("name") or "Segmented from strokes",
                                        segment.get("color"), key=key)
            imported = bridge.ImportedResult(nodes={"segmentation": node}, scalars=dict(result.get("scalars") or {}),
                                             notes=dict(result.get("notes") or {}))
            imported.segmentId = sid
            self.lastStrokesResult = imported
            return imported

        task = self.startJob("strokes", lib.ACTIONS["strokes"], full, inputs, tmp, onResult, context=inputVolumeNode)
        if not blocking:
            return task
        return self.wait(task, progress, cancel, timeout)

    def _strokesVolumeFile(self, volumeNode) -> str:
        """The CT as a file for the worker, written again only when the volume changed (one CT kept)."""
        path = self._strokesFiles.path(volumeNode)
        self._strokesFiles.keepOnly((volumeNode,))
        return path

    def clearStrokesInput(self) -> None:
        """Remove the CT file kept for stroke updates (scene closed, worker stopped)."""
        if hasattr(self, "_strokesFiles"):
            self._strokesFiles.clear()

    # ------------------------------------------------------------------ similarity (one CT or across two)
    def submitSimilarity(self, inputVolumeNode, point_lps, targetVolumeNode=None, markBestMatch=True, show=True,
                         params=None, **kw):
        """Similarity to the NEMESIS token at ``point_lps`` (world LPS mm) of ``inputVolumeNode``.

        ``targetVolumeNode`` None (or the input itself): the map over the same CT, as
        ``submit("similarity")``. Another CT: the map over that CT, on its own voxels, as its output
        (action "similarity", shown as its foreground overlay with the same colour map and window),
        with its best match inside the body: ``imported.bestMatchRAS`` (world RAS mm), scalar
        ``best_similarity`` and, with ``markBestMatch``, a locked markups point "best match" in the
        target (``imported.nodes["best_match"]``). The worker keeps both scans' features: a moved
        point costs no encoder pass for either (notes ``query_feature_cache`` and
        ``target_feature_cache``: hit). Non-blocking: returns the task to poll (``wait`` gives the
        ImportedResult). A point outside the input CT raises :class:`lib.SimilarityProblem` (one
        sentence) before anything is written or sent. ``kw``: weights, device, precision, stride."""
        from pantheon import slicerbridge as bridge
        if inputVolumeNode is None:
            raise ValueError("Choose an input volume.")
        point = self._checkPointInside(inputVolumeNode, point_lps)
        if targetVolumeNode is None or targetVolumeNode is inputVolumeNode:
            self._keepSimilarityInputs(())  # today's single-scan job exports its CT itself
            if params is not None:
                return self.submit("similarity", inputVolumeNode, params=dict(params, point_lps=point), show=show)
            return self.submit("similarity", inputVolumeNode, show=show, point_lps=point, **kw)
        if params is not None:
            full = dict(params, point_lps=point)
        else:
            full = self.buildParams("similarity", point_lps=point, **kw)
        # the same files while a CT is unchanged: the worker's read cache answers, no re-reading or hashing
        inputs = {"volume": self._similarityVolumeFile(inputVolumeNode),
                  "target": self._similarityVolumeFile(targetVolumeNode)}
        self._keepSimilarityInputs((inputVolumeNode, targetVolumeNode))
        tmp = lib.private_temp_dir("nemesis-similarity-")

        def onResult(result):
            imported = bridge.import_result(result, targetVolumeNode, "similarity", show=show)
            imported.queryVolumeNode, imported.targetVolumeNode = inputVolumeNode, targetVolumeNode
            imported.bestMatchRAS = None
            ras = imported.notes.get("best_match_ras")
            if ras:
                local = [float(v) for v in json.loads(ras)]  # in the target's own frame, as its voxels
                world = list(local)
                if targetVolumeNode.GetParentTransformNode() is not None:
                    targetVolumeNode.TransformPointToWorld(local, world)
                imported.bestMatchRAS = world
                if markBestMatch:
                    imported.nodes["best_match"] = self._markBestMatch(targetVolumeNode, local,
                                                                       imported.scalars.get("best_similarity"))
            if not markBestMatch:
                bridge.remove_outputs(targetVolumeNode, BEST_MATCH)
            self.lastSimilarityResult = imported
            return imported

        return self.startJob("similarity", lib.ACTIONS["similarity"], full, inputs, tmp, onResult,
                             context=targetVolumeNode)

    def _checkPointInside(self, volumeNode, point_lps) -> list:
        """``point_lps`` (world) in the volume's own frame, where the worker reads its voxels;
        :class:`lib.SimilarityProblem` when it lies outside the volume."""
        import vtk
        if volumeNode.GetImageData() is None:
            raise ValueError(f"{volumeNode.GetName()} has no image data.")
        point = [float(v) for v in point_lps[:3]]
        if volumeNode.GetParentTransformNode() is not None:
            local = [0.0, 0.0, 0.0]
            volumeNode.TransformPointFromWorld(lib.lps_to_ras(point), local)
            point = lib.ras_to_lps(local)
        m = vtk.vtkMatrix4x4()
        volumeNode.GetRASToIJKMatrix(m)
        rows = [[m.GetElement(r, c) for c in range(4)] for r in range(4)]
        problem = lib.point_outside_text(point, rows, volumeNode.GetImageData().GetDimensions(),
                                         volumeNode.GetName())
        if problem:
            raise lib.SimilarityProblem(problem)
        return point

    def _markBestMatch(self, targetVolumeNode, rasLocal, score):
        """The target's "best match" point (one control point, locked: it is a result, not a handle),
        reused run after run and under the target's transform like its other outputs."""
        from pantheon import slicerbridge as bridge
        node = bridge.output_node(targetVolumeNode, BEST_MATCH, BEST_MATCH, "vtkMRMLMarkupsFiducialNode",
                                  kind="point")
        label = f"{BEST_MATCH} {float(score):.2f}" if isinstance(score, (int, float)) else BEST_MATCH
        wasModifying = node.StartModify()
        try:
            if node.GetNumberOfControlPoints() == 0:
                node.AddControlPoint(*rasLocal, label)
            else:
                node.SetNthControlPointPosition(0, *rasLocal)
                node.SetNthControlPointLabel(0, label)
            node.SetLocked(True)
        finally:
            node.EndModify(wasModifying)
        display = node.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor(*BEST_MATCH_COLOR)  # not the query point's default colour
        return node

    def _similarityVolumeFile(self, volumeNode) -> str:
        """The CT as a file for the worker, written again only when the volume changed."""
        return self._similarityFiles.path(volumeNode)

    def _keepSimilarityInputs(self, volumeNodes) -> None:
        """Drop the kept files of CTs no longer compared (a third CT chosen, a volume removed)."""
        self._similarityFiles.keepOnly(volumeNodes)

    def clearSimilarityInputs(self) -> None:
        """Remove the CT files kept for similarity updates (scene closed, worker stopped)."""
        if hasattr(self, "_similarityFiles"):
            self._similarityFiles.clear()

    # ------------------------------------------------------------------ similarity point observer
    def observeSimilarityPoint(self, markupsNode, inputVolumeNode, params=None, delay_s: float = 0.3,
                               targetVolumeNode=None, markBestMatch=True) -> None:
        """Re-run similarity whenever the point moves (debounced; features come from the worker's cache),
        over ``targetVolumeNode`` when given (see :meth:`submitSimilarity`). Call ``pumpSimilarity()``
        periodically (the widget's timer does) to start due jobs."""
        self.stopObservingSimilarityPoint()
        # MRML's own event ids reach a Python observer as the string 'NoEvent', so the event that
        # fired is told by the callback it reached: dragging restarts the debounce, while the end of
        # an interaction or a newly placed point asks for an immediate update
        tags = [markupsNode.AddObserver(markupsNode.PointModifiedEvent,
                                        lambda caller, event: self._onSimilarityPointEvent(caller, False))]
        for event in (markupsNode.PointEndInteractionEvent, markupsNode.PointPositionDefinedEvent):
            tags.append(markupsNode.AddObserver(event,
                                                lambda caller, event: self._onSimilarityPointEvent(caller, True)))
        self._similarity = {"point": markupsNode, "volume": inputVolumeNode, "target": targetVolumeNode,
                            "markBestMatch": bool(markBestMatch), "params": dict(params or {}), "tags": tags}
        self._similarityDebouncer.delay_s = delay_s

    def stopObservingSimilarityPoint(self) -> None:
        if self._similarity is not None:
            for tag in self._similarity["tags"]:
                self._similarity["point"].RemoveObserver(tag)
            self._similarity = None
        self._similarityDebouncer.cancel()

    def cancelPendingSimilarity(self) -> None:
        self._similarityDebouncer.cancel()

    def requestSimilarity(self) -> bool:
        """Ask for a run now for the observed point as it is (e.g. another "Show in" CT was chosen);
        False when no placed point is observed."""
        if self._similarity is None:
            return False
        return self._onSimilarityPointEvent(self._similarity["point"], True)

    def _onSimilarityPointEvent(self, caller, immediate: bool) -> bool:
        if self._similarity is None or caller.GetNumberOfControlPoints() == 0:
            return False
        try:
            point = self.pointLPSFromMarkups(caller)
        except ValueError:
            return False  # the point is not placed yet
        self._similarityDebouncer.request(point, immediate=immediate)
        if self.similarityRequested is not None:
            self.similarityRequested()
        return True

    def similarityPending(self) -> bool:
        return self._similarityDebouncer.pending

    def pumpSimilarity(self, now: Optional[float] = None):
        """Start the debounced similarity job if one is due and none is running; returns the new task.
        A point outside the input CT raises :class:`lib.SimilarityProblem` (the request is dropped)."""
        if self._similarity is None or not self._similarityDebouncer.due(now):
            return None
        if self._similarityTask is not None and not self._similarityTask.done:
            return None  # the newest point waits for the running job
        observed = self._similarity
        point = self._similarityDebouncer.take()
        self._similarityTask = self.submitSimilarity(observed["volume"], point, observed["target"],
                                                     markBestMatch=observed["markBestMatch"], **observed["params"])
        return self._similarityTask


def ijkToRASArray(volumeNode):
    """The node's IJKToRAS matrix as a 4x4 numpy array."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


#
# NemesisSlicerTest
#


class NemesisSlicerTest(ScriptedLoadableModuleTest):
    """Self-test, run by CTest (slicer_add_python_unittest) and from the Reload & Test button.

    The end-to-end part makes a synthetic abdominal CT (with the worker's Python), runs organ maps
    and the feature PCA with the bundled demo weights and checks the heatmaps lie on the input's
    voxels. It is skipped, with a message, when the worker's Python lacks PyTorch/MONAI, unless
    PANTHEON_SELFTEST_REQUIRE_WORKER=1.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LogicInstantiates()
        self.setUp()
        self.test_PointsAndWeights()
        self.setUp()
        self.test_OrganMapsAndPCAOnPhantom()

    def test_LogicInstantiates(self):
        self.delayDisplay("Starting the test")
        logic = NemesisSlicerLogic()
        self.assertIsInstance(logic, ScriptedLoadableModuleLogic)
        self.assertEqual(logic.moduleName, "NemesisSlicer")
        self.assertIsNone(logic._client)  # the worker starts on first use only
        self.delayDisplay("Test passed")

    def test_PointsAndWeights(self):
        logic = NemesisSlicerLogic()
        self.assertEqual(logic.pointLPSFromRAS([1.0, -2.0, 3.0]), [-1.0, 2.0, 3.0])
        self.assertEqual(logic.weightsArgument("demo"), {"weights": lib.DEMO_CARD})
        self.assertEqual(logic.weightsArgument("official")["weights"], lib.OFFICIAL_CARD)
        self.delayDisplay("Points and weights: passed")

    def test_OrganMapsAndPCAOnPhantom(self):
        import numpy as np

        logic = NemesisSlicerLogic()
        try:
            skip = selftest_skip_reason(logic, slicer.mrmlScene)
            if skip:
                self.delayDisplay(skip)
                return
            self.delayDisplay("Making a synthetic abdominal CT")
            folder = lib.private_temp_dir("nemesis-selftest-")
            try:
                ctPath, _ = lib.make_phantom_files(folder, logic.workerPythonExecutable(), seed=3, oblique=10.0,
                                                   shape=(48, 64, 64))
                volumeNode = slicer.util.loadVolume(ctPath, {"name": "NemesisPhantom", "show": False})
            finally:
                lib.remove_tree(folder)
            self.delayDisplay("Organ maps with the demo weights")
            organs = logic.process("organs", volumeNode, organs=["liver", "spleen"], device="cpu", show=False)
            self.delayDisplay("Feature PCA map")
            pca = logic.process("pca", volumeNode, device="cpu", show=False)
            ijkToRAS = ijkToRASArray(volumeNode)
            dims = volumeNode.GetImageData().GetDimensions()
            self.assertGreaterEqual(len(organs.nodes), 2)
            self.assertIn("pca", pca.nodes)
            for node in list(organs.nodes.values()) + list(pca.nodes.values()):
                if not node.IsA("vtkMRMLVolumeNode"):
                    continue
                self.assertEqual(node.GetImageData().GetDimensions(), dims)
                np.testing.assert_allclose(ijkToRASArray(node), ijkToRAS, atol=1e-4)
            self.delayDisplay("Test passed")
        finally:
            logic.shutdown()
