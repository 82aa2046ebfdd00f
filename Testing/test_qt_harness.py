"""The real-Qt harness itself: PythonQt's semantics, the strict UI loader, the widget stand-ins.

Negative controls included: a wrong signal signature, a raising slot, a property that does not
exist, a new attribute on a C++ object, a widget name missing from the .ui, an unknown widget class
and a connection to a missing slot must each fail.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("PySide6", reason="PySide6-Essentials (real Qt) is not installed")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qt_harness import pythonqt as pq  # noqa: E402
from qt_harness.application import application, qt_module  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UI_FILES = sorted(REPO.glob("*/Resources/UI/*.ui"))


@pytest.fixture(scope="module")
def qt():
    application()
    return qt_module()


@pytest.fixture(autouse=True)
def _no_slot_errors_left():
    pq.SLOT_ERRORS.clear()
    yield
    pq.SLOT_ERRORS.clear()


# ============================================================================ PythonQt semantics


def test_properties_are_attributes(qt):
    label = qt.QLabel()
    label.text = "Tooth 36"
    assert label.text == "Tooth 36" and not callable(label.text)  # the property, never the getter
    assert pq.QtWidgets.QLabel.text(label) == "Tooth 36"
    button = qt.QPushButton("Apply")
    button.enabled = False
    assert button.enabled is False and pq.QtWidgets.QWidget.isEnabled(button) is False
    button.name = "applyButton"  # PythonQt maps name to objectName
    assert pq.QtCore.QObject.objectName(button) == "applyButton" and button.objectName == "applyButton"
    assert isinstance(label.width, int)


def test_property_writes_are_checked(qt):
    label = qt.QLabel()
    with pytest.raises(AttributeError, match="does not accept an object of type NoneType"):
        label.text = None
    bar = qt.QProgressBar()
    with pytest.raises(AttributeError, match="does not accept"):
        bar.value = "half"
    with pytest.raises(AttributeError, match="not writable"):
        bar.text = "50 %"  # QProgressBar.text is read-only


def test_no_new_attributes_on_cpp_objects(qt):
    button = qt.QPushButton()
    with pytest.raises(AttributeError, match="creating new attributes on C\\+\\+ objects is not allowed"):
        button.myFlag = True
    with pytest.raises(AttributeError, match="Slot 'click' can not be overwritten"):
        button.click = None

    class Derived(qt.QWidget):  # a Python subclass may have attributes, as in PythonQt
        pass

    widget = Derived()
    widget.myFlag = True
    assert widget.myFlag is True


def test_child_found_by_object_name(qt):
    parent = qt.QWidget()
    child = qt.QCheckBox(parent)
    child.name = "useMaskCheckBox"
    assert parent.useMaskCheckBox is child
    with pytest.raises(AttributeError, match="has no attribute named 'missingCheckBox'"):
        parent.missingCheckBox  # noqa: B018


def test_connect_resolves_cpp_signatures(qt):
    button = qt.QPushButton()
    got = []
    assert button.connect("clicked(bool)", lambda checked: got.append(("bool", checked)))
    assert button.connect("clicked()", lambda: got.append("plain"))
    button.click()
    assert got == [("bool", False), "plain"]
    with pytest.raises(pq.SignalNotFound, match="signal 'clicked\\(int\\)' does not exist on QPushButton"):
        button.connect("clicked(int)", print)  # negative control: a wrong signature must fail
    with pytest.raises(pq.SignalNotFound):
        qt.QComboBox().connect("currentIndexChanged(QString)", print)  # Qt 5's overload, gone in Qt 6


def test_slot_arguments_are_truncated_as_pythonqt_does(qt):
    table = qt.QTableWidget(3, 3)
    seen = {}

    def two(row, column):
        seen["two"] = (row, column)

    class Receiver:
        def method(self, row, column=0, previousRow=-1):  # noqa: N803
            seen["method"] = (row, column, previousRow)

    table.connect("currentCellChanged(int,int,int,int)", two)
    table.connect("currentCellChanged(int,int,int,int)", Receiver().method)
    table.connect("currentCellChanged(int,int,int,int)", lambda *args: seen.__setitem__("all", args))
    table.connect("currentCellChanged(int,int,int,int)", lambda: seen.__setitem__("none", True))
    table.setCurrentCell(2, 1)
    assert seen == {"two": (2, 1), "method": (2, 1, -1), "all": (2, 1, -1, -1), "none": True}


def test_signal_attribute_uses_the_first_overload(qt):
    button = qt.QPushButton()
    got = []
    button.clicked.connect(lambda *args: got.append(args))
    button.click()
    assert got == [(False,)]  # clicked(bool), the first overload, as PythonQt connects it
    handler = got.append
    button.clicked.connect(handler)
    button.clicked.disconnect(handler)
    button.click()
    assert got == [(False,), (False,)]


def test_a_raising_slot_fails_the_test(qt):
    button = qt.QPushButton()

    def broken():
        raise ValueError("boom in a slot")

    button.connect("clicked()", broken)
    button.click()  # Qt returns normally, as PythonQt prints and goes on...
    with pytest.raises(pq.SlotError, match="boom in a slot"):
        pq.raise_slot_errors()  # ...but the harness reports it


def test_isinstance_follows_the_qt_hierarchy(qt):
    parent = qt.QWidget()
    button = qt.QPushButton(parent)
    label = qt.QLabel(parent)
    assert isinstance(button, qt.QWidget) and isinstance(button, qt.QAbstractButton)
    assert not isinstance(label, qt.QAbstractButton)
    assert type(button) is qt.QPushButton
    assert set(parent.findChildren(qt.QWidget)) == {button, label}
    assert parent.findChildren(qt.QPushButton) == [button]


# ============================================================================ the UI loader


def _load(qt, xml_text: str):
    data = pq.QtCore.QByteArray(xml_text.encode())
    buffer = pq.QtCore.QBuffer()
    buffer.setData(data)
    buffer.open(pq.QtCore.QIODevice.ReadOnly)
    return qt.QUiLoader().load(buffer)


UI_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<ui version="4.0"><class>Test</class>
 <widget class="qMRMLWidget" name="Test"><layout class="QVBoxLayout" name="layout">
  {body}
 </layout></widget>
 <customwidgets>
  <customwidget><class>qMRMLWidget</class><extends>QWidget</extends><header>qMRMLWidget.h</header></customwidget>
  <customwidget><class>qMRMLNodeComboBox</class><extends>QWidget</extends><header>qMRMLNodeComboBox.h</header></customwidget>
  <customwidget><class>ctkPathLineEdit</class><extends>QWidget</extends><header>ctkPathLineEdit.h</header></customwidget>
 </customwidgets>
 {connections}
</ui>"""


