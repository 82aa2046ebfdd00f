"""Real-Qt stand-ins for the Slicer and CTK widgets the panels' .ui files use, bound to the real
MRML scene of PyPI ``slicer-core``.

Each class has the Qt properties, signals (C++ signatures) and slots of the class it is named
after, read from the headers of Slicer 5.12.3 (``Libs/MRML/Widgets/qMRMLNodeComboBox.h``,
``qMRMLSegmentSelectorWidget.h``, ``qMRMLWidget.h``, ``Modules/Loadable/Markups/Widgets/
qSlicerMarkupsPlaceWidget.h``) and CTK (``Libs/Widgets/ctkCollapsibleButton.h``,
``ctkPathLineEdit.h``, ``ctkSliderWidget.h``). Behaviour that the panels rely on follows the
``.cxx`` files, cited where it matters. Properties no panel reads are declared (so a .ui may set
them) but only stored. Pixels are drawn with Qt's own widgets (combo boxes, line edits, spin
boxes), so screenshots look like a Slicer panel without being identical to it.

``MINIMAL_CLASSES`` are only names for ``isinstance``/``type`` checks in Slicer's parameter node
wrapper (it compares widget types against ``ctk.ctkCheckBox``, ``slicer.qMRMLSpinBox`` ...); they
are not stand-ins and a .ui using one fails.
"""

from __future__ import annotations

import types
from typing import Dict, List, Optional

from PySide6 import QtCore, QtGui, QtWidgets

from . import pythonqt as pq
from .uiloader import STANDIN_WIDGETS

QWidget = pq.qt_class("QWidget")
QAbstractButton = pq.qt_class("QAbstractButton")
Property = QtCore.Property


def _stored(name: str, kind, default):
    """A Qt property kept in ``self._h_store`` (declared for .ui files; no behaviour)."""

    def get(self):
        return self._h_store.get(name, default)

    def set_(self, value):
        self._h_store[name] = value
    return Property(kind, get, set_)


def _observe(widget, vtk_object, event, method_name: str):
    """``vtk_object.AddObserver(event, ...)`` calling ``widget.<method_name>()`` for as long as the
    widget's C++ object lives (the real widgets remove their observers in their destructors).
    Returns ``(vtk_object, tag)`` for RemoveObserver."""
    import weakref

    from shiboken6 import Shiboken
    ref = weakref.ref(widget)
    tag_box = []

    source = weakref.ref(vtk_object)  # no strong cycle vtk object -> observer -> closure -> vtk object

    def callback(*args):
        target = ref()
        if target is None or not Shiboken.isValid(target):
            observed = source()
            if observed is not None:
                observed.RemoveObserver(tag_box[0])
            return
        getattr(target, method_name)()

    tag_box.append(vtk_object.AddObserver(event, callback))
    return vtk_object, tag_box[0]


def register_widget(cls):
    STANDIN_WIDGETS[cls.__name__] = cls
    return cls


def _emit(obj, cpp_signature: str, *args) -> None:
    """Emit a stand-in's signal by its C++ signature."""
    signal = pq.BoundSignal(obj, cpp_signature.split("(")[0])
    signal._sig = pq.normalize(cpp_signature)
    signal.emit(*args)


# --------------------------------------------------------------------------------------- qMRMLWidget
@register_widget
class qMRMLWidget(QWidget):  # noqa: N801
    """Libs/MRML/Widgets/qMRMLWidget.h: ``setMRMLScene(vtkMRMLScene*)`` emits
    ``mrmlSceneChanged(vtkMRMLScene*)``; ``mrmlScene()``."""

    _h_cpp = True
    _h_cpp_signals = ["mrmlSceneChanged(vtkMRMLScene*)"]
    _h_cpp_slots = ["setMRMLScene(vtkMRMLScene*)"]

    def __init__(self, parent=None):
        super().__init__(parent) if parent is not None else super().__init__()
        self._h_scene = None
        self._h_store = {}

    def setMRMLScene(self, scene):  # noqa: N802
        if scene is self._h_scene:
            return
        self._h_scene = scene
        _emit(self, "mrmlSceneChanged(vtkMRMLScene*)", scene)

    def mrmlScene(self):  # noqa: N802
        return self._h_scene


