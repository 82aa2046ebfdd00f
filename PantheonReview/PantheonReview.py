"""PantheonReview: 3D Slicer module of the Pantheon extension to review a batch's pseudo-labels.

``pantheon batch PIPELINE --input ... -o OUT`` writes one folder per case plus manifest.json. This
panel walks through the done cases of such a folder: it loads each case (its image as the
background, label outputs as segmentations, heatmaps as a coloured overlay, the latest correction
if any), and records the reviewer's decision (accepted, rejected, or corrected with the
segmentation edited in the Segment Editor), a 1-5 rating and a comment through
:class:`pantheon.batch.review.ReviewSession`, which writes them into the batch folder at once
(crash-safe). No model runs here and torch is never imported: loading a case is the file I/O of
one case, done on the GUI thread. Scene conversion is :mod:`pantheon.slicerbridge.review`.

Scripting (Slicer's Python console)::

    logic = slicer.util.getModuleLogic("PantheonReview")   # or PantheonReviewLogic()
    logic.open("/data/batch-out")                # loads the first unreviewed case
    logic.record("accepted", rating=4, comment="good")
    logic.nextUnreviewed()
    # ... edit logic.case.first_segmentation() with the Segment Editor, then
    logic.saveCorrection(rating=2, comment="tumour edge")
"""

import logging
import os
import sys
from typing import Optional

import qt
import slicer
from slicer.i18n import tr as _
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

from PantheonReviewLib import core as lib  # noqa: E402 - needs the path set up above

from pantheon.errors import PantheonError  # noqa: E402 - needs the path set up above

log = logging.getLogger("PantheonReview")

SETTINGS_KEY = "PantheonReview/LastBatchFolder"  # reopened when the panel is created: a restart resumes there
# Errors a reviewer can act on: their sentence is all the panel shows (anything else is also logged).
EXPECTED_ERRORS = (PantheonError, ValueError, OSError)


#
# PantheonReview
#


class PantheonReview(ScriptedLoadableModule):
    """Module declaration (title, category, help, acknowledgement)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Pantheon Review")
        self.parent.categories = ["Pantheon"]
        self.parent.dependencies = []
        self.parent.contributors = ["Pantheon developers"]
        self.parent.helpText = _("""
