"""ToothAnalysis: 3D Slicer module of the Pantheon extension (MATHENA dental panoramic X-ray analysis).

The Slicer process never imports torch, MONAI or model code: the analysis runs in Pantheon's
long-lived worker process (``pantheon.worker.client``), which keeps the loaded models, so the
second image is analysed without reloading them. Scene conversion goes through
``pantheon.slicerbridge``; GUI-free helpers live in ``ToothAnalysisLib``.

Results of one run, all on the input image's pixels (its exact geometry) and grouped under
"<input> - Pantheon outputs" in the Data module:

- segmentation "<input> teeth": one segment per detected tooth, named by its FDI number
  ("tooth 36"); the segment is the tooth's detection box (MATHENA has no tooth outline head);
- segmentations "<input> caries" and "<input> anomaly" (one segment each), and the two
  probability maps they were thresholded from;
- table "<input> findings": one row per tooth (score, caries area, anomaly probability,
  Demirjian stage, box, centre in LPS mm); the panel lists it, and clicking a row centres the
  views on that tooth;
- the dental chart picture, shown in the panel.

Scripting (Slicer's Python console), blocking::

    logic = slicer.util.getModuleLogic("ToothAnalysis")   # or ToothAnalysisLogic()
    imported = logic.process(volumeNode, score_thresh=0.3)
    rows = logic.findingsRows(imported.tables["findings"])
    logic.centreOnFinding(rows[0], volumeNode)
"""

import logging
import os
import shutil
import sys
from typing import Annotated, Optional, Union

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode
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

from ToothAnalysisLib import core as lib  # noqa: E402 - needs the path set up above

from pantheon.slicerbridge.panel import PanelWidgetMixin, WorkerLogicMixin, selftest_skip_reason  # noqa: E402 - needs the path set up above

log = logging.getLogger("ToothAnalysis")

ATTR_CHART = "Pantheon.ToothAnalysis.Chart"  # on the findings table node: the dental chart PNG


#
# ToothAnalysis
#


class ToothAnalysis(ScriptedLoadableModule):
    """Module declaration (title, category, help, acknowledgement)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Tooth Analysis (MATHENA)")
        self.parent.categories = ["Pantheon"]
        self.parent.dependencies = []
        self.parent.contributors = ["Pantheon developers"]
        self.parent.helpText = _("""
<p>MATHENA, dental panoramic X-ray (orthopantomogram) analysis: tooth detection and numbering, """
"""caries segmentation, anomaly detection and dental developmental staging.</p>
<p>Paper: MATHENA: Mamba-based Architectural Tooth Hierarchical Estimator and Holistic Evaluation Network """
"""for Anatomy. arXiv:2604.00537.
<a href="https://arxiv.org/abs/2604.00537">https://arxiv.org/abs/2604.00537</a></p>
<p>Choose a 2D panoramic X-ray (grayscale or RGB, e.g. a PNG loaded with Add Data) and click Analyze.
The results land on the image's pixels: a segmentation with one segment per detected tooth named by
its FDI number (the segment is the tooth's detection box), caries and anomaly segmentations with
their probability maps, a findings table (click a tooth to centre the views on it) and a dental chart.
Computation runs in a separate worker process; its Python needs PyTorch, which the module offers to
install on first use (never silently). Click Analyze again to cancel.</p>
<p>No official MATHENA weights are published. Pantheon ships demo weights trained on synthetic
panoramic phantoms only: they show how the module works and are not a clinical model; their findings
on real X-rays are meaningless. Trained checkpoints can be chosen under Weights and device.</p>
<p>For research use only; not for clinical decisions.</p>
""")
        self.parent.acknowledgementText = _("""
<p>ToothAnalysis is part of Pantheon, a 3D Slicer extension for the NEMESIS, MATHENA and NeoNet research
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
class ToothAnalysisParameterNode:
    """Panel state, saved with the scene. Widgets bind through their SlicerParameterName property."""

    # Optional: Slicer's wrapper must be able to store the default None (a Union without None cannot)
    inputVolume: Optional[Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]]
    weightsChoice: Annotated[str, Choice(list(lib.WEIGHTS_CHOICES)), Default(lib.WEIGHTS_DEMO)]
    detectorPath: str
    henaPath: str
    scoreThreshold: Annotated[float, WithinRange(0.0, 1.0), Default(lib.DEFAULT_SCORE_THRESHOLD)]
    device: Annotated[str, Default("auto")]  # auto, cpu or a GPU (cuda, cuda:N): checked by lib.build_params
    workerPython: str  # empty: Slicer's own Python