# --------------------------------------------------------------------------------------- qMRMLNodeComboBox
@register_widget
class qMRMLNodeComboBox(qMRMLWidget):  # noqa: N801
    """A node selector (a QWidget around a combo box) whose items follow the scene.

    Listed nodes (qMRMLSortFilterProxyModel.cxx l.167-326): ``IsA`` one of ``nodeTypes`` (the exact
    class when ``showChildNodeTypes`` is false), not ``IsA`` any ``hideChildNodeTypes``, not
    ``HideFromEditors`` unless ``showHidden``, carrying the attribute filter of its type; in scene
    order, after a "None" item when ``noneEnabled``. Action items ("Create new ...", separator)
    follow the nodes when a scene is set and any of add/remove/edit/rename is enabled.

    Selection and signals (qMRMLNodeComboBox.cxx l.719-957 and Qt's QComboBox, as traced for
    Slicer 5.12 with Qt 5.15):

    - ``setMRMLScene``: the previous node is kept if the old scene had nodes, otherwise the node
      requested before the scene, otherwise the first listed node ("None" when ``noneEnabled``);
      always ends by emitting ``currentNodeChanged`` x3 (plus ``nodeActivated`` for a node);
    - ``setCurrentNode``/``setCurrentNodeID``: a listed node becomes current (``currentNodeChanged``
      x3 and ``nodeActivated``); an unlisted one or None clears the selection (x3, no
      ``nodeActivated``); the same node again emits nothing;
    - a node added to an empty list with no current node, no "None" and no action items becomes
      current (QComboBox selects the first row of an empty list); otherwise additions only emit
      ``nodeAdded``;
    - removing the current node selects the node that takes its row, else the last node, else
      nothing; ``nodeAboutToBeRemoved`` comes first;
    - removals during ``Clear()`` are ignored; at ``EndCloseEvent`` the list is rebuilt and the
      selection cleared.

    ``currentNodeChanged(vtkMRMLNode*)``, ``currentNodeChanged(bool)``, ``currentNodeIDChanged(QString)``
    are always emitted in that order.
    """

    _h_cpp = True
    _h_cpp_signals = ["currentNodeChanged(vtkMRMLNode*)", "currentNodeIDChanged(QString)",
                      "nodeActivated(vtkMRMLNode*)", "currentNodeChanged(bool)", "nodeAdded(vtkMRMLNode*)",
                      "nodeAddedByUser(vtkMRMLNode*)", "nodeAddedByUserAction(vtkMRMLNode*)",
                      "nodeAboutToBeRemoved(vtkMRMLNode*)", "currentNodeRenamed(QString)",
                      "nodeAboutToBeEdited(vtkMRMLNode*)"]
    _h_cpp_slots = ["setMRMLScene(vtkMRMLScene*)", "setCurrentNode(vtkMRMLNode*)", "setCurrentNodeID(QString)",
                    "setCurrentNodeIndex(int)", "addNode()", "removeCurrentNode()"]

    def __init__(self, parent=None):
        super().__init__(parent)
        self._h_types: List[str] = []
        self._h_none = False
        self._h_show_hidden = False
        self._h_show_child = True
        self._h_hide_child: List[str] = []
        self._h_attributes: Dict[str, tuple] = {}  # node type -> (name, value): one filter per type
        self._h_nodes: List[object] = []
        self._h_observers: List[tuple] = []
        self._h_current = None  # the current node (None: no selection / the None item)
        self._h_requested: Optional[str] = None  # a node ID set before there was a scene
        self._h_store.update(addEnabled=True, removeEnabled=True, editEnabled=False, renameEnabled=False)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._h_combo = QtWidgets.QComboBox(self)
        self._h_combo.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        layout.addWidget(self._h_combo)
        self._h_combo.activated.connect(self._h_user_picked)
        QtWidgets.QWidget.setEnabled(self, False)  # l.124: enabled only once it has a scene

    # ------------------------------------------------------------ properties (h:59-93)
    def _set_types(self, value):
        self._h_types = [t for t in value if t]  # setNodeTypes drops empty strings (l.971-984)
        self._h_relist()

    nodeTypes = Property("QStringList", lambda self: list(self._h_types), _set_types)

    def _set_none(self, value):
        if bool(value) != self._h_none:
            self._h_none = bool(value)
            self._h_relist()

    noneEnabled = Property(bool, lambda self: self._h_none, _set_none)

    def _set_show_hidden(self, value):
        self._h_show_hidden = bool(value)
        self._h_relist()

    showHidden = Property(bool, lambda self: self._h_show_hidden, _set_show_hidden)

    def _set_show_child(self, value):
        self._h_show_child = bool(value)
        self._h_relist()

    showChildNodeTypes = Property(bool, lambda self: self._h_show_child, _set_show_child)

    def _set_hide_child(self, value):
        self._h_hide_child = [t for t in value if t]
        self._h_relist()

    hideChildNodeTypes = Property("QStringList", lambda self: list(self._h_hide_child), _set_hide_child)
    currentNodeID = Property(str, lambda self: self._h_current.GetID() if self._h_current is not None else "",
                             lambda self, v: self.setCurrentNodeID(v))

    def _action_flag(name):  # noqa: N805 - class-body helper
        def set_(self, value):
            self._h_store[name] = bool(value)
            self._h_relist()
        return Property(bool, lambda self: self._h_store[name], set_)

    addEnabled = _action_flag("addEnabled")
    removeEnabled = _action_flag("removeEnabled")
    editEnabled = _action_flag("editEnabled")
    renameEnabled = _action_flag("renameEnabled")
    del _action_flag
    baseName = _stored("baseName", str, "")
    interactionNodeSingletonTag = _stored("interactionNodeSingletonTag", str, "Singleton")
    selectNodeUponCreation = _stored("selectNodeUponCreation", bool, True)
    noneDisplay = _stored("noneDisplay", str, "None")
    sizeAdjustPolicy = _stored("sizeAdjustPolicy", int, 1)
    _h_enums = {"QComboBox::AdjustToContents": 0, "QComboBox::AdjustToContentsOnFirstShow": 1,
                "QComboBox::AdjustToMinimumContentsLengthWithIcon": 3}

    # ------------------------------------------------------------ Q_INVOKABLE methods and slots
    def setMRMLScene(self, scene):  # noqa: N802 - l.790-867
        if scene is self._h_scene:
            return
        previous_valid = self.nodeCount() > 0
        previous = self._h_current
        for obj, tag in self._h_observers:
            obj.RemoveObserver(tag)
        self._h_observers = []
        self._h_scene = scene
        if scene is not None:
            # MRML's own event ids reach Python observers as 'NoEvent': one callback per event
            for event, method in ((scene.NodeAddedEvent, "_h_on_node_added"),
                                  (scene.NodeAboutToBeRemovedEvent, "_h_on_node_about_to_be_removed"),
                                  (scene.NodeRemovedEvent, "_h_on_node_removed"),
                                  (scene.EndCloseEvent, "_h_on_rebuild"), (scene.EndImportEvent, "_h_on_rebuild"),
                                  (scene.EndRestoreEvent, "_h_on_rebuild")):
                self._h_observers.append(_observe(self, scene, event, method))
        self._h_nodes = self._h_listed()
        if previous_valid and previous is not None and previous in self._h_nodes:
            target = previous
        elif self._h_requested is not None:
            target = scene.GetNodeByID(self._h_requested) if scene is not None else None
            target = target if target in self._h_nodes else None
        else:
            target = self._h_nodes[0] if (self._h_nodes and not self._h_none) else None
        self._h_requested = None
        self._h_current = target
        self._h_show()
        QtWidgets.QWidget.setEnabled(self, scene is not None)
        _emit(self, "mrmlSceneChanged(vtkMRMLScene*)", scene)
        self._h_emit_current(activated=target is not None)

    def mrmlScene(self):  # noqa: N802
        return self._h_scene

    def currentNode(self):  # noqa: N802
        return self._h_current

    def setCurrentNode(self, node):  # noqa: N802 - l.870-879 (a str argument: the deprecated ID overload)
        if isinstance(node, str):
            self.setCurrentNodeID(node)
            return
        self.setCurrentNodeID(node.GetID() if node is not None else "")

    def setCurrentNodeID(self, node_id):  # noqa: N802 - l.889-941
        node_id = str(node_id or "")
        if self._h_scene is None:
            self._h_requested = node_id
            return
        node = next((n for n in self._h_nodes if n.GetID() == node_id), None)
        if node is self._h_current:
            return
        self._h_current = node
        self._h_show()
        self._h_emit_current(activated=node is not None)

    def setCurrentNodeIndex(self, index):  # noqa: N802
        node = self._h_nodes[index] if 0 <= index < len(self._h_nodes) else None
        if node is not self._h_current:
            self._h_current = node
            self._h_show()
            self._h_emit_current(activated=False)

    def nodeCount(self):  # noqa: N802
        return len(self._h_nodes) if self._h_scene is not None else 0

    def nodeFromIndex(self, index):  # noqa: N802
        return self._h_nodes[index] if 0 <= index < len(self._h_nodes) else None

    def addAttribute(self, nodeType, attributeName, attributeValue=None):  # noqa: N802,N803
        if str(nodeType) in self._h_types:  # the proxy keeps it only for a type already listed (proxy l.130-141)
            self._h_attributes[str(nodeType)] = (str(attributeName), attributeValue)
            self._h_relist()

    def removeAttribute(self, nodeType, attributeName):  # noqa: N802,N803
        if self._h_attributes.get(str(nodeType), ("",))[0] == str(attributeName):
            del self._h_attributes[str(nodeType)]
            self._h_relist()

    def addNode(self):  # noqa: N802 - l.590-612
        if self._h_scene is None or len(self._h_types) == 0:
            return None
        node = self._h_scene.AddNewNodeByClass(self._h_types[0])
        if self.selectNodeUponCreation:
            self.setCurrentNode(node)
        _emit(self, "nodeAddedByUser(vtkMRMLNode*)", node)
        return node

    def removeCurrentNode(self):  # noqa: N802
        if self._h_scene is not None and self._h_current is not None:
            self._h_scene.RemoveNode(self._h_current)

    # ------------------------------------------------------------ internals
    def _h_accepts(self, node) -> bool:
        if node is None or not node.GetID():
            return False
        if node.GetHideFromEditors() and not self._h_show_hidden:
            return False
        if not self._h_types:
            return True
        for node_type in self._h_types:
            if not node.IsA(node_type):
                continue
            if not self._h_show_child and node_type != node.GetClassName():
                continue
            if self._h_show_child and any(node.IsA(t) for t in self._h_hide_child):
                return False
            if node_type in self._h_attributes:
                name, value = self._h_attributes[node_type]
                have = node.GetAttribute(name)
                if have is None or (value is not None and str(have) != str(value)):
                    return False
            return True
        return False

    def _h_listed(self):
        scene = self._h_scene
        if scene is None:
            return []
        return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()) if self._h_accepts(scene.GetNthNode(i))]

    def _h_has_action_items(self) -> bool:
        return self._h_scene is not None and any(self._h_store[k] for k in (
            "addEnabled", "removeEnabled", "editEnabled", "renameEnabled"))

    def _h_show(self):
        """Redraw the combo box from the list and the current node (signals of the inner box blocked)."""
        combo = self._h_combo
        blocked = combo.blockSignals(True)
        try:
            combo.clear()
            if self._h_none:
                combo.addItem(self.noneDisplay, "")
            for node in self._h_nodes:
                combo.addItem(node.GetName() or node.GetID(), node.GetID())
            if self._h_current is not None and self._h_current in self._h_nodes:
                combo.setCurrentIndex(self._h_nodes.index(self._h_current) + (1 if self._h_none else 0))
            else:
                combo.setCurrentIndex(0 if self._h_none else -1)
        finally:
            combo.blockSignals(blocked)

    def _h_emit_current(self, activated: bool):
        node = self._h_current
        _emit(self, "currentNodeChanged(vtkMRMLNode*)", node)
        _emit(self, "currentNodeIDChanged(QString)", node.GetID() if node is not None else "")
        _emit(self, "currentNodeChanged(bool)", node is not None)
        if activated and node is not None:
            _emit(self, "nodeActivated(vtkMRMLNode*)", node)

    def _h_relist(self):
        """Filters changed: re-list; a current node no longer listed is cleared (refreshIfCurrentNodeHidden)."""
        self._h_nodes = self._h_listed()
        if self._h_current is not None and self._h_current not in self._h_nodes:
            self._h_current = None
            self._h_show()
            self._h_emit_current(activated=False)
        else:
            self._h_show()

    def _h_on_node_added(self):
        scene = self._h_scene
        if scene is None or scene.IsImporting() or scene.IsClosing():
            return
        old = list(self._h_nodes)
        self._h_nodes = self._h_listed()
        added = [n for n in self._h_nodes if n not in old]
        if not added:
            return
        auto = (self._h_current is None and not old and not self._h_none and not self._h_has_action_items())
        if auto:  # QComboBox selects the first row inserted into an empty list
            self._h_current = self._h_nodes[0]
        self._h_show()
        if auto:
            self._h_emit_current(activated=False)
        for node in added:
            _emit(self, "nodeAdded(vtkMRMLNode*)", node)

    def _h_on_node_about_to_be_removed(self):
        scene = self._h_scene
        if scene is None or scene.IsClosing():
            return
        present = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        self._h_about_to_go = [n for n in self._h_nodes if n.GetID() in present]

    def _h_on_node_removed(self):
        scene = self._h_scene
        if scene is None or scene.IsClosing():
            return
        old = list(self._h_nodes)
        self._h_nodes = self._h_listed()
        removed = [n for n in old if n not in self._h_nodes]
        if not removed:
            return
        for node in removed:
            _emit(self, "nodeAboutToBeRemoved(vtkMRMLNode*)", node)
        current = self._h_current
        if current is not None and current in removed:
            offset = 1 if self._h_none else 0
            row = old.index(current) + offset  # the row stays; the item that now fills it becomes current
            if row - offset < len(self._h_nodes):
                self._h_current = self._h_nodes[row - offset]
            else:
                self._h_current = self._h_nodes[-1] if self._h_nodes else None
            self._h_show()
            self._h_emit_current(activated=False)
        else:
            self._h_show()

    def _h_on_rebuild(self):
        """EndCloseEvent/EndImportEvent: every row is rebuilt and the selection is not restored."""
        had = self._h_current
        self._h_nodes = self._h_listed()
        self._h_current = None
        self._h_show()
        if had is not None:
            self._h_emit_current(activated=False)

    def _h_user_picked(self, index):
        offset = 1 if self._h_none else 0
        node = self._h_nodes[index - offset] if 0 <= index - offset < len(self._h_nodes) else None
        changed = node is not self._h_current
        self._h_current = node
        if changed:
            self._h_emit_current(activated=False)
        if node is not None or (self._h_none and index == 0):
            _emit(self, "nodeActivated(vtkMRMLNode*)", node)

    # ------------------------------------------------------------ user actions, for tests
    def _h_choose(self, node) -> None:
        """What picking ``node`` (None: the None item) in the popup does."""
        if node is None:
            if not self._h_none:
                raise AssertionError("this selector offers no 'None' item")
            index = 0
        else:
            if node not in self._h_nodes:
                raise AssertionError(f"{node.GetName()} is not offered by this selector ({self._h_types})")
            index = self._h_nodes.index(node) + (1 if self._h_none else 0)
        self._h_combo.setCurrentIndex(index)
        self._h_combo.activated.emit(index)

    def _h_item_texts(self) -> List[str]:
        return [self._h_combo.itemText(i) for i in range(self._h_combo.count())]