<p>Review the pseudo-labels a <code>pantheon batch</code> run wrote: choose its output folder (the one
with manifest.json) and the first case nobody has reviewed yet is loaded (its image, the label
outputs as segmentations, the maps as a coloured overlay, the latest correction if any).</p>
<p><b>Accept</b>, <b>Reject</b> or <b>Save correction</b> (the segmentation edited with the Segment
Editor, saved beside the original output as <code>&lt;name&gt;.corrected.nii.gz</code> on the image's
own voxels, with the original output's label values), with an optional 1-5 rating and comment. Each
decision is written into the batch folder at once (manifest.json, summary.csv, index.html) and the
next unreviewed case is loaded; reopening the folder later resumes there.</p>
<p>Keys while this module is shown: A accept, X reject, 1-5 rating (0: none), N next unreviewed,
Ctrl+Shift+Left/Right previous/next case.</p>
<p><code>pantheon review export</code> turns the accepted and corrected cases into a training set.
For research use only; not for clinical decisions.</p>
""")
        self.parent.acknowledgementText = _("""
<p>PantheonReview is part of Pantheon, a 3D Slicer extension for the NEMESIS, MATHENA and NeoNet
research models. Built on 3D Slicer.</p>
""")


#
# PantheonReviewWidget
#


class PantheonReviewWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: folder, status, navigation, decision, rating and comment, keyboard shortcuts."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self.shortcuts = []
        self.ratingButtons = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PantheonReview.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PantheonReviewLogic()

        ui = self.ui
        self.ratingButtons = [ui.ratingNoneRadioButton, ui.rating1RadioButton, ui.rating2RadioButton,
                              ui.rating3RadioButton, ui.rating4RadioButton, ui.rating5RadioButton]
        ui.batchFolderPathLineEdit.connect("currentPathChanged(QString)", self.onFolderChanged)
        ui.previousButton.connect("clicked(bool)", self.onPrevious)
        ui.nextButton.connect("clicked(bool)", self.onNext)
        ui.nextUnreviewedButton.connect("clicked(bool)", self.onNextUnreviewed)
        ui.acceptButton.connect("clicked(bool)", self.onAccept)
        ui.rejectButton.connect("clicked(bool)", self.onReject)
        ui.saveCorrectionButton.connect("clicked(bool)", self.onSaveCorrection)
        ui.shortcutsLabel.text = lib.shortcuts_text()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.updateGui()
        last = slicer.util.settingsValue(SETTINGS_KEY, "") or ""
        if last and os.path.isfile(os.path.join(last, "manifest.json")):
            ui.batchFolderPathLineEdit.currentPath = last  # opens it at its first unreviewed case

    def cleanup(self) -> None:
        self.removeShortcuts()
        self.removeObservers()
        if self.logic is not None:
            self.logic.close()  # a reloaded module loads the case again: no second copy in the scene

    def enter(self) -> None:
        self.installShortcuts()

    def exit(self) -> None:
        self.removeShortcuts()

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.logic.forgetCase()  # the scene removes the case's nodes itself
        self.updateGui()

    # ------------------------------------------------------------------ shortcuts
    def installShortcuts(self) -> None:
        """The keys of :data:`lib.SHORTCUTS` on Slicer's main window (active wherever the focus is in
        it: views and panel), as the Segment Editor installs its keys while it is shown."""
        self.removeShortcuts()
        parent = slicer.util.mainWindow() or self.parent
        for key, action in lib.SHORTCUTS:
            shortcut = qt.QShortcut(parent)
            shortcut.setKey(qt.QKeySequence(key))
            shortcut.connect("activated()", lambda action=action: self.onShortcut(action))
            self.shortcuts.append(shortcut)

    def removeShortcuts(self) -> None:
        for shortcut in self.shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
            shortcut.deleteLater()
        self.shortcuts = []

    def onShortcut(self, action: str) -> None:
        if action.startswith("rating"):
            self.ratingButtons[int(action[len("rating"):])].checked = True
            return
        button = {"previous": self.ui.previousButton, "next": self.ui.nextButton,
                  "nextUnreviewed": self.ui.nextUnreviewedButton, "accept": self.ui.acceptButton,
                  "reject": self.ui.rejectButton}[action]
        if button.enabled:
            button.click()

    # ------------------------------------------------------------------ folder and navigation
    def onFolderChanged(self, path) -> None:
        path = str(path or "").strip()
        session = self.logic.session
        if session is not None and os.path.abspath(path) == os.path.abspath(str(session.dir)):
            return
        try:
            with slicer.util.WaitCursor():
                caseId = self.logic.open(path)
        except Exception as exc:  # noqa: BLE001 - every error becomes the status sentence
            session = self.logic.session
            if session is None or os.path.abspath(path) != os.path.abspath(str(session.dir)):
                self.logic.close()  # the field names no batch: nothing of another stays loaded
            self.showError(exc)
        else:
            qt.QSettings().setValue(SETTINGS_KEY, path)
            self.showStatus(_("Opened {folder}: case {case}.").format(folder=path, case=caseId))
        self.showCaseReview()
        self.updateGui()

    def navigate(self, move) -> None:
        try:
            with slicer.util.WaitCursor():
                caseId = move()
        except Exception as exc:  # noqa: BLE001
            self.showError(exc)
        else:
            if caseId is not None:
                self.showStatus("")
        self.showCaseReview()
        self.updateGui()

    def onPrevious(self, checked=False) -> None:
        self.navigate(self.logic.previous)

    def onNext(self, checked=False) -> None:
        self.navigate(self.logic.next)

    def onNextUnreviewed(self, checked=False) -> None:
        self.navigate(self.logic.nextUnreviewed)

    # ------------------------------------------------------------------ decisions
    def rating(self) -> Optional[int]:
        value = next((n for n, button in enumerate(self.ratingButtons) if button.checked), 0)
        return value or None

    def onAccept(self, checked=False) -> None:
        self.decide("accepted")

    def onReject(self, checked=False) -> None:
        self.decide("rejected")

    def onSaveCorrection(self, checked=False) -> None:
        self.decide("corrected")

    def decide(self, decision: str) -> None:
        """Record the decision for the current case, then load the next unreviewed one."""
        caseId = self.logic.caseId
        rating, comment = self.rating(), self.ui.commentLineEdit.text.strip()
        try:
            with slicer.util.WaitCursor():
                if decision == "corrected":
                    entry = self.logic.saveCorrection(rating=rating, comment=comment)
                else:
                    entry = self.logic.record(decision, rating=rating, comment=comment)
        except Exception as exc:  # noqa: BLE001
            self.showError(exc)
            self.updateGui()
            return
        message = f"{caseId}: {decision}"
        if entry.get("corrected"):
            message += " (" + ", ".join(os.path.basename(p) for p in entry["corrected"]) + " written)"
        if self.logic.lastNotes:
            message += "; " + "; ".join(self.logic.lastNotes)
        message += "."
        try:
            with slicer.util.WaitCursor():
                following = self.logic.nextUnreviewed()
        except Exception as exc:  # noqa: BLE001 - the decision is recorded; only the next case failed
            self.showError(f"{message} {lib.one_sentence(exc)}")
        else:
            if following in (None, caseId):
                message += " " + _("All cases are reviewed.")
            self.showStatus(message)
        self.showCaseReview()
        self.updateGui()

    # ------------------------------------------------------------------ display
    def showStatus(self, message: str) -> None:
        self.ui.statusLabel.setStyleSheet("")
        self.ui.statusLabel.text = message

    def showError(self, error) -> None:
        """One sentence in the status line; the traceback of an unexpected error goes to the log only."""
        if isinstance(error, BaseException) and not isinstance(error, EXPECTED_ERRORS):
            log.error("PantheonReview: %s", error, exc_info=error)
        self.ui.statusLabel.setStyleSheet("color: #c0392b")
        self.ui.statusLabel.text = lib.one_sentence(error)

    def showCaseReview(self) -> None:
        """Rating and comment of the current case's review (empty for an unreviewed case)."""
        review = self.logic.currentReview() or {}
        self.ratingButtons[int(review.get("rating") or 0)].checked = True
        self.ui.commentLineEdit.text = str(review.get("comment") or "")

    def updateGui(self) -> None:
        ui, logic = self.ui, self.logic
        session, caseId = logic.session, logic.caseId
        ui.progressLabel.text = logic.statusText() if session is not None else _(
            "Choose a batch output folder (the folder `pantheon batch ... -o` wrote).")
        ui.caseLabel.text = logic.caseText()
        ui.previousButton.enabled = bool(session is not None and caseId and session.neighbour(caseId, -1))
        ui.nextButton.enabled = bool(session is not None and caseId and session.neighbour(caseId, +1))
        following = session.next_unreviewed(after=caseId) if session is not None else None
        ui.nextUnreviewedButton.enabled = following is not None and (following != caseId or logic.case is None)
        loaded = logic.case is not None
        for widget in (ui.acceptButton, ui.rejectButton, ui.saveCorrectionButton):
            widget.enabled = loaded