def _ui(body: str, connections: str = "") -> str:
    return UI_TEMPLATE.format(body=body, connections=connections)


def test_loader_applies_standin_properties_and_connections(qt):
    body = ("""<item><widget class="qMRMLNodeComboBox" name="inputSelector">
      <property name="nodeTypes"><stringlist><string>vtkMRMLScalarVolumeNode</string></stringlist></property>
      <property name="noneEnabled"><bool>true</bool></property>
      <property name="SlicerParameterName" stdset="0"><string>inputVolume</string></property></widget></item>
     <item><widget class="ctkPathLineEdit" name="pathEdit">
      <property name="filters"><set>ctkPathLineEdit::Files|ctkPathLineEdit::Executable</set></property>"""
            """</widget></item>""")
    connections = """<connections><connection><sender>Test</sender><signal>mrmlSceneChanged(vtkMRMLScene*)</signal>
      <receiver>inputSelector</receiver><slot>setMRMLScene(vtkMRMLScene*)</slot></connection></connections>"""
    top = _load(qt, _ui(body, connections))
    selector = top.findChild(qt.QWidget, "inputSelector")
    assert type(selector).__name__ == "qMRMLNodeComboBox"
    assert selector.nodeTypes == ["vtkMRMLScalarVolumeNode"] and selector.noneEnabled is True
    assert selector.property("SlicerParameterName") == "inputVolume"
    assert top.findChild(qt.QWidget, "pathEdit").filters == 0x002 | 0x040
    slicer = pytest.importorskip("slicer", reason="slicer-core (MRML) is not installed")
    scene = slicer.vtkMRMLScene()
    top.setMRMLScene(scene)  # the .ui connection forwards the scene to the selector
    assert selector.mrmlScene() is scene and selector.enabled