# --------------------------------------------------------------------------------------- segment selector
@register_widget
class qMRMLSegmentSelectorWidget(qMRMLWidget):  # noqa: N801
    """A segmentation node selector plus a segment combo box (qMRMLSegmentSelectorWidget.cxx):
    the node selector's ``currentNodeChanged`` signals are forwarded; when the segmentation
    changes or its segments are added/removed/renamed the segment list is rebuilt and, unless the
    stored current segment is still there (or "None" is offered and none is stored), the first
    segment is selected, emitting ``currentSegmentChanged(QString)`` (l.171-273). With no
    segmentation or no segments the segment combo box is hidden and the stored segment ID stays."""

    _h_cpp = True
    _h_cpp_signals = ["currentNodeChanged(vtkMRMLNode*)", "currentSegmentChanged(QString)",
                      "segmentSelectionChanged(QStringList)", "nodeAboutToBeEdited(vtkMRMLNode*)",
                      "currentNodeChanged(bool)"]
    _h_cpp_slots = ["setMRMLScene(vtkMRMLScene*)", "setCurrentNode(vtkMRMLNode*)", "setCurrentNodeID(QString)",
                    "setCurrentSegmentID(QString)", "setSelectedSegmentIDs(QStringList)"]
    NONE_DISPLAY = "None"

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._h_nodes = qMRMLNodeComboBox(self)  # as in qMRMLSegmentSelectorWidget.ui
        self._h_nodes.nodeTypes = ["vtkMRMLSegmentationNode"]
        self._h_nodes.addEnabled = False
        self._h_nodes.renameEnabled = True
        self._h_segments = QtWidgets.QComboBox(self)
        self._h_segment_label = QtWidgets.QLabel("Segment:", self)
        layout.addRow("Segmentation:", self._h_nodes)
        layout.addRow(self._h_segment_label, self._h_segments)
        self._h_segmentation = None
        self._h_segment_tags: List[int] = []
        self._h_current_segment = ""
        pq.connect(self._h_nodes, "currentNodeChanged(vtkMRMLNode*)", self._h_on_node)
        pq.connect(self._h_nodes, "currentNodeChanged(vtkMRMLNode*)",
                   lambda node: _emit(self, "currentNodeChanged(vtkMRMLNode*)", node))
        pq.connect(self._h_nodes, "currentNodeChanged(bool)",
                   lambda valid: _emit(self, "currentNodeChanged(bool)", valid))
        self._h_segments.currentIndexChanged.connect(self._h_on_segment_index)
        self._h_populate()

    def _set_none(self, value):
        self._h_nodes.noneEnabled = bool(value)
        self._h_populate()

    noneEnabled = Property(bool, lambda self: self._h_nodes.noneEnabled, _set_none)
    editEnabled = _stored("editEnabled", bool, False)

    def _set_node_selector_visible(self, value):  # l.476-480: hides the node combo box only
        self._h_store["segmentationNodeSelectorVisible"] = bool(value)
        self.layout().setRowVisible(self._h_nodes, bool(value))

    segmentationNodeSelectorVisible = Property(bool, lambda self: self._h_store.get("segmentationNodeSelectorVisible",
                                                                                   True),
                                               _set_node_selector_visible)
    multiSelection = _stored("multiSelection", bool, False)
    horizontalLayout = _stored("horizontalLayout", bool, False)
    selectNodeUponCreation = _stored("selectNodeUponCreation", bool, True)

    def setMRMLScene(self, scene):  # noqa: N802
        qMRMLWidget.setMRMLScene(self, scene)
        self._h_nodes.setMRMLScene(scene)

    def currentNode(self):  # noqa: N802
        return self._h_nodes.currentNode()

    def currentNodeID(self):  # noqa: N802
        return self._h_nodes.currentNodeID

    def setCurrentNode(self, node):  # noqa: N802
        self._h_nodes.setCurrentNode(node)

    def setCurrentNodeID(self, node_id):  # noqa: N802
        self._h_nodes.setCurrentNodeID(node_id)

    def currentSegmentID(self):  # noqa: N802
        return self._h_current_segment

    def segmentIDs(self):  # noqa: N802 - reads the multi-selection box only: [] in single mode (cxx:350-361)
        return self._h_segment_ids() if self.multiSelection else []

    def _h_segment_ids(self):
        seg = self._h_segmentation.GetSegmentation() if self._h_segmentation is not None else None
        return [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())] if seg is not None else []

    def setCurrentSegmentID(self, segment_id):  # noqa: N802 - l.364-386
        segment_id = str(segment_id or "")
        if not segment_id and self.noneEnabled:
            self._h_segments.setCurrentIndex(0)
            return
        index = self._h_segments.findData(segment_id)
        if index != -1 and self._h_segments.currentIndex() != index:
            self._h_segments.setCurrentIndex(index)

    def _h_on_node(self, node):
        node = node if node is not None and node.IsA("vtkMRMLSegmentationNode") else None
        if node is self._h_segmentation:
            return
        for obj, tag in self._h_segment_tags:
            obj.RemoveObserver(tag)
        self._h_segment_tags = []
        self._h_segmentation = node
        if node is not None:
            seg = node.GetSegmentation()
            import slicer
            for event in (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                          slicer.vtkSegmentation.SegmentModified):
                self._h_segment_tags.append(_observe(self, seg, event, "_h_populate"))
        self._h_populate()

    def _h_populate(self):
        combo = self._h_segments
        blocked = combo.blockSignals(True)
        combo.clear()
        combo.blockSignals(blocked)
        ids = self._h_segment_ids()
        if not ids:
            self._h_segment_label.setVisible(False)
            combo.setVisible(False)
            return
        self._h_segment_label.setVisible(True)
        combo.setVisible(True)
        seg = self._h_segmentation.GetSegmentation()
        blocked = combo.blockSignals(True)
        if self.noneEnabled:
            combo.addItem(self.NONE_DISPLAY, self.NONE_DISPLAY)
        for segment_id in ids:
            combo.addItem(seg.GetSegment(segment_id).GetName(), segment_id)
        combo.blockSignals(blocked)
        stored = self._h_current_segment
        if (self.noneEnabled and not stored) or (stored and stored in ids):
            blocked = combo.blockSignals(True)
            self.setCurrentSegmentID(stored)
            combo.blockSignals(blocked)
        else:
            blocked = combo.blockSignals(True)
            combo.setCurrentIndex(-1)
            combo.blockSignals(blocked)
            combo.setCurrentIndex(1 if self.noneEnabled else 0)

    def _h_on_segment_index(self, index):
        if self._h_segmentation is None:
            return
        segment_id = self._h_segments.itemData(index)
        self._h_current_segment = "" if segment_id in (None, self.NONE_DISPLAY) else str(segment_id)
        _emit(self, "currentSegmentChanged(QString)", self._h_current_segment)

    def _h_choose_segment(self, segment_id):
        """What picking a segment in the popup does."""
        index = self._h_segments.findData(segment_id)
        if index < 0:
            raise AssertionError(f"segment {segment_id!r} is not offered")
        self._h_segments.setCurrentIndex(index)