#
# PantheonReviewLogic
#


class PantheonReviewLogic(ScriptedLoadableModuleLogic):
    """Open a batch folder, load its cases into the scene one at a time, record decisions. Usable
    without the GUI; what a reviewer can fix raises ValueError or pantheon's PantheonError (a batch
    writing to the folder, a case whose image is gone ...) with one sentence."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.session = None  # pantheon.batch.review.ReviewSession of the open folder
        self.caseId = None  # the current case (also when it could not be loaded)
        self.case = None  # its nodes (pantheon.slicerbridge.review.ReviewCase), None when not loaded
        self.lastNotes = []  # what the last saved correction said about new segments

    # ------------------------------------------------------------------ folder
    def open(self, folder, reviewer: Optional[str] = None) -> str:
        """Open a batch output folder and load its first unreviewed case (the first case when all are
        reviewed); returns its ID. A folder that is not a batch leaves the logic as it was."""
        from pantheon.batch.review import ReviewSession
        folder = str(folder or "").strip()
        if not folder:
            raise ValueError("Choose a batch output folder.")
        if not os.path.isdir(folder):
            raise ValueError(f"The folder {folder} does not exist.")
        session = ReviewSession(folder, reviewer=reviewer)
        cases = session.cases()
        if not cases:
            raise ValueError(f"The batch in {folder} has no finished case to review yet.")
        self.close()
        self.session = session
        caseId = session.next_unreviewed() or cases[0]["case_id"]
        self.loadCase(caseId)
        return caseId

    def close(self) -> None:
        """Remove the current case's nodes and forget the folder."""
        self.unloadCase()
        self.session, self.caseId = None, None

    # ------------------------------------------------------------------ cases
    def loadCase(self, caseId: str):
        """Replace the current case in the scene by ``caseId`` (the previous case's nodes are removed
        first); returns its ReviewCase."""
        from pantheon.slicerbridge.review import load_review_case
        if self.session is None:
            raise ValueError("Open a batch folder first.")
        self.session.refresh()  # another reviewer (or a batch rerun) may have written since
        self.session.case(caseId)  # one sentence for a case that is not there or not done
        self.unloadCase()
        self.caseId = caseId
        self.case = load_review_case(self.session, caseId)
        return self.case

    def unloadCase(self) -> None:
        from pantheon.slicerbridge.review import remove_review_case
        if self.case is not None:
            remove_review_case(self.case)
        self.case = None

    def forgetCase(self) -> None:
        """The scene is being closed: its nodes go with it."""
        self.case = None

    def next(self) -> Optional[str]:
        return self._move(self.session.neighbour(self.caseId, +1) if self.session is not None else None)

    def previous(self) -> Optional[str]:
        return self._move(self.session.neighbour(self.caseId, -1) if self.session is not None else None)

    def nextUnreviewed(self) -> Optional[str]:
        """Load the next case without a review (after the current one, wrapping round); None when
        every case is reviewed (the current case stays)."""
        if self.session is None:
            return None
        self.session.refresh()
        return self._move(self.session.next_unreviewed(after=self.caseId))

    def _move(self, caseId: Optional[str]) -> Optional[str]:
        if caseId is None or (caseId == self.caseId and self.case is not None):
            return caseId
        self.loadCase(caseId)
        return caseId

    # ------------------------------------------------------------------ decisions
    def record(self, decision: str, rating: Optional[int] = None, comment: str = "", caseId: Optional[str] = None,
               corrected=None) -> dict:
        """Record ``decision`` (accepted, rejected, corrected) for the current case (or ``caseId``) in
        the batch folder at once; returns the review entry. "corrected" without ``corrected`` takes the
        edited segmentation (:meth:`saveCorrection`)."""
        if self.session is None:
            raise ValueError("Open a batch folder first.")
        if decision == "corrected" and not corrected and (caseId in (None, self.caseId)):
            return self.saveCorrection(rating=rating, comment=comment)
        self.lastNotes = []
        return self.session.record(caseId or self.caseId, decision, rating=rating, comment=comment,
                                   corrected=corrected)

    def editedSegmentation(self):
        """The segmentation the Segment Editor edits (None when it has none)."""
        from pantheon.slicerbridge.review import segment_editor_node
        editor = segment_editor_node(slicer.mrmlScene)
        return editor.GetSegmentationNode() if editor is not None else None

    def saveCorrection(self, rating: Optional[int] = None, comment: str = "", edited=None) -> dict:
        """Record the current case as corrected with its edited segmentation(s): each is exported on
        the case image's grid with the original output's label values and written beside the original
        output (ReviewSession.record). ``edited``: the segmentation to save (default: the one the
        Segment Editor edits, else the case's own)."""
        from pantheon.slicerbridge.panel import private_temp_dir, remove_tree
        from pantheon.slicerbridge.review import collect_corrections
        if self.session is None or self.case is None:
            raise ValueError("Load a case first.")
        staging = private_temp_dir("pantheon-review-")
        try:
            files, notes = collect_corrections(self.case, staging, edited or self.editedSegmentation())
            if not files:
                raise ValueError("Nothing was edited in the case's segmentation: edit it with the Segment Editor "
                                 "before saving a correction (or accept the case).")
            entry = self.session.record(self.caseId, "corrected", rating=rating, comment=comment,
                                        corrected={name: str(path) for name, path in files.items()})
        finally:
            remove_tree(staging)
        self.lastNotes = notes
        return entry

    # ------------------------------------------------------------------ texts
    def currentReview(self) -> Optional[dict]:
        if self.session is None or self.caseId is None:
            return None
        try:
            return self.session.case(self.caseId).get("review")
        except PantheonError:
            return None

    def statusText(self) -> str:
        if self.session is None:
            return ""
        return lib.status_text(self.session.status(), len(self.session.doc.get("cases") or []))

    def caseText(self) -> str:
        if self.session is None or self.caseId is None:
            return _("No case loaded.")
        ids = [c["case_id"] for c in self.session.cases()]
        index = ids.index(self.caseId) if self.caseId in ids else 0
        text = lib.case_text(self.caseId, index, len(ids), self.currentReview())
        if self.case is None:
            text += " " + _("It is not loaded.")
        return text