def test_loader_rejects_what_the_widgets_do_not_have(qt):
    from qt_harness.uiloader import UiFileError
    with pytest.raises(UiFileError, match="has no property 'nodeType'"):  # a typo'd property name
        _load(qt, _ui("""<item><widget class="qMRMLNodeComboBox" name="s">
            <property name="nodeType"><stringlist><string>x</string></stringlist></property></widget></item>"""))
    with pytest.raises(UiFileError, match="has no property 'checkedd'"):  # also on Qt's own widgets
        _load(qt, _ui("""<item><widget class="QCheckBox" name="c">
            <property name="checkedd"><bool>true</bool></property></widget></item>"""))
    with pytest.raises(UiFileError, match="no widget class 'qMRMLUnknownWidget'"):
        _load(qt, _ui("""<item><widget class="qMRMLUnknownWidget" name="u"/></item>"""))
    with pytest.raises(pq.SignalNotFound, match="no such slot"):
        _load(qt, _ui("""<item><widget class="qMRMLNodeComboBox" name="s"/></item>""",
                      """<connections><connection><sender>Test</sender><signal>mrmlSceneChanged(vtkMRMLScene*)</signal>
                      <receiver>s</receiver><slot>setScene(vtkMRMLScene*)</slot></connection></connections>"""))


def test_a_widget_name_missing_from_the_ui_fails(qt):
    slicer = pytest.importorskip("slicer", reason="slicer-core (slicer.util) is not installed")
    import sys
    saved = sys.modules.get("qt")
    sys.modules["qt"] = qt
    try:
        top = _load(qt, _ui("""<item><widget class="QPushButton" name="applyButton"/></item>"""))
        ui = slicer.util.childWidgetVariables(top)
    finally:
        sys.modules["qt"] = saved if saved is not None else sys.modules.pop("qt")
    assert ui.applyButton.name == "applyButton"
    with pytest.raises(AttributeError):
        ui.applyButtn  # noqa: B018 - a module using a name the .ui lacks fails here


@pytest.mark.parametrize("ui_file", UI_FILES, ids=lambda p: p.parent.parent.parent.name)
def test_every_property_the_ui_sets_exists_on_the_widget(qt, ui_file):
    """Each property a panel's .ui sets exists on the (stand-in or Qt) class, and the whole file
    loads with its connections."""
    from qt_harness.uiloader import STANDIN_WIDGETS, ui_properties
    root = ET.parse(ui_file).getroot()
    missing = []
    for widget_name, cls_name, prop_name, dynamic in ui_properties(root):
        if dynamic:
            continue
        widget = (STANDIN_WIDGETS.get(cls_name) or pq.qt_class(cls_name))()
        if pq.QtCore.QObject.metaObject(widget).indexOfProperty(prop_name) < 0:
            missing.append(f"{cls_name}.{prop_name} ({widget_name})")
    assert not missing
    top = qt.QUiLoader().load(str(ui_file))
    assert top is not None and top.objectName == ui_file.stem


# ============================================================================ stand-ins on MRML


@pytest.fixture
def scene(qt):
    slicer = pytest.importorskip("slicer", reason="slicer-core (MRML) is not installed")
    from qt_harness.application import register_segmentation_converters
    register_segmentation_converters()
    return slicer.vtkMRMLScene()