# --------------------------------------------------------------------------------------- markups place widget
@register_widget
class qSlicerMarkupsPlaceWidget(qMRMLWidget):  # noqa: N801
    """The place button of Modules/Loadable/Markups/Widgets/qSlicerMarkupsPlaceWidget: with a
    current markups node, ``placeModeEnabled = True`` makes it the active place node (selection
    node) and puts the interaction node in Place mode (qSlicerMarkupsPlaceWidget.cxx l.415-452);
    ``activeMarkupsPlaceModeChanged(bool)`` follows the interaction node. :meth:`_h_click_in_view`
    is what a click in a slice view does in place mode (the markups displayable manager adds a
    control point; without persistency the mode returns to ViewTransform)."""

    _h_cpp = True
    _h_cpp_signals = ["activeMarkupsPlaceModeChanged(bool)", "activeMarkupsFiducialPlaceModeChanged(bool)"]
    _h_cpp_slots = ["setMRMLScene(vtkMRMLScene*)", "setCurrentNode(vtkMRMLNode*)", "setPlaceModeEnabled(bool)",
                    "setCurrentNodeActive(bool)", "setPlaceModePersistency(bool)", "setButtonsVisible(bool)",
                    "deleteLastPoint()", "deleteAllPoints()"]
    # PlaceMultipleMarkupsType (qSlicerMarkupsPlaceWidget.h l.62-68)
    (ShowPlaceMultipleMarkupsOption, HidePlaceMultipleMarkupsOption, ForcePlaceSingleMarkup,
     ForcePlaceMultipleMarkups) = 0, 1, 2, 3
    _h_enums = {f"qSlicerMarkupsPlaceWidget::{k}": v for k, v in dict(
        ShowPlaceMultipleMarkupsOption=0, HidePlaceMultipleMarkupsOption=1, ForcePlaceSingleMarkup=2,
        ForcePlaceMultipleMarkups=3).items()}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._h_node = None
        self._h_interaction = None
        self._h_tags = []
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._h_button = QtWidgets.QToolButton(self)
        self._h_button.setText("Place")
        self._h_button.setCheckable(True)
        self._h_button.setToolButtonStyle(QtCore.Qt.ToolButtonTextOnly)
        layout.addWidget(self._h_button)
        layout.addStretch(1)
        self._h_button.toggled.connect(self._h_on_button)
        self._h_button.setEnabled(False)

    buttonsVisible = _stored("buttonsVisible", bool, True)
    deleteAllControlPointsOptionVisible = _stored("deleteAllControlPointsOptionVisible", bool, True)
    unsetLastControlPointOptionVisible = _stored("unsetLastControlPointOptionVisible", bool, True)
    unsetAllControlPointsOptionVisible = _stored("unsetAllControlPointsOptionVisible", bool, True)
    placeMultipleMarkups = _stored("placeMultipleMarkups", int, 0)
    nodeColor = _stored("nodeColor", QtGui.QColor, QtGui.QColor())
    defaultNodeColor = _stored("defaultNodeColor", QtGui.QColor, QtGui.QColor())
    deleteAllMarkupsOptionVisible = _stored("deleteAllMarkupsOptionVisible", bool, True)

    def _get_place(self):
        return bool(self._h_interaction is not None and self._h_node is not None and self.currentNodeActive
                    and self._h_interaction.GetCurrentInteractionMode() == self._h_interaction.Place)

    placeModeEnabled = Property(bool, _get_place, lambda self, v: self.setPlaceModeEnabled(v))
    placeModePersistency = Property(
        bool, lambda self: bool(self._h_interaction and self._h_interaction.GetPlaceModePersistence()),
        lambda self, v: self.setPlaceModePersistency(v))

    def _get_active(self):
        selection = self._h_selection()
        return bool(selection is not None and self._h_node is not None
                    and selection.GetActivePlaceNodeID() == self._h_node.GetID())

    currentNodeActive = Property(bool, _get_active, lambda self, v: self.setCurrentNodeActive(v))

    def _h_selection(self):
        scene = self._h_scene
        return scene.GetNodeByID("vtkMRMLSelectionNodeSingleton") if scene is not None else None

    def setMRMLScene(self, scene):  # noqa: N802
        for obj, tag in self._h_tags:
            obj.RemoveObserver(tag)
        self._h_tags = []
        qMRMLWidget.setMRMLScene(self, scene)
        self._h_interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton") if scene is not None else None
        if self._h_interaction is not None:
            import vtk
            self._h_tags.append(_observe(self, self._h_interaction, vtk.vtkCommand.ModifiedEvent, "_h_update"))
        self._h_update()

    def setCurrentNode(self, node):  # noqa: N802
        self._h_node = node if node is not None and node.IsA("vtkMRMLMarkupsNode") else None
        self._h_update()

    def currentNode(self):  # noqa: N802
        return self._h_node

    currentMarkupsNode = currentMarkupsFiducialNode = currentNode

    def interactionNode(self):  # noqa: N802
        return self._h_interaction

    def selectionNode(self):  # noqa: N802
        return self._h_selection()

    def placeButton(self):  # noqa: N802
        return self._h_button

    def setCurrentNodeActive(self, active):  # noqa: N802
        selection = self._h_selection()
        if selection is None or self._h_node is None:
            return
        selection.SetReferenceActivePlaceNodeClassName(self._h_node.GetClassName())
        selection.SetActivePlaceNodeID(self._h_node.GetID() if active else None)

    def setPlaceModePersistency(self, persistent):  # noqa: N802
        if self._h_interaction is not None:
            self._h_interaction.SetPlaceModePersistence(1 if persistent else 0)

    def setPlaceModeEnabled(self, enable):  # noqa: N802
        if self._h_scene is None or self._h_interaction is None or self._h_node is None:
            return
        if enable:
            if not self.currentNodeActive:
                self.setCurrentNodeActive(True)
            if self.placeMultipleMarkups == self.ForcePlaceSingleMarkup:
                self.setPlaceModePersistency(False)
            elif self.placeMultipleMarkups == self.ForcePlaceMultipleMarkups:
                self.setPlaceModePersistency(True)
            self._h_interaction.SetCurrentInteractionMode(self._h_interaction.Place)
        else:
            self._h_interaction.SetCurrentInteractionMode(self._h_interaction.ViewTransform)

    def setButtonsVisible(self, visible):  # noqa: N802
        self.buttonsVisible = visible

    def deleteLastPoint(self):  # noqa: N802
        if self._h_node is not None and self._h_node.GetNumberOfControlPoints():
            self._h_node.RemoveNthControlPoint(self._h_node.GetNumberOfControlPoints() - 1)

    def deleteAllPoints(self):  # noqa: N802
        if self._h_node is not None:
            self._h_node.RemoveAllControlPoints()

    def _h_on_button(self, checked):
        if checked != self.placeModeEnabled:
            self.setPlaceModeEnabled(checked)

    def _h_update(self):
        self._h_button.setEnabled(self._h_node is not None)
        place = self.placeModeEnabled
        blocked = self._h_button.blockSignals(True)
        self._h_button.setChecked(place)
        self._h_button.blockSignals(blocked)
        if getattr(self, "_h_last_place", None) != place:
            self._h_last_place = place
            _emit(self, "activeMarkupsPlaceModeChanged(bool)", place)
            _emit(self, "activeMarkupsFiducialPlaceModeChanged(bool)", place)

    def _h_click_in_view(self, ras) -> int:
        """A click at world position ``ras`` in a slice view while placing: a control point is added
        to the active place node. Returns its index."""
        if not self.placeModeEnabled:
            raise AssertionError("not in place mode: the click would move the view, not place a point")
        node = self._h_node
        index = node.AddControlPointWorld(list(map(float, ras)))
        if not self._h_interaction.GetPlaceModePersistence():
            self._h_interaction.SetCurrentInteractionMode(self._h_interaction.ViewTransform)
        return index


