"""``qt.QUiLoader`` as Slicer's PythonQt has it: Qt Designer files whose Slicer/CTK widgets are
made by the stand-ins, and whose connections use C++ signatures.

PySide6's C++ ``QUiLoader`` calls the Python ``createWidget`` override for every widget, as
PythonQt's loader does through Slicer's designer plugins. Three things are done here rather than
by Qt, strictly, so that a mistake in a ``.ui`` file fails the test instead of printing a warning:

- properties of stand-in widgets (Qt cannot read ``ctkPathLineEdit::Filters`` sets or C++ enums of
  classes it does not know) are applied by :func:`apply_property`; a property the stand-in lacks is
  an error, as are unknown properties of Qt's own widgets;
- ``<connections>`` are made with the harness's ``connect``, which knows the C++ signatures of the
  stand-ins (``mrmlSceneChanged(vtkMRMLScene*)`` -> ``setMRMLScene(vtkMRMLScene*)``);
- a widget class that is neither Qt's nor a stand-in is an error (Qt would make a plain QWidget).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Dict, List, Tuple

from PySide6 import QtCore, QtUiTools, QtWidgets

from . import pythonqt as pq

# class name -> stand-in class (filled by standins.register_widget)
STANDIN_WIDGETS: Dict[str, type] = {}


class UiFileError(RuntimeError):
    """The .ui file asks for something the widgets do not have."""


def _value(prop: ET.Element, cls=None):
    """The Python value of a Designer ``<property>`` element (enums/sets through the stand-in's table)."""
    node = next(iter(prop), None)
    if node is None:
        return None
    tag, text = node.tag, (node.text or "")
    if tag == "bool":
        return text.strip() == "true"
    if tag == "number":
        return int(text)
    if tag in ("double", "float"):
        return float(text)
    if tag in ("string", "cstring"):
        return text
    if tag == "stringlist":
        return [s.text or "" for s in node.findall("string")]
    if tag in ("enum", "set"):
        table = {}
        for klass in (cls.__mro__ if cls is not None else ()):
            table.update(klass.__dict__.get("_h_enums", {}))
        value = 0
        for key in text.split("|"):
            key = key.strip()
            if key not in table:
                raise UiFileError(f"{cls.__name__ if cls else '?'}: unknown {tag} value {key!r}")
            value |= table[key]
        return value
    if tag == "rect":
        get = lambda n: int(node.findtext(n) or 0)  # noqa: E731
        return QtCore.QRect(get("x"), get("y"), get("width"), get("height"))
    if tag == "size":
        return QtCore.QSize(int(node.findtext("width") or 0), int(node.findtext("height") or 0))
    raise UiFileError(f"property type <{tag}> is not supported by the harness")


def apply_property(widget, name: str, value, dynamic: bool) -> None:
    """Set one .ui property on a stand-in (strict: the property must exist unless ``stdset=0``)."""
    if dynamic:
        QtCore.QObject.setProperty(widget, name, value)
        return
    prop = pq._meta_property(widget, name)
    if prop is None:
        raise UiFileError(f"{pq._class_name(widget)} '{QtCore.QObject.objectName(widget)}' has no property "
                          f"'{name}' (set in the .ui file)")
    if not prop.isWritable() or not pq._write_property(widget, prop, value):
        raise UiFileError(f"{pq._class_name(widget)}.{name} does not accept {value!r} from the .ui file")


def ui_properties(root: ET.Element) -> List[Tuple[str, str, str, bool]]:
    """(widget name, class, property name, dynamic) for every property a .ui file sets on a widget."""
    out = []
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            out.append((widget.get("name"), widget.get("class"), prop.get("name"), prop.get("stdset") == "0"))
    return out


class QUiLoader(pq.qt_class("QUiLoader")):
    """The harness's ``qt.QUiLoader`` (see the module docstring)."""

    _h_cpp = True

    def createWidget(self, className, parent=None, name=""):  # noqa: N802 - Qt's virtual
        cls = STANDIN_WIDGETS.get(className)
        if cls is None:
            if not hasattr(QtWidgets, className):
                raise UiFileError(f"no widget class {className!r} (neither Qt's nor a stand-in)")
            cls = pq.qt_class(className)
        widget = cls(parent) if parent is not None else cls()
        QtCore.QObject.setObjectName(widget, name)
        return widget

    def load(self, device, parent=None):
        if isinstance(device, str):
            with open(device, "rb") as f:
                data = f.read()
        else:
            data = bytes(device.readAll())
        root = ET.fromstring(data)
        for widget in root.iter("widget"):  # Qt would make a plain QWidget of an unknown class, silently
            name = widget.get("class")
            if name not in STANDIN_WIDGETS and not hasattr(QtWidgets, name):
                raise UiFileError(f"no widget class {name!r} (neither Qt's nor a stand-in)")
        deferred = []  # (widget name, class, element) of stand-in properties
        for widget in root.iter("widget"):
            cls = STANDIN_WIDGETS.get(widget.get("class"))
            if cls is None:
                continue
            for prop in widget.findall("property"):
                deferred.append((widget.get("name"), cls, prop))
                widget.remove(prop)
        connections = root.find("connections")
        wiring = []
        if connections is not None:
            for c in connections.findall("connection"):
                wiring.append(tuple(c.findtext(t) for t in ("sender", "signal", "receiver", "slot")))
            root.remove(connections)
        buffer = QtCore.QBuffer()
        buffer.setData(ET.tostring(root))
        buffer.open(QtCore.QIODevice.ReadOnly)
        pq.LOADING_UI = True
        try:
            top = QtUiTools.QUiLoader.load(self, buffer, parent) if parent is not None \
                else QtUiTools.QUiLoader.load(self, buffer)
        finally:
            pq.LOADING_UI = False
            buffer.close()
        pq.raise_slot_errors()
        if top is None:
            raise UiFileError(f"QUiLoader: {QtUiTools.QUiLoader.errorString(self)}")
        named = {QtCore.QObject.objectName(w): w
                 for w in [top] + list(QtCore.QObject.findChildren(top, QtCore.QObject))}
        for widget_name, cls, prop in deferred:
            apply_property(named[widget_name], prop.get("name"), _value(prop, cls), prop.get("stdset") == "0")
        check_properties(root, named)
        for sender, signal, receiver, slot in wiring:
            if sender not in named or receiver not in named:
                raise UiFileError(f"connection {sender}.{signal} -> {receiver}.{slot}: no such widget")
            pq.connect(named[sender], signal, named[receiver], slot)
        return top


def check_properties(root: ET.Element, named: Dict[str, object]) -> None:
    """Every property the .ui sets on one of Qt's own widgets exists on it (Qt skips unknown ones silently)."""
    for widget_name, cls_name, prop_name, dynamic in ui_properties(root):
        if dynamic or cls_name in STANDIN_WIDGETS:
            continue
        widget = named.get(widget_name)
        if widget is not None and pq._meta_property(widget, prop_name) is None:
            raise UiFileError(f"{cls_name} '{widget_name}' has no property '{prop_name}' (set in the .ui file)")