#
# ToothAnalysisWidget
#


class ToothAnalysisWidget(PanelWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin panel: UI wiring, parameter-node sync, the findings list and the chart. The Apply/Cancel
    state machine, polling, log, errors and worker settings come from
    :class:`pantheon.slicerbridge.panel.PanelWidgetMixin`."""

    panelTitle = "Tooth Analysis"
    acceptLabelMapInput = False

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.initPanelState()
        self.findingRows = []  # rows of the findings table shown in the panel

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ToothAnalysis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ToothAnalysisLogic()
        self.logic.logCallback = self.appendLog

        self.actionButtons = {lib.ACTION: self.ui.applyButton}
        self.connectPanel(qt.QTimer(), slicer.mrmlScene, qt.QTimer.singleShot)
        self.connectSettings(lib.DEVICES,
                             weights={lib.WEIGHTS_DEMO: self.ui.weightsDemoRadioButton,
                                      lib.WEIGHTS_FILE: self.ui.weightsFileRadioButton},
                             paths={"detectorPath": self.ui.detectorPathLineEdit, "henaPath": self.ui.henaPathLineEdit})

        self.ui.findingsTableWidget.connect("cellClicked(int,int)", self.onFindingClicked)
        self.ui.findingsTableWidget.connect("currentCellChanged(int,int,int,int)", self.onFindingCurrentChanged)

        self.showError("")
        self.initializeParameterNode()
        self.updateButtons()

    def cleanup(self) -> None:
        if self.task is not None:
            self.task.cancel()
        PanelWidgetMixin.cleanup(self)
        if self.logic is not None:
            self.logic.removeCharts()

    def onSceneStartClose(self, caller=None, event=None) -> None:
        PanelWidgetMixin.onSceneStartClose(self, caller, event)
        self.showFindings(None)

    # ------------------------------------------------------------------ parameter node
    def setParameterNode(self, inputParameterNode) -> None:
        self._shownInputID = "?"  # force showing the bound node's input
        if self.bindParameterNode(inputParameterNode):
            self.syncSettingsWidgets()
            self.onParameterNodeModified()

    def parameterNodeChanged(self) -> None:
        """Show the findings of the chosen image's last analysis (if any) when the input changes."""
        inputNode = self._parameterNode.inputVolume
        inputID = inputNode.GetID() if inputNode is not None else None
        if inputID != getattr(self, "_shownInputID", None):
            self._shownInputID = inputID
            self.showInput(inputNode)

    def showInput(self, inputNode) -> None:
        table = self.logic.findingsTable(inputNode) if inputNode is not None else None
        self.showFindings(table, self.logic.chartPath(inputNode) if inputNode is not None else None)

    # ------------------------------------------------------------------ actions (PanelWidgetMixin hooks)
    def _canRun(self, action) -> bool:
        p = self._parameterNode
        return bool(p is not None and p.inputVolume and self.inputProblem(p.inputVolume) is None)

    def isInputType(self, node) -> bool:
        return bool(node is not None and node.IsA("vtkMRMLVolumeNode")
                    and (node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLVectorVolumeNode"))
                    and not node.IsA("vtkMRMLLabelMapVolumeNode"))

    def inputProblem(self, node):
        return lib.xray_problem(node.GetName(), node.GetImageData().GetDimensions()
                                if node.GetImageData() is not None else None)

    def startAction(self, action):
        p = self._parameterNode
        weights = self.logic.weightsArgument(p.weightsChoice, p.detectorPath, p.henaPath)
        return self.logic.submit(p.inputVolume, weights=weights, score_thresh=p.scoreThreshold,
                                 device=p.device or "auto")

    def onTaskDone(self, task) -> None:
        imported = task.imported
        p = self._parameterNode
        inputNode = p.inputVolume if p is not None else None
        if inputNode is not None and task.context is not None and inputNode.GetID() == task.context.GetID():
            self.showFindings(imported.tables.get(lib.TABLE_FINDINGS), self.logic.chartPath(inputNode))
            self.ui.summaryLabel.text = lib.summary_text(imported.scalars, imported.notes)

    # ------------------------------------------------------------------ findings and chart
    def showFindings(self, tableNode, chartPath=None) -> None:
        """Fill the findings list from the table node and show the dental chart picture."""
        rows = self.logic.findingsRows(tableNode)
        self.findingRows = rows
        table = self.ui.findingsTableWidget
        table.clear()
        table.setColumnCount(len(lib.FINDINGS_COLUMNS))
        table.setHorizontalHeaderLabels([header for _key, header in lib.FINDINGS_COLUMNS])
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, (key, _header) in enumerate(lib.FINDINGS_COLUMNS):
                item = qt.QTableWidgetItem(lib.format_cell(key, row.get(key)))
                item.setToolTip(lib.finding_text(row))
                table.setItem(r, c, item)
        self.ui.selectedToothLabel.text = ""
        if tableNode is None:
            self.ui.summaryLabel.text = _("Run the analysis to see the teeth found.")
        else:
            self.ui.summaryLabel.text = _("{n} teeth in {table}. Click a tooth to centre the views on it.").format(
                n=len(rows), table=tableNode.GetName())
        if chartPath and os.path.isfile(chartPath):
            pixmap = qt.QPixmap(chartPath)
            width = max(240, int(self.ui.chartLabel.width) - 8)
            self.ui.chartLabel.setPixmap(pixmap.scaledToWidth(width, qt.Qt.SmoothTransformation))
            self.ui.chartLabel.toolTip = chartPath
        else:
            self.ui.chartLabel.clear()
            self.ui.chartLabel.text = (_("No dental chart yet.") if tableNode is None
                                       else _("The dental chart is not available."))

    def onFindingClicked(self, row, column=0) -> None:
        self.onFindingSelected(row)

    def onFindingCurrentChanged(self, row, column=0, previousRow=-1, previousColumn=-1) -> None:
        if row != previousRow:
            self.onFindingSelected(row)

    def onFindingSelected(self, row) -> None:
        if not 0 <= row < len(self.findingRows):
            return
        finding = self.findingRows[row]
        p = self._parameterNode
        try:
            self.logic.centreOnFinding(finding, p.inputVolume if p is not None else None)
        except Exception as exc:
            self.showError(str(exc))
            return
        self.ui.selectedToothLabel.text = lib.finding_text(finding)


#
# ToothAnalysisLogic
#


class ToothAnalysisLogic(WorkerLogicMixin, ScriptedLoadableModuleLogic):
    """GUI-free MATHENA logic; usable from the Python console, scripts and tests.

    Owns one long-lived worker client (created on first use, never at import; see
    :class:`pantheon.slicerbridge.panel.WorkerLogicMixin`). ``submit`` is non-blocking (returns a
    task to poll from the GUI thread); ``process`` blocks.
    """

    modelName = "MATHENA"
    logger = log

    def __init__(self, workerPython: Optional[str] = None, clientFactory=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.initWorker(workerPython, clientFactory)
        self._chartDir = None

    def getParameterNode(self):
        return ToothAnalysisParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ parameters
    @staticmethod
    def weightsArgument(choice, detectorPath=None, henaPath=None) -> dict:
        """UI weights choice -> worker parameters (model-card ids or checkpoint paths)."""
        return lib.weights_params(choice, detectorPath, henaPath)

    @staticmethod
    def buildParams(**kw) -> dict:
        return lib.build_params(**kw)

    # ------------------------------------------------------------------ running
    def submit(self, inputVolumeNode, params=None, show=True, **kw):
        """Start the analysis of ``inputVolumeNode`` (a 2D scalar or RGB volume) in the worker;
        returns the task to poll (``task.imported`` is the bridge's ImportedResult when done)."""
        if inputVolumeNode is None:
            raise ValueError("Choose a panoramic X-ray.")
        if not inputVolumeNode.IsA("vtkMRMLScalarVolumeNode") or inputVolumeNode.GetImageData() is None:
            raise ValueError(f"{inputVolumeNode.GetName()} is not an image volume.")
        full = dict(params) if params is not None else self.buildParams(**kw)
        from pantheon import slicerbridge as bridge
        tmp = lib.private_temp_dir("tooth-")
        try:
            inputs = {"volume": str(bridge.export_volume(inputVolumeNode, os.path.join(tmp, "input.nrrd")))}
        except Exception:
            lib.remove_tree(tmp)
            raise

        def onResult(result):
            # a re-run on the same image reuses its output nodes (same IDs)
            imported = bridge.import_result(result, inputVolumeNode, lib.ACTION, show=False)
            chart = self._keepChart(result, inputVolumeNode)
            table = imported.tables.get(lib.TABLE_FINDINGS)
            if table is not None:
                table.SetAttribute(ATTR_CHART, chart or "")
            self._styleOutputs(imported)
            if show:
                self.showResult(imported, inputVolumeNode)
            return imported

        return self.startJob(lib.ACTION, lib.PIPELINE, full, inputs, tmp, onResult, context=inputVolumeNode)

    def process(self, inputVolumeNode, progress=None, cancel=None, timeout=None, show=True, params=None, **kw):
        """Blocking: export, analyse in the worker, import the results; returns the ImportedResult."""
        return self.wait(self.submit(inputVolumeNode, params=params, show=show, **kw), progress, cancel, timeout)

    def _keepChart(self, result, inputVolumeNode) -> Optional[str]:
        """Copy the chart out of the job's folder (removed when the task ends) into this session's
        private chart folder; one file per input node, replaced on re-run."""
        source = lib.chart_path_from_result(result)
        if source is None:
            return None
        if self._chartDir is None or not os.path.isdir(self._chartDir):
            self._chartDir = lib.private_temp_dir("tooth-charts-")
        name = "".join(ch if ch.isalnum() else "_" for ch in inputVolumeNode.GetID()) + ".png"
        target = os.path.join(self._chartDir, name)
        shutil.copyfile(source, target)
        return target

    def removeCharts(self) -> None:
        lib.remove_tree(self._chartDir)
        self._chartDir = None

    @staticmethod
    def _styleOutputs(imported) -> None:
        """Teeth as outlines (the boxes would hide the image), lesions filled."""
        teeth = imported.nodes.get(lib.OUTPUT_TEETH)
        display = teeth.GetDisplayNode() if teeth is not None else None
        if display is not None:
            display.SetVisibility2DFill(False)
            display.SetVisibility2DOutline(True)

    @staticmethod
    def showResult(imported, inputVolumeNode) -> bool:
        """The X-ray in the slice views, in its own plane, with the segmentations on top; the
        probability maps stay in the scene, not overlaid (a dark colour map at 0 would dim the
        whole image). Needs the Slicer application; returns False without it."""
        for node in imported.nodes.values():
            if node.IsA("vtkMRMLSegmentationNode") and node.GetDisplayNode() is not None:
                node.GetDisplayNode().SetVisibility(True)
        if getattr(slicer, "app", None) is None:
            return False
        slicer.util.setSliceViewerLayers(background=inputVolumeNode, foreground=None, fit=True,
                                         rotateToVolumePlane=True)
        return True

    # ------------------------------------------------------------------ results
    def findingsTable(self, inputVolumeNode):
        """The findings table node of the last analysis of ``inputVolumeNode`` (None when none)."""
        from pantheon import slicerbridge as bridge
        for node in bridge.outputs_of(inputVolumeNode, lib.ACTION):
            if node.IsA("vtkMRMLTableNode") and node.GetAttribute(bridge.ATTR_OUTPUT) == f"tables/{lib.TABLE_FINDINGS}":
                return node
        return None

    def chartPath(self, inputVolumeNode) -> Optional[str]:
        """The dental chart PNG of the last analysis of ``inputVolumeNode`` (None when not available)."""
        table = self.findingsTable(inputVolumeNode)
        path = table.GetAttribute(ATTR_CHART) if table is not None else None
        return path if path and os.path.isfile(path) else None

    @staticmethod
    def findingsRows(tableNode) -> list:
        """The rows of a findings table node as dicts (column name -> value)."""
        if tableNode is None or tableNode.GetTable() is None:
            return []
        table = tableNode.GetTable()
        columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
        return [{col.GetName(): col.GetValue(r) for col in columns if col is not None}
                for r in range(table.GetNumberOfRows())]

    def centreOnFinding(self, row, inputVolumeNode=None, zoom: bool = True) -> list:
        """Centre the slice views (and the crosshair) on the tooth of a findings row; with ``zoom``
        the views that show the image plane are zoomed to about four times the tooth's box.
        Returns the world RAS point. The row's centre is in the input's local frame: a parent
        transform of the input is applied, as it is to every output."""
        import vtk
        ras = lib.row_centre_ras(row)
        if ras is None:
            raise ValueError("This findings row has no tooth centre; run the analysis again.")
        parent = inputVolumeNode.GetParentTransformNode() if inputVolumeNode is not None else None
        if parent is not None:
            toWorld = vtk.vtkGeneralTransform()
            parent.GetTransformToWorld(toWorld)
            ras = [float(v) for v in toWorld.TransformPoint(ras)]
        scene = inputVolumeNode.GetScene() if inputVolumeNode is not None else slicer.mrmlScene
        crosshair = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            crosshair.SetCrosshairRAS(*ras)
        slicer.vtkMRMLSliceNode.JumpAllSlices(scene, ras[0], ras[1], ras[2], slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        if zoom and inputVolumeNode is not None:
            self._zoomToTooth(scene, inputVolumeNode, row)
        return ras

    @staticmethod
    def _zoomToTooth(scene, inputVolumeNode, row) -> None:
        import numpy as np
        import vtk
        try:
            extent = max(float(row.get("box_width_mm") or 0), float(row.get("box_height_mm") or 0))
        except (TypeError, ValueError):
            return
        if not extent > 0:
            return
        m = vtk.vtkMatrix4x4()
        inputVolumeNode.GetIJKToRASMatrix(m)
        normal = slicer.util.arrayFromVTKMatrix(m)[:3, 2]
        normal = normal / (np.linalg.norm(normal) or 1.0)
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            sliceNode = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
            sliceNormal = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())[:3, 2]
            if abs(float(np.dot(sliceNormal, normal))) < 0.99:
                continue  # this view cuts across the image plane
            fov = list(sliceNode.GetFieldOfView())
            scale = 4.0 * extent / max(min(fov[0], fov[1]), 1e-6)
            sliceNode.SetFieldOfView(fov[0] * scale, fov[1] * scale, fov[2])


#
# ToothAnalysisTest
#


class ToothAnalysisTest(ScriptedLoadableModuleTest):
    """Self-test, run by CTest (slicer_add_python_unittest) and from the Reload & Test button.

    The end-to-end part makes a synthetic panoramic X-ray on an oblique, flipped pixel grid (with
    the worker's Python), analyses it with the bundled demo weights and checks the segments, the
    findings table, the chart and view centring. It is skipped, with a message, when the worker's
    Python lacks PyTorch, unless PANTHEON_SELFTEST_REQUIRE_WORKER=1. Nothing here depends on how
    many teeth the demo weights find.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LogicInstantiates()
        self.setUp()
        self.test_ParametersAndCentres()
        self.setUp()
        self.test_AnalyzeSyntheticOPG()

    def test_LogicInstantiates(self):
        self.delayDisplay("Starting the test")
        logic = ToothAnalysisLogic()
        self.assertIsInstance(logic, ScriptedLoadableModuleLogic)
        self.assertEqual(logic.moduleName, "ToothAnalysis")
        self.assertIsNone(logic._client)  # the worker starts on first use only
        self.delayDisplay("Test passed")

    def test_ParametersAndCentres(self):
        self.assertEqual(ToothAnalysisLogic.weightsArgument("demo"),
                         {"detector": lib.DEMO_DETECTOR_CARD, "hena": lib.DEMO_HENA_CARD})
        params = ToothAnalysisLogic.buildParams(score_thresh=0.4, device="cpu")
        self.assertEqual(params["score_thresh"], 0.4)
        row = {"tooth": 36, "centre_lps_x": 1.5, "centre_lps_y": -2.0, "centre_lps_z": 3.0}
        self.assertEqual(lib.row_centre_ras(row), [-1.5, 2.0, 3.0])
        self.delayDisplay("Parameters and centres: passed")

    def test_AnalyzeSyntheticOPG(self):
        import numpy as np
        import vtk

        logic = ToothAnalysisLogic()
        try:
            skip = selftest_skip_reason(logic, slicer.mrmlScene)
            if skip:
                self.delayDisplay(skip)
                return
            self.delayDisplay("Making a synthetic panoramic X-ray")
            folder = lib.private_temp_dir("tooth-selftest-")
            try:
                path = lib.make_opg_file(os.path.join(folder, "opg.nrrd"), logic.workerPythonExecutable(), seed=2,
                                         size=(256, 512), oblique_deg=20.0)
                volumeNode = slicer.util.loadVolume(path, {"name": "SyntheticOPG", "show": False})
            finally:
                lib.remove_tree(folder)
            before = slicer.util.arrayFromVolume(volumeNode).copy()
            self.delayDisplay("Analysing with the demo weights")
            imported = logic.process(volumeNode, device="cpu", show=False)
            self.assertTrue(set(imported.nodes) >= {lib.OUTPUT_TEETH, lib.OUTPUT_CARIES, lib.OUTPUT_ANOMALY})
            rows = logic.findingsRows(imported.tables[lib.TABLE_FINDINGS])
            segmentation = imported.nodes[lib.OUTPUT_TEETH].GetSegmentation()
            names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
            self.assertEqual(names, {lib.tooth_segment_name(r["tooth"]) for r in rows})
            for output in (lib.OUTPUT_CARIES, lib.OUTPUT_ANOMALY):
                self.assertTrue(imported.nodes[output].IsA("vtkMRMLSegmentationNode"))
            self.assertEqual(int(imported.scalars["n_teeth"]), len(rows))
            self.assertTrue(logic.chartPath(volumeNode) and os.path.isfile(logic.chartPath(volumeNode)))
            m = vtk.vtkMatrix4x4()
            volumeNode.GetRASToIJKMatrix(m)
            rasToIJK = slicer.util.arrayFromVTKMatrix(m)
            for row in rows[:3]:
                ras = logic.centreOnFinding(row, volumeNode)
                i, j, k = (rasToIJK @ np.array(list(ras) + [1.0]))[:3]
                self.assertAlmostEqual(k, 0.0, places=3)
                self.assertTrue(row["box_x0"] - 0.5 <= i <= row["box_x1"] - 0.5)
                self.assertTrue(row["box_y0"] - 0.5 <= j <= row["box_y1"] - 0.5)
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(volumeNode), before)
            self.delayDisplay("Test passed")
        finally:
            logic.shutdown()
            logic.removeCharts()