# --------------------------------------------------------------------------------------- CTK
@register_widget
class ctkCollapsibleButton(QAbstractButton):  # noqa: N801
    """CTK's section header: a checkable button whose children are shown only when expanded
    (``collapsed`` property, ``contentsCollapsed(bool)`` signal, ctkCollapsibleButton.h)."""

    _h_cpp = True
    _h_cpp_signals = ["contentsCollapsed(bool)"]
    _h_cpp_slots = []  # setCollapsed is a plain C++ method: Python uses the property
    HEADER = 24

    def __init__(self, parent=None):
        super().__init__(parent) if parent is not None else super().__init__()
        self._h_store = {}
        self._h_collapsed = False
        QtWidgets.QAbstractButton.setCheckable(self, True)
        QtWidgets.QAbstractButton.setChecked(self, True)
        QtWidgets.QWidget.setContentsMargins(self, 4, self.HEADER + 4, 4, 4)
        QtCore.QObject.connect(self, QtCore.SIGNAL("toggled(bool)"), self._h_on_toggled)

    def _set_collapsed(self, value):
        self._h_set_collapsed(value)

    collapsed = Property(bool, lambda self: self._h_collapsed, _set_collapsed)
    collapsedHeight = _stored("collapsedHeight", int, 14)
    flat = _stored("flat", bool, False)
    contentsFrameShape = _stored("contentsFrameShape", int, 0)
    contentsFrameShadow = _stored("contentsFrameShadow", int, 0)
    contentsLineWidth = _stored("contentsLineWidth", int, 1)
    contentsMidLineWidth = _stored("contentsMidLineWidth", int, 0)
    buttonTextAlignment = _stored("buttonTextAlignment", int, 0)
    indicatorAlignment = _stored("indicatorAlignment", int, 0)
    _h_enums = {"QFrame::NoFrame": 0, "QFrame::Box": 1, "QFrame::Panel": 2, "QFrame::StyledPanel": 6,
                "QFrame::HLine": 4, "QFrame::VLine": 5, "QFrame::Plain": 0x10, "QFrame::Raised": 0x20,
                "QFrame::Sunken": 0x30}

    def _h_set_collapsed(self, value):
        value = bool(value)
        if value == self._h_collapsed:
            return
        QtWidgets.QAbstractButton.setChecked(self, not value)

    def _h_on_toggled(self, checked):
        collapsed = not checked
        if collapsed == self._h_collapsed:
            return
        self._h_collapsed = collapsed
        for child in QtCore.QObject.children(self):
            if isinstance(child, QtWidgets.QWidget):
                child.setVisible(not collapsed)
        # ctkCollapsibleButtonPrivate::collapse: the maximum height shrinks to the header
        QtWidgets.QWidget.setMaximumHeight(self, self.HEADER if collapsed else 16777215)
        self.updateGeometry()
        self.update()
        _emit(self, "contentsCollapsed(bool)", collapsed)

    def sizeHint(self):  # noqa: N802
        hint = QtWidgets.QAbstractButton.sizeHint(self)
        layout = QtWidgets.QWidget.layout(self)
        if self._h_collapsed or layout is None:
            return QtCore.QSize(max(hint.width(), 100), self.HEADER)
        inner = layout.sizeHint()
        return QtCore.QSize(inner.width() + 8, inner.height() + self.HEADER + 8)

    def minimumSizeHint(self):  # noqa: N802
        if self._h_collapsed:
            return QtCore.QSize(100, self.HEADER)
        layout = QtWidgets.QWidget.layout(self)
        inner = layout.minimumSize() if layout is not None else QtCore.QSize(0, 0)
        return QtCore.QSize(inner.width() + 8, inner.height() + self.HEADER + 8)

    def hasHeightForWidth(self):  # noqa: N802 - word-wrapped labels inside need their width
        layout = QtWidgets.QWidget.layout(self)
        return bool(not self._h_collapsed and layout is not None and layout.hasHeightForWidth())

    def heightForWidth(self, width):  # noqa: N802
        layout = QtWidgets.QWidget.layout(self)
        if self._h_collapsed or layout is None or not layout.hasHeightForWidth():
            return QtWidgets.QAbstractButton.heightForWidth(self, width)
        return layout.heightForWidth(width - 8) + self.HEADER + 8

    def hitButton(self, pos):  # noqa: N802 - only the header toggles, as in CTK
        return pos.y() < self.HEADER

    def paintEvent(self, event):  # noqa: N802
        try:
            self._h_paint()
        except Exception as exc:  # noqa: BLE001 - a failing paint must fail the test, not just print
            import traceback
            pq.SLOT_ERRORS.append(("ctkCollapsibleButton.paintEvent", exc, traceback.format_exc()))

    def _h_paint(self):
        painter = QtGui.QPainter(self)
        palette = QtWidgets.QWidget.palette(self)
        width, height = QtWidgets.QWidget.width(self), QtWidgets.QWidget.height(self)
        header = QtCore.QRect(0, 0, width - 1, self.HEADER - 1)
        painter.setPen(palette.color(QtGui.QPalette.Mid))
        painter.setBrush(palette.color(QtGui.QPalette.Button))
        painter.drawRoundedRect(header, 3, 3)
        painter.setPen(palette.color(QtGui.QPalette.ButtonText))
        arrow = "\u25b8" if self._h_collapsed else "\u25be"
        painter.drawText(header.adjusted(8, 0, 0, 0), QtCore.Qt.AlignVCenter | QtCore.Qt.AlignLeft,
                         f"{arrow}  {QtWidgets.QAbstractButton.text(self)}")
        if not self._h_collapsed:
            painter.setPen(palette.color(QtGui.QPalette.Midlight))
            painter.setBrush(QtCore.Qt.NoBrush)
            painter.drawRect(QtCore.QRect(0, self.HEADER, width - 1, height - self.HEADER - 1))
        painter.end()