def _combo(types_, none=False):
    from qt_harness.standins import qMRMLNodeComboBox
    combo = qMRMLNodeComboBox()
    combo.nodeTypes = types_
    combo.noneEnabled = none
    return combo


def _record(combo):
    events = []
    combo.connect("currentNodeChanged(vtkMRMLNode*)", lambda n: events.append(n.GetName() if n else None))
    return events


def test_node_selector_follows_the_scene(scene):
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    combo = _combo(["vtkMRMLScalarVolumeNode"])
    events = _record(combo)
    combo.setMRMLScene(scene)
    assert combo.currentNode() is ct and combo.nodeCount() == 1  # setting a scene selects the first node
    mr = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MR")
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")  # a scalar volume subclass: listed
    assert combo.nodeCount() == 3 and combo.currentNode() is ct
    combo.hideChildNodeTypes = ["vtkMRMLLabelMapVolumeNode"]
    assert [combo.nodeFromIndex(i).GetName() for i in range(combo.nodeCount())] == ["CT", "MR"]
    scene.RemoveNode(ct)  # the node that takes the removed row becomes current
    assert combo.currentNode() is mr
    scene.Clear(0)
    assert combo.currentNode() is None and combo.nodeCount() == 0
    assert events == ["CT", "MR", None]


def test_node_selector_first_node_into_an_empty_list(scene):
    import slicer
    bare = _combo(["vtkMRMLSegmentationNode"])
    for flag in ("addEnabled", "removeEnabled", "renameEnabled", "editEnabled"):
        setattr(bare, flag, False)  # no action items: QComboBox selects the first row of an empty list
    bare.setMRMLScene(scene)
    first = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    assert bare.currentNode() is first
    other = slicer.vtkMRMLScene()
    with_actions = _combo(["vtkMRMLSegmentationNode"])  # add/remove enabled by default: action items
    with_actions.setMRMLScene(other)
    other.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    assert with_actions.currentNode() is None and with_actions.nodeCount() == 1
    with_none = _combo(["vtkMRMLSegmentationNode"], none=True)
    with_none.setMRMLScene(scene)
    assert with_none.currentNode() is None and with_none._h_item_texts() == ["None", "seg"]
    hidden = slicer.vtkMRMLSegmentationNode()
    hidden.SetHideFromEditors(True)
    scene.AddNode(hidden)
    assert with_none.nodeCount() == 1


def test_segment_selector_selects_the_first_segment(scene):
    from qt_harness.standins import qMRMLSegmentSelectorWidget
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.GetSegmentation().AddEmptySegment("liver", "liver")
    selector = qMRMLSegmentSelectorWidget()
    segments = []
    selector.connect("currentSegmentChanged(QString)", segments.append)
    selector.setMRMLScene(scene)  # the inner node selector picks the first segmentation...
    assert selector.currentNode() is seg and selector.currentSegmentID() == "liver"  # ...and its first segment
    seg.GetSegmentation().AddEmptySegment("tumour", "tumour")
    selector._h_choose_segment("tumour")
    assert selector.currentSegmentID() == "tumour" and segments == ["liver", "tumour"]


def test_path_line_edit_and_slider(qt):
    from qt_harness.standins import ctkPathLineEdit, ctkSliderWidget
    edit = ctkPathLineEdit()
    paths = []
    edit.connect("currentPathChanged(QString)", paths.append)
    edit._h_type("/tmp/model.safetensors")
    edit.currentPath = ""  # an empty path is not valid input: no signal (a cleared path reaches nobody)
    edit.currentPath = "/tmp/other"
    assert paths == ["/tmp/model.safetensors", "/tmp/other"]
    slider = ctkSliderWidget()
    slider.decimals = 2
    slider.minimum, slider.maximum = 0.0, 0.95
    values = []
    slider.connect("valueChanged(double)", values.append)
    slider.value = 0.5
    slider.value = 3.0  # clamped to the maximum
    slider.value = 0.333  # kept exact: only the spin box text is rounded
    assert values == [0.5, 0.95, 0.333] and slider.value == 0.333