#
# PantheonReviewTest
#


class PantheonReviewTest(ScriptedLoadableModuleTest):
    """Self-test, run by CTest (slicer_add_python_unittest) and from the Reload & Test button: a small
    batch folder made here (no model runs in Slicer's process) is opened, one case accepted, the
    other corrected by erasing a segment, and the manifest and the corrected file are checked."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_Texts()
        self.setUp()
        self.test_ReviewOfASmallBatch()

    def test_Texts(self):
        self.delayDisplay("Starting the test")
        text = lib.status_text({"cases": 3, "unreviewed": 1, "accepted": 1, "rejected": 0, "corrected": 1}, 4)
        self.assertTrue(text.startswith("2 of 3 cases reviewed: 1 accepted"))
        self.assertEqual(lib.one_sentence(ValueError("Bad folder\nTraceback ...")), "Bad folder.")
        self.assertIsNone(PantheonReviewLogic().session)
        self.delayDisplay("Texts: passed")

    def test_ReviewOfASmallBatch(self):
        import json
        import shutil
        import tempfile

        import numpy as np
        if not isinstance(slicer.mrmlScene.GetNumberOfNodes(), int):
            self.delayDisplay("No MRML scene here: end-to-end test skipped")
            return
        from pantheon.io import read_volume
        folder = tempfile.mkdtemp(prefix="pantheon-review-selftest-")
        logic = PantheonReviewLogic()
        try:
            batch = lib.make_demo_batch(folder)
            self.assertEqual(logic.open(batch), "case0")
            image = read_volume(os.path.join(folder, "inputs", "case0.nrrd"))
            self.assertTrue(np.allclose(_ijkToRAS(logic.case.volume), image.index_to_ras(), atol=1e-6))
            logic.record("accepted", rating=4, comment="fine")
            self.assertEqual(logic.nextUnreviewed(), "case1")
            segmentation = logic.case.first_segmentation()
            segmentation.GetSegmentation().RemoveSegment("tumour")  # the reviewer erases the tumour
            entry = logic.saveCorrection(rating=2)
            self.assertEqual(entry["corrected"], ["case1/tumour.corrected.nrrd"])
            fixed = read_volume(os.path.join(batch, "case1", "tumour.corrected.nrrd"))
            self.assertEqual(sorted(np.unique(fixed.array).tolist()), [0, 1])
            self.assertTrue(fixed.same_geometry(read_volume(os.path.join(folder, "inputs", "case1.nrrd")), atol=1e-4))
            with open(os.path.join(batch, "manifest.json")) as f:
                manifest = json.load(f)
            self.assertEqual([c["review"]["decision"] for c in manifest["cases"]], ["accepted", "corrected"])
            self.delayDisplay("Test passed")
        finally:
            logic.close()
            shutil.rmtree(folder, ignore_errors=True)


def _ijkToRAS(volumeNode):
    import vtk
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)