@register_widget
class ctkPathLineEdit(QWidget):  # noqa: N801
    """A path field (line edit + browse button). ``currentPathChanged(QString)`` is emitted on
    every text change that the validator accepts (ctkPathLineEdit.cpp ``updateHasValidInput``): the
    validator is built from ``nameFilters`` only and never accepts an empty text, so clearing the
    field emits nothing. ``filters`` only matter to the file dialog."""

    _h_cpp = True
    _h_cpp_signals = ["validInputChanged(bool)", "currentPathChanged(QString)"]
    _h_cpp_slots = ["setCurrentPath(QString)", "browse()", "retrieveHistory()", "addCurrentPathToHistory()"]
    _h_enums = {f"ctkPathLineEdit::{k}": v for k, v in dict(
        Dirs=0x001, Files=0x002, Drives=0x004, NoSymLinks=0x008, AllEntries=0x007, TypeMask=0x00f, Readable=0x010,
        Writable=0x020, Executable=0x040, PermissionMask=0x070, Modified=0x080, Hidden=0x100, System=0x200,
        AccessMask=0x3F0, AllDirs=0x400, CaseSensitive=0x800, NoDotAndDotDot=0x1000, NoDot=0x2000,
        NoDotDot=0x4000, NoFilter=-1, ShowDirsOnly=0x1, DontResolveSymlinks=0x2, DontConfirmOverwrite=0x4,
        DontUseSheet=0x8, DontUseNativeDialog=0x10, ReadOnly=0x20, HideNameFilterDetails=0x40,
        AdjustToContents=0, AdjustToContentsOnFirstShow=1, AdjustToMinimumContentsLength=2,
        AdjustToMinimumContentsLengthWithIcon=3).items()}

    def __init__(self, parent=None):
        super().__init__(parent) if parent is not None else super().__init__()
        self._h_store = {}
        self._h_name_filters: List[str] = []
        self._h_valid = True
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._h_edit = QtWidgets.QLineEdit(self)
        self._h_browse = QtWidgets.QToolButton(self)
        self._h_browse.setText("...")
        layout.addWidget(self._h_edit, 1)
        layout.addWidget(self._h_browse)
        self._h_edit.textChanged.connect(self._h_text_changed)

    label = _stored("label", str, "")
    filters = _stored("filters", int, 0x1057)  # AllEntries|NoDotAndDotDot|Readable|Executable
    options = _stored("options", int, 0)
    settingKey = _stored("settingKey", str, "")
    showBrowseButton = _stored("showBrowseButton", bool, True)
    showHistoryButton = _stored("showHistoryButton", bool, True)
    sizeAdjustPolicy = _stored("sizeAdjustPolicy", int, 1)
    minimumContentsLength = _stored("minimumContentsLength", int, 0)

    def _set_name_filters(self, value):
        self._h_name_filters = list(value)

    nameFilters = Property("QStringList", lambda self: list(self._h_name_filters), _set_name_filters)
    currentPath = Property(str, lambda self: self._h_edit.text(), lambda self, v: self.setCurrentPath(v))

    def setCurrentPath(self, path):  # noqa: N802
        self._h_edit.setText(str(path))

    def _h_accepts(self, text: str) -> bool:
        if not text:
            return False  # the validator's pattern is ".+" (ctkUtils nameFiltersToRegularExpression)
        if not self._h_name_filters:
            return True
        import fnmatch
        return any(fnmatch.fnmatch(text, pattern.split("(")[-1].rstrip(")")) for pattern in self._h_name_filters)

    def _h_text_changed(self, text):
        valid = self._h_accepts(text)
        if valid:
            _emit(self, "currentPathChanged(QString)", text)
        if valid != self._h_valid:
            self._h_valid = valid
            _emit(self, "validInputChanged(bool)", valid)

    def browse(self):
        raise AssertionError("a test opened the file dialog; type the path instead (_h_type)")

    def retrieveHistory(self):  # noqa: N802
        pass

    def addCurrentPathToHistory(self):  # noqa: N802
        pass

    def _h_type(self, text: str) -> None:
        """What typing ``text`` into the field does (one textChanged per call)."""
        self._h_edit.setText(text)


