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
"""

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
<p>Organ maps, a reconstruction explorer (mask ratio and noise at the crosshair), a feature PCA map,
point similarity (move the point: the map updates from cached features) and training an organ probe
from segmentations in the scene. Computation runs in a separate worker process; its Python needs
PyTorch and MONAI, which the module offers to install on first use (never silently).</p>
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
    similarityPoint: vtkMRMLMarkupsFiducialNode
    similarityAutoUpdate: Annotated[bool, Default(True)]
    trainVolume: vtkMRMLScalarVolumeNode
    trainSegmentation: vtkMRMLSegmentationNode
    probeEpochs: Annotated[int, WithinRange(1, 2000), Default(100)]
    probeHoldout: Annotated[float, WithinRange(0.0, 0.5), Default(0.2)]


# organ name -> parameter node field (the check box of the same name + "CheckBox")
ORGAN_FIELDS = {name: box[:-len("CheckBox")] for name, box in lib.ORGANS}


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
            "pca": self.ui.pcaApplyButton,
            "similarity": self.ui.similarityApplyButton,
            "train_probe": self.ui.trainProbeButton,
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
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)

        self.showError("")
        self.initializeParameterNode()
        self.updateButtons()

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.logic.stopObservingSimilarityPoint()
        self._observedPoint = None
        self.onClearTrainPairs()  # the cases belong to the scene being closed
        self.ui.reconstructMetricsLabel.text = "-"
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
            self.onParameterNodeModified()

    def parameterNodeChanged(self) -> None:
        """Follow the similarity point, its auto-update and the input (the point's observers are
        redone when any of them changes); the reconstruction metrics belong to their input."""
        p = self._parameterNode
        state = (p.similarityPoint, p.inputVolume, bool(p.similarityAutoUpdate))
        if state != getattr(self, "_observedPoint", None):
            if getattr(self, "_observedPoint", None) is not None and state[1] is not self._observedPoint[1]:
                self.ui.reconstructMetricsLabel.text = "-"
            self._observedPoint = state
            self.onSimilarityPointChanged()

    # ------------------------------------------------------------------ actions (PanelWidgetMixin hooks)
    def _canRun(self, action) -> bool:
        p = self._parameterNode
        if p is None:
            return False
        if action == "train_probe":
            return len(self.trainPairs) >= lib.MIN_PROBE_CASES  # one case is held out
        if action == "similarity":
            return bool(p.inputVolume and p.similarityPoint and p.similarityPoint.GetNumberOfControlPoints())
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
        if action == "similarity":
            point = self.logic.pointLPSFromMarkups(p.similarityPoint)
            self.logic.cancelPendingSimilarity()  # this job is for the point as it is now
            return self.logic.submit("similarity", p.inputVolume, point_lps=point, **common)
        if action == "train_probe":
            return self.logic.trainProbe(list(self.trainPairs), weights=weights, device=p.device or "auto",
                                         epochs=p.probeEpochs, holdout_fraction=p.probeHoldout, blocking=False)
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
        PanelWidgetMixin.onTaskFinished(self, task)

    def onTaskDone(self, task) -> None:
        if task.action == "reconstruct":
            scalars = getattr(task.imported, "scalars", {}) or {}
            self.ui.reconstructMetricsLabel.text = lib.metrics_text(scalars)
        notes = getattr(task.imported, "notes", {}) or {}
        if task.action == "organs" and notes.get("organ_maps"):
            self.appendLog(notes["organ_maps"])  # what a value of the maps means
        if task.action == "train_probe" and self.logic.lastProbePath:
            self.ui.probePathLineEdit.currentPath = self.logic.lastProbePath
            self.appendLog(f"Probe saved to {self.logic.lastProbePath}; organ maps now use it.")

    def onTaskEnded(self, task) -> None:
        if self.logic.similarityPending():
            self.timer.start()

    def onIdlePoll(self) -> bool:
        """Start the debounced similarity job when the point has moved (auto update)."""
        p = self._parameterNode
        if p is not None and p.similarityAutoUpdate:
            try:
                task = self.logic.pumpSimilarity()
            except Exception as exc:  # e.g. the point left the image: say so, keep the panel alive
                self.showError(str(exc))
                task = None
            if task is not None:
                self.track(task)
        return self.task is not None or self.logic.similarityPending()

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
                    precision=p.precision or "fp32"))
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

    def onSimilarityRequested(self) -> None:
        """The logic has a debounced similarity request: the timer pumps it, also when idle."""
        self.updateButtons()
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
        self._similarity = None  # (markups node, volume node, params, observer tags)
        self._similarityDebouncer = lib.Debouncer(0.3)
        self._similarityTask = None
        self.similarityRequested = None  # called after each debounced request (the widget starts its timer)
        self.lastIgnoredSegments = []  # segments left out of the last probe training

    def getParameterNode(self):
        return NemesisSlicerParameterNode(super().getParameterNode())

    def shutdown(self) -> None:
        self.stopObservingSimilarityPoint()
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

    # ------------------------------------------------------------------ similarity point observer
    def observeSimilarityPoint(self, markupsNode, inputVolumeNode, params=None, delay_s: float = 0.3) -> None:
        """Re-run similarity whenever the point moves (debounced; features come from the worker's cache).
        Call ``pumpSimilarity()`` periodically (the widget's timer does) to start due jobs."""
        self.stopObservingSimilarityPoint()
        # MRML's own event ids reach a Python observer as the string 'NoEvent', so the event that
        # fired is told by the callback it reached: dragging restarts the debounce, while the end of
        # an interaction or a newly placed point asks for an immediate update
        tags = [markupsNode.AddObserver(markupsNode.PointModifiedEvent,
                                        lambda caller, event: self._onSimilarityPointEvent(caller, False))]
        for event in (markupsNode.PointEndInteractionEvent, markupsNode.PointPositionDefinedEvent):
            tags.append(markupsNode.AddObserver(event,
                                                lambda caller, event: self._onSimilarityPointEvent(caller, True)))
        self._similarity = (markupsNode, inputVolumeNode, dict(params or {}), tags)
        self._similarityDebouncer.delay_s = delay_s

    def stopObservingSimilarityPoint(self) -> None:
        if self._similarity is not None:
            node, _, _, tags = self._similarity
            for tag in tags:
                node.RemoveObserver(tag)
            self._similarity = None
        self._similarityDebouncer.cancel()

    def cancelPendingSimilarity(self) -> None:
        self._similarityDebouncer.cancel()

    def _onSimilarityPointEvent(self, caller, immediate: bool) -> None:
        if self._similarity is None or caller.GetNumberOfControlPoints() == 0:
            return
        try:
            point = self.pointLPSFromMarkups(caller)
        except ValueError:
            return  # the point is not placed yet
        self._similarityDebouncer.request(point, immediate=immediate)
        if self.similarityRequested is not None:
            self.similarityRequested()

    def similarityPending(self) -> bool:
        return self._similarityDebouncer.pending

    def pumpSimilarity(self, now: Optional[float] = None):
        """Start the debounced similarity job if one is due and none is running; returns the new task."""
        if self._similarity is None or not self._similarityDebouncer.due(now):
            return None
        if self._similarityTask is not None and not self._similarityTask.done:
            return None  # the newest point waits for the running job
        _, volumeNode, params, _ = self._similarity
        point = self._similarityDebouncer.take()
        self._similarityTask = self.submit("similarity", volumeNode, point_lps=point, **params)
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