@register_widget
class ctkSliderWidget(QWidget):  # noqa: N801
    """Slider + spin box (ctkSliderWidget.cpp): ``value`` is clamped to [minimum, maximum] but kept
    exact (only the spin box text is rounded to ``decimals``); ``valueChanged(double)`` once per real
    change; a range change that moves the value emits it once. Defaults: 0 .. 99.99, step 1,
    2 decimals. From Python only the properties and ``setValue``/``reset``/``setDecimals``/
    ``setSpinBoxVisible`` are reachable (the range setters are plain C++ methods)."""

    _h_cpp = True
    _h_cpp_signals = ["valueChanged(double)", "valueIsChanging(double)", "decimalsChanged(int)"]
    _h_cpp_slots = ["setValue(double)", "reset()", "setDecimals(int)", "setSpinBoxVisible(bool)"]
    _h_enums = {"ctkSliderWidget::NoSynchronize": 0, "ctkSliderWidget::SynchronizeWidth": 1,
                "ctkSliderWidget::SynchronizeDecimals": 2, "QSlider::NoTicks": 0, "QSlider::TicksAbove": 1,
                "QSlider::TicksBelow": 2, "QSlider::TicksBothSides": 3}

    def __init__(self, parent=None):
        super().__init__(parent) if parent is not None else super().__init__()
        self._h_store = {}
        self._h_min, self._h_max, self._h_value, self._h_step = 0.0, 99.99, 0.0, 1.0
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._h_slider = QtWidgets.QSlider(QtCore.Qt.Horizontal, self)
        self._h_slider.setRange(0, 1000)
        self._h_spin = QtWidgets.QDoubleSpinBox(self)
        self._h_spin.setDecimals(2)
        layout.addWidget(self._h_slider, 1)
        layout.addWidget(self._h_spin)
        self._h_redraw()
        self._h_spin.valueChanged.connect(lambda v: self.setValue(v))
        self._h_slider.valueChanged.connect(self._h_slider_moved)

    def _h_redraw(self):
        for w in (self._h_spin, self._h_slider):
            w.blockSignals(True)
        self._h_spin.setRange(self._h_min, self._h_max)
        self._h_spin.setSingleStep(self._h_step)
        self._h_spin.setValue(self._h_value)
        span = self._h_max - self._h_min
        self._h_slider.setValue(0 if span <= 0 else int(round(1000 * (self._h_value - self._h_min) / span)))
        for w in (self._h_spin, self._h_slider):
            w.blockSignals(False)

    def _h_slider_moved(self, pos):
        self.setValue(self._h_min + (self._h_max - self._h_min) * pos / 1000.0)

    def _h_set_range(self, lo, hi):
        lo, hi = float(lo), float(hi)
        if lo > hi:
            lo, hi = hi, lo
        self._h_min, self._h_max = lo, hi
        clamped = min(max(self._h_value, lo), hi)
        changed = clamped != self._h_value
        self._h_value = clamped
        self._h_redraw()
        if changed:
            _emit(self, "valueChanged(double)", clamped)

    def _set_step(self, step):
        step = float(step)
        if not (1e-12 <= step <= max(self._h_max - self._h_min, 1e-12)) and self._h_max != self._h_min:
            return  # ctkDoubleSlider::isValidStep: ignored with a warning
        self._h_step = step
        self._h_redraw()

    value = Property(float, lambda self: self._h_value, lambda self, v: self.setValue(v))
    minimum = Property(float, lambda self: self._h_min, lambda self, v: self._h_set_range(v, max(v, self._h_max)))
    maximum = Property(float, lambda self: self._h_max, lambda self, v: self._h_set_range(min(v, self._h_min), v))
    singleStep = Property(float, lambda self: self._h_step, _set_step)
    pageStep = _stored("pageStep", float, 10.0)
    prefix = Property(str, lambda self: self._h_spin.prefix(), lambda self, v: self._h_spin.setPrefix(v))
    suffix = Property(str, lambda self: self._h_spin.suffix(), lambda self, v: self._h_spin.setSuffix(v))
    tickInterval = _stored("tickInterval", float, 0.0)
    tickPosition = _stored("tickPosition", int, 0)
    synchronizeSiblings = _stored("synchronizeSiblings", int, 1)
    spinBoxAlignment = _stored("spinBoxAlignment", int, 0)
    tracking = _stored("tracking", bool, True)
    spinBoxVisible = Property(bool, lambda self: self._h_spin.isVisibleTo(self),
                              lambda self, v: self.setSpinBoxVisible(v))
    popupSlider = _stored("popupSlider", bool, False)
    invertedAppearance = _stored("invertedAppearance", bool, False)
    invertedControls = _stored("invertedControls", bool, False)
    decimals = Property(int, lambda self: self._h_spin.decimals(), lambda self, v: self.setDecimals(v))

    def setValue(self, value):  # noqa: N802
        value = min(max(float(value), self._h_min), self._h_max)
        if value == self._h_value:
            return
        self._h_value = value
        self._h_redraw()
        _emit(self, "valueChanged(double)", value)

    def setDecimals(self, decimals):  # noqa: N802
        self._h_spin.setDecimals(int(decimals))
        self._h_redraw()
        _emit(self, "decimalsChanged(int)", int(decimals))

    def setSpinBoxVisible(self, visible):  # noqa: N802
        self._h_spin.setVisible(bool(visible))

    def reset(self):
        self.setValue(0.0)

    def _h_type(self, value: float) -> None:
        """What typing ``value`` into the spin box does."""
        self._h_spin.setValue(float(value))


# --------------------------------------------------------------------------------------- names only
def _minimal(name: str, base):
    cls = pq.PythonQtMeta(name, (base,), {"_h_cpp": True, "__module__": "ctk" if name.startswith("ctk") else "slicer",
                                           "__doc__": "Name only (see MINIMAL_CLASSES)."})
    return cls


MINIMAL_CLASSES = {
    "ctkCheckBox": _minimal("ctkCheckBox", pq.qt_class("QCheckBox")),
    "ctkCheckablePushButton": _minimal("ctkCheckablePushButton", pq.qt_class("QPushButton")),
    "ctkDoubleSlider": _minimal("ctkDoubleSlider", QWidget),
    "ctkDoubleSpinBox": _minimal("ctkDoubleSpinBox", QWidget),
    "ctkRangeWidget": _minimal("ctkRangeWidget", QWidget),
    "ctkDoubleRangeSlider": _minimal("ctkDoubleRangeSlider", QWidget),
    "ctkDirectoryButton": _minimal("ctkDirectoryButton", QWidget),
    "ctkColorPickerButton": _minimal("ctkColorPickerButton", pq.qt_class("QPushButton")),
    "ctkComboBox": _minimal("ctkComboBox", pq.qt_class("QComboBox")),
    "qMRMLSliderWidget": _minimal("qMRMLSliderWidget", ctkSliderWidget),
    "qMRMLSpinBox": _minimal("qMRMLSpinBox", QWidget),
    "qMRMLRangeWidget": _minimal("qMRMLRangeWidget", QWidget),
}

SLICER_CLASSES = {
    "qMRMLWidget": qMRMLWidget,
    "qMRMLNodeComboBox": qMRMLNodeComboBox,
    "qMRMLSegmentSelectorWidget": qMRMLSegmentSelectorWidget,
    "qSlicerMarkupsPlaceWidget": qSlicerMarkupsPlaceWidget,
    **{n: c for n, c in MINIMAL_CLASSES.items() if n.startswith("qMRML")},
}


def ctk_module() -> types.ModuleType:
    module = types.ModuleType("ctk", "CTK widgets (test harness stand-ins)")
    for cls in (ctkCollapsibleButton, ctkPathLineEdit, ctkSliderWidget):
        setattr(module, cls.__name__, cls)
    for name, cls in MINIMAL_CLASSES.items():
        if name.startswith("ctk"):
            setattr(module, name, cls)
    return module
