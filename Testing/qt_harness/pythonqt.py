"""PythonQt's semantics on a real Qt (PySide6), for the panel tests.

Slicer's Python talks to Qt through PythonQt, which differs from PySide6 in ways the module code
depends on. What is reproduced here (each rule from PythonQt's source, commontk/PythonQt
``src/PythonQtInstanceWrapper.cpp``, ``PythonQtClassInfo.cpp``, ``PythonQtSignalReceiver.cpp``,
``PythonQtStdDecorators.cpp``):

- attribute lookup order: Python-level attributes (instance dict, Python subclasses) first, then
  the Qt *property* of that name (so ``label.text`` is a string, never the getter), then methods,
  signals and enums, then dynamic properties, then a child object of that objectName; ``name`` is
  ``objectName``;
- attribute writes: a property is written through its ``QMetaProperty`` (a value the property does
  not accept is an ``AttributeError``; a read-only property too); slots and signals cannot be
  overwritten; a dynamic property is written; a new attribute on a C++ object is an
  ``AttributeError`` (only Python subclasses get new attributes);
- ``obj.connect('clicked(bool)', slot)`` resolves the normalized C++ signature against the
  object's meta object (PythonQt prints an error and returns False for a missing signal: here it
  raises, so a wrong signature fails the test); ``obj.signal.connect(slot)`` uses the signal's
  first overload; ``obj.connect(signal, receiver, 'slot(args)')`` connects two Qt objects;
- a slot gets at most as many arguments as it declares (``co_argcount``, minus self for methods,
  all with ``*args``), as PythonQt truncates;
- an exception raised in a slot is printed by PythonQt and swallowed; here it is recorded in
  :data:`SLOT_ERRORS` and re-raised by :func:`raise_slot_errors`, so a test fails.

The ``qt`` module built by :func:`make_qt_module` exposes every Qt class under its Qt name. Classes
derived from QObject are subclasses of the PySide6 class carrying these semantics (so
``type(widget) is qt.QCheckBox`` holds for widgets the UI loader makes, as Slicer's parameter
node wrapper requires); ``isinstance(w, qt.QWidget)`` follows the Qt class hierarchy. Other
classes (QPixmap, QColor, QTableWidgetItem...) are PySide6's own.

Stand-ins for C++ classes that are not Qt's (ctk*, qMRML*, qSlicer*) derive from these classes,
set ``_h_cpp = True`` and declare their C++ signals with ``_h_cpp_signals`` (see
:class:`PythonQtMeta`). Their own state lives in attributes named ``_h_*``.
"""

from __future__ import annotations

import inspect
import sys
import traceback
import types
from typing import Dict, List, Optional, Tuple

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

QObject = QtCore.QObject

# True while QUiLoader.load runs (see PythonQtObject.__setattr__)
LOADING_UI = False

# Exceptions raised inside slots since the last check: (where, exception, formatted traceback).
SLOT_ERRORS: List[Tuple[str, BaseException, str]] = []


class SignalNotFound(AttributeError):
    """A signal signature that the object does not have (PythonQt: 'signal ... does not exist')."""


class SlotError(AssertionError):
    """A slot raised while Qt called it (PythonQt would only print the traceback)."""


def raise_slot_errors() -> None:
    """Raise the first exception recorded in a slot since the last call (and forget them all)."""
    if not SLOT_ERRORS:
        return
    errors = list(SLOT_ERRORS)
    SLOT_ERRORS.clear()
    where, exc, text = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise SlotError(f"exception in slot {where}{more}:\n{text}") from exc


# --------------------------------------------------------------------------------------- signatures
def normalize(signature: str) -> str:
    """Qt's normalized form: 'currentCellChanged(int, int)' -> 'currentCellChanged(int,int)'."""
    if signature[:1] in "0123456789":  # SIGNAL()/SLOT() codes, as PythonQt accepts them
        signature = signature[1:]
    return bytes(QtCore.QMetaObject.normalizedSignature(signature)).decode()


def _params(signature: str) -> List[str]:
    inner = signature[signature.index("(") + 1:signature.rindex(")")]
    return [p for p in inner.split(",") if p]


# Python types for the C++ parameter types stand-in signals use.
_PY_TYPES = {"bool": bool, "int": int, "double": float, "float": float, "QString": str}


def _py_type(cpp_type: str):
    return _PY_TYPES.get(cpp_type, object)  # pointers (vtkMRMLNode*), QStringList...: any Python object


# --------------------------------------------------------------------------------------- slots
def pythonqt_arg_count(callable_) -> int:
    """How many signal arguments PythonQt passes to ``callable_`` (-1: all of them)."""
    func, bound = callable_, 0
    if isinstance(callable_, types.MethodType):
        func, bound = callable_.__func__, 1
    if isinstance(func, types.FunctionType):
        code = func.__code__
        if code.co_flags & inspect.CO_VARARGS:
            return -1
        return max(0, code.co_argcount - bound)
    return -1  # builtins, callable objects: PythonQt passes everything


class SlotCaller:
    """What Qt calls for a Python slot: truncates the arguments as PythonQt does and records an
    exception instead of letting it vanish."""

    def __init__(self, slot, where: str):
        self.slot, self.where = slot, where
        self.nargs = pythonqt_arg_count(slot)

    def __call__(self, *args):
        if self.nargs >= 0:
            args = args[:self.nargs]
        try:
            self.slot(*args)
        except BaseException as exc:  # noqa: BLE001 - everything a slot raises must fail the test
            SLOT_ERRORS.append((self.where, exc, traceback.format_exc()))
            traceback.print_exc(file=sys.stderr)


# (id(sender), normalized signature) -> [(slot, SlotCaller)], for disconnect
_CONNECTIONS: Dict[Tuple[int, str], List[Tuple[object, SlotCaller]]] = {}


def _class_signals(obj) -> Dict[str, Tuple[str, int]]:
    """{C++ signature PythonQt accepts: (the meta object's signature, parameter count)} for ``obj``'s class."""
    cls = type(obj)
    cache = cls.__dict__.get("_h_signal_table")
    if cache is not None:
        return cache
    table: Dict[str, Tuple[str, int]] = {}
    mo = QObject.metaObject(obj)  # a Python class's staticMetaObject can be a stale copy
    declared = {}
    for klass in reversed(cls.__mro__):  # stand-ins: their C++ spellings of PyObject signals
        declared.update(klass.__dict__.get("_h_signal_map", {}))
    for i in range(mo.methodCount()):
        m = mo.method(i)
        if m.methodType() != QtCore.QMetaMethod.Signal:
            continue
        actual = bytes(m.methodSignature()).decode()
        if "PyObject" not in actual:
            table[actual] = (actual, m.parameterCount())
    for cpp, actual in declared.items():
        table[cpp] = (actual, len(_params(actual)))
    type.__setattr__(cls, "_h_signal_table", table)
    return table


def _first_signal_overload(obj, name: str) -> Optional[str]:
    """The C++ signature PythonQt uses for ``obj.<name>.connect``: the first declared overload."""
    for klass in type(obj).__mro__:
        for cpp in klass.__dict__.get("_h_cpp_signals", ()):
            if cpp.split("(")[0] == name:
                return normalize(cpp)
    mo = QObject.metaObject(obj)
    for i in range(mo.methodCount()):
        m = mo.method(i)
        if m.methodType() == QtCore.QMetaMethod.Signal and bytes(m.name()).decode() == name:
            return bytes(m.methodSignature()).decode()
    return None


def resolve_signal(obj, signature: str) -> Tuple[str, int]:
    sig = normalize(signature)
    table = _class_signals(obj)
    if sig not in table:
        name = sig.split("(")[0]
        near = sorted(s for s in table if s.split("(")[0] == name)
        hint = f"; it has {', '.join(near)}" if near else ""
        raise SignalNotFound(f"PythonQt: QObject::connect() signal '{signature}' does not exist on "
                             f"{_class_name(obj)}{hint}")
    return table[sig]


def connect(sender, signal: str, receiver, slot: Optional[str] = None) -> bool:
    """PythonQt's ``sender.connect(signal, callable)`` / ``sender.connect(signal, receiver, slot)``."""
    sig = normalize(signal)
    actual, nparams = resolve_signal(sender, sig)
    if slot is not None:
        return _connect_qt_slot(sender, sig, actual, receiver, slot)
    if not callable(receiver):
        raise TypeError(f"connect({signal!r}, ...): {receiver!r} is not callable")
    caller = SlotCaller(receiver, f"{_class_name(sender)}.{sig} -> {_slot_name(receiver)}")
    QObject.connect(sender, QtCore.SIGNAL(actual), caller)
    _CONNECTIONS.setdefault((id(sender), sig), []).append((receiver, caller))
    return True


def disconnect(sender, signal: str, receiver=None, slot: Optional[str] = None) -> bool:
    sig = normalize(signal)
    actual, _n = resolve_signal(sender, sig)
    if slot is not None:
        raise NotImplementedError("disconnect(signal, receiver, slot) is not used by the modules")
    found = False
    kept = []
    for target, caller in _CONNECTIONS.get((id(sender), sig), []):
        if receiver is None or target == receiver:
            found = QObject.disconnect(sender, QtCore.SIGNAL(actual), caller) or found
        else:
            kept.append((target, caller))
    _CONNECTIONS[(id(sender), sig)] = kept
    return found


def _slot_signatures(obj) -> Dict[str, str]:
    """{C++ slot signature: Python method name} of ``obj`` (Qt's own slots and a stand-in's declared ones)."""
    cls = type(obj)
    table: Dict[str, str] = {}
    mo = QObject.metaObject(obj)
    for i in range(mo.methodCount()):
        m = mo.method(i)
        if m.methodType() in (QtCore.QMetaMethod.Slot, QtCore.QMetaMethod.Method):
            actual = bytes(m.methodSignature()).decode()
            if "PyObject" not in actual:
                table[actual] = bytes(m.name()).decode()
    for klass in reversed(cls.__mro__):
        for cpp in klass.__dict__.get("_h_cpp_slots", ()):
            table[normalize(cpp)] = cpp.split("(")[0]
    return table


def _connect_qt_slot(sender, sig: str, actual: str, receiver, slot: str) -> bool:
    """A signal to a receiver's slot, checked as Qt checks a string connection: the slot exists
    and its parameter types are a prefix of the signal's."""
    slot_sig = normalize(slot)
    table = _slot_signatures(receiver)
    if slot_sig not in table:
        raise SignalNotFound(f"QObject::connect: no such slot {_class_name(receiver)}::{slot_sig}")
    sig_params, slot_params = _params(sig), _params(slot_sig)
    if sig_params[:len(slot_params)] != slot_params:
        raise SignalNotFound(f"QObject::connect: incompatible sender/receiver arguments {sig} -> {slot_sig}")
    method = getattr(receiver, table[slot_sig])
    count = len(slot_params)
    caller = SlotCaller(lambda *args: method(*args[:count]),
                        f"{_class_name(sender)}.{sig} -> {_class_name(receiver)}.{slot_sig}")
    QObject.connect(sender, QtCore.SIGNAL(actual), caller)
    _CONNECTIONS.setdefault((id(sender), sig), []).append(((receiver, slot_sig), caller))
    return True


def _class_name(obj) -> str:
    try:
        return QObject.metaObject(obj).className()
    except Exception:  # noqa: BLE001 - only for messages
        return type(obj).__name__


def _slot_name(slot) -> str:
    return getattr(slot, "__qualname__", None) or repr(slot)


def _raw_attribute(obj, name):
    """PySide6's own attribute lookup (its classes define ``__getattribute__``: static/instance
    overloads such as ``QFile.exists`` need it)."""
    if isinstance(obj, PythonQtObject):
        return super(PythonQtObject, obj).__getattribute__(name)
    return getattr(obj, name)


class BoundSignal:
    """``obj.clicked`` as PythonQt gives it: ``connect``/``disconnect``/``emit`` on the first overload."""

    def __init__(self, obj, name: str):
        self._obj, self._name = obj, name
        self._sig = _first_signal_overload(obj, name)

    def connect(self, slot) -> bool:
        return connect(self._obj, self._sig, slot)

    def disconnect(self, slot=None) -> bool:
        return disconnect(self._obj, self._sig, slot)

    def emit(self, *args) -> None:
        actual, _n = resolve_signal(self._obj, self._sig)
        instance = _raw_attribute(self._obj, self._name)
        overloaded = _params(actual)
        try:
            instance = instance[tuple(_py_type(t) for t in overloaded)] if overloaded else instance
        except (KeyError, IndexError, TypeError):
            pass
        instance.emit(*args)

    def __call__(self, *args):  # PythonQt: calling a signal emits it
        self.emit(*args)

    def __repr__(self):
        return f"<signal {self._sig} of {_class_name(self._obj)}>"


# --------------------------------------------------------------------------------------- the object model
def _is_cpp_class(cls) -> bool:
    return bool(cls.__dict__.get("_h_cpp"))


def _user_attributes(cls) -> frozenset:
    """Names defined by Python subclasses of the C++ classes (PythonQt finds those first)."""
    cache = cls.__dict__.get("_h_user_attrs")
    if cache is not None:
        return cache
    names = set()
    for klass in cls.__mro__:
        if _is_cpp_class(klass) or klass is PythonQtObject or klass.__module__.startswith(("PySide6", "Shiboken")):
            break
        names.update(n for n in klass.__dict__ if not n.startswith("__"))
    result = frozenset(names)
    type.__setattr__(cls, "_h_user_attrs", result)
    return result


def _meta_property(obj, name: str):
    mo = QObject.metaObject(obj)
    index = mo.indexOfProperty("objectName" if name == "name" else name)
    return mo.property(index) if index >= 0 else None


def _qt_class(cls):
    """The PySide6 class a harness class stands for (itself for PySide6 classes)."""
    for klass in cls.__mro__:
        qt_base = klass.__dict__.get("_h_qt")
        if qt_base is not None:
            return qt_base
    return cls


_OWN = frozenset({"connect", "disconnect", "findChildren", "findChild", "className"})


class PythonQtObject:
    """Mixin (first in the MRO) that gives a PySide6 QObject PythonQt's attribute semantics."""

    def __getattribute__(self, name):
        if name[:2] == "__" or name[:3] == "_h_":
            return super(PythonQtObject, self).__getattribute__(name)
        cls = type(self)
        instance_dict = object.__getattribute__(self, "__dict__")
        if name in instance_dict:
            value = instance_dict[name]
            # PySide6 keeps each signal's SignalInstance in the instance dict
            return BoundSignal(self, name) if isinstance(value, QtCore.SignalInstance) else value
        if name in _user_attributes(cls):
            return super(PythonQtObject, self).__getattribute__(name)
        prop = _meta_property(self, name)
        if prop is not None:
            value = prop.read(self)
            return value
        if name in _OWN:
            return types.MethodType(_OWN_METHODS[name], self)
        try:
            value = super(PythonQtObject, self).__getattribute__(name)
        except AttributeError:
            value = _MISSING
        if value is not _MISSING:
            if isinstance(value, QtCore.SignalInstance):
                return BoundSignal(self, name)
            return value
        dynamic = QObject.property(self, name)
        if dynamic is not None:
            return dynamic
        for child in QObject.children(self):
            if QObject.objectName(child) == name:
                return child
        raise AttributeError(f"{_class_name(self)} has no attribute named '{name}'")

    def __setattr__(self, name, value):
        if name[:3] == "_h_" or name[:2] == "__":  # harness state; PySide6's own (__METAOBJECT__)
            super(PythonQtObject, self).__setattr__(name, value)
            return
        cls = type(self)
        if LOADING_UI and _meta_property(self, name) is None:
            return  # PySide6's QUiLoader sets each child as an attribute of the root; PythonQt finds children by name
        instance_dict = object.__getattribute__(self, "__dict__")
        if name in _user_attributes(cls) or (
                name in instance_dict and not isinstance(instance_dict[name], QtCore.SignalInstance)):
            super(PythonQtObject, self).__setattr__(name, value)
            return
        prop = _meta_property(self, name)
        if prop is not None:
            if not prop.isWritable():
                raise AttributeError(f"Property '{name}' of {_class_name(self)} object is not writable")
            if not _write_property(self, prop, value):
                raise AttributeError(f"Property '{name}' of type '{prop.typeName()}' does not accept an object "
                                     f"of type {type(value).__name__} ({value!r})")
            return
        try:
            existing = super(PythonQtObject, self).__getattribute__(name)
        except AttributeError:
            existing = _MISSING
        if existing is not _MISSING and (callable(existing) or isinstance(existing, QtCore.SignalInstance)):
            kind = "Signal" if isinstance(existing, QtCore.SignalInstance) else "Slot"
            raise AttributeError(f"{kind} '{name}' can not be overwritten on {_class_name(self)} object")
        if name in (bytes(n).decode() for n in QObject.dynamicPropertyNames(self)):
            QObject.setProperty(self, name, value)
            return
        if any(not _is_cpp_class(k) for k in cls.__mro__[:cls.__mro__.index(_first_cpp(cls))]):
            super(PythonQtObject, self).__setattr__(name, value)  # a Python subclass: new attributes are fine
            return
        raise AttributeError(f"'{name}' does not exist on {_class_name(self)} and creating new attributes "
                             "on C++ objects is not allowed")


_MISSING = object()


def _first_cpp(cls):
    for klass in cls.__mro__:
        if _is_cpp_class(klass):
            return klass
    return object


def _write_property(obj, prop, value) -> bool:
    """Write a Qt property as PythonQt does: converted to the property's type, False if it does not fit."""
    type_name = prop.typeName()
    if prop.isEnumType() or prop.isFlagType():
        return bool(prop.write(obj, value))
    if type_name == "bool" and not isinstance(value, (bool, int)):
        return False
    if type_name in ("int", "double", "float", "qlonglong", "uint") and (
            isinstance(value, bool) is False and not isinstance(value, (int, float))):
        return False
    if type_name == "QString" and value is None:
        return False
    if type_name in ("QStringList", "QVariantList") and isinstance(value, (list, tuple)):
        if type_name == "QStringList" and not all(isinstance(v, str) for v in value):
            return False
        value = list(value)  # PythonQt converts any sequence
    return bool(prop.write(obj, value))


def _obj_connect(self, signal, receiver, slot=None):
    return connect(self, signal, receiver, slot)


def _obj_disconnect(self, signal, receiver=None, slot=None):
    return disconnect(self, signal, receiver, slot)


def _obj_find_children(self, type_=None, name=""):
    # PySide6 matches an empty name literally; Qt (and PythonQt) read it as "any name"
    args = (name,) if name else ()
    return list(QObject.findChildren(self, _qt_class(type_) if type_ is not None else QObject, *args))


def _obj_find_child(self, type_=None, name=""):
    args = (name,) if name else ()
    return QObject.findChild(self, _qt_class(type_) if type_ is not None else QObject, *args)


def _obj_class_name(self):
    return _class_name(self)


_OWN_METHODS = {"connect": _obj_connect, "disconnect": _obj_disconnect, "findChildren": _obj_find_children,
                "findChild": _obj_find_child, "className": _obj_class_name}


class PythonQtMeta(type(QObject)):
    """Metaclass of the harness's Qt classes.

    ``isinstance``/``issubclass`` follow the Qt classes (``qt.QPushButton`` instances are
    ``qt.QWidget`` instances), and a class body may declare ``_h_cpp_signals = ["sig(args)", ...]``
    with C++ signatures: they become PySide6 signals (pointer and container types as Python
    objects) that ``connect`` finds under their C++ spelling.
    """

    def __new__(mcls, name, bases, namespace):
        cpp_signals = namespace.get("_h_cpp_signals")
        if cpp_signals:
            overloads: Dict[str, List[Tuple[str, tuple]]] = {}
            for cpp in cpp_signals:
                sig = normalize(cpp)
                overloads.setdefault(sig.split("(")[0], []).append((sig, tuple(_py_type(t) for t in _params(sig))))
            signal_map = {}
            for signal_name, variants in overloads.items():
                variant_types = [types_ for _sig, types_ in variants]
                namespace[signal_name] = (QtCore.Signal(*variant_types[0], name=signal_name) if len(variant_types) == 1
                                          else QtCore.Signal(*variant_types, name=signal_name))
                for sig, types_ in variants:
                    signal_map[sig] = f"{signal_name}({','.join(_meta_type_name(t) for t in types_)})"
            namespace["_h_signal_map"] = signal_map
        return super().__new__(mcls, name, bases, namespace)

    def __instancecheck__(cls, obj):
        qt_base = cls.__dict__.get("_h_qt")
        if qt_base is not None:
            return isinstance(obj, qt_base)
        return super().__instancecheck__(obj)

    def __subclasscheck__(cls, sub):
        qt_base = cls.__dict__.get("_h_qt")
        if qt_base is not None:
            return issubclass(sub, qt_base)
        return super().__subclasscheck__(sub)


def _meta_type_name(py_type) -> str:
    return {bool: "bool", int: "int", float: "double", str: "QString"}.get(py_type, "PyObject")


# --------------------------------------------------------------------------------------- the qt module
_QT_PACKAGES = (QtCore, QtGui, QtWidgets, QtUiTools)
_CLASSES: Dict[str, type] = {}


def qt_class(name: str):
    """The harness class for Qt class ``name`` (a PythonQt-semantics subclass for QObjects)."""
    if name in _CLASSES:
        return _CLASSES[name]
    for package in _QT_PACKAGES:
        base = getattr(package, name, None)
        if base is not None:
            break
    else:
        raise AttributeError(f"module 'qt' has no attribute '{name}'")
    if isinstance(base, type) and issubclass(base, QObject):
        cls = PythonQtMeta(name, (PythonQtObject, base), {"_h_qt": base, "_h_cpp": True, "__module__": "qt"})
    else:
        cls = base
    _CLASSES[name] = cls
    return cls


def register_class(name: str, cls) -> None:
    """Make ``qt.<name>`` be ``cls`` (the harness's own QUiLoader, QTimer...)."""
    _CLASSES[name] = cls


def make_qt_module() -> types.ModuleType:
    """The ``qt`` module Slicer's Python sees: every Qt class by name, created on first use."""
    module = types.ModuleType("qt", "Qt for Slicer's Python (PythonQt semantics on PySide6; test harness)")

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return qt_class(name)

    module.__getattr__ = __getattr__
    module.Qt = QtCore.Qt
    module.SIGNAL, module.SLOT = QtCore.SIGNAL, QtCore.SLOT
    return module


def wrap_slot(callable_, where: str):
    """A callable for APIs that take a Python callback directly (QTimer.singleShot...)."""
    return SlotCaller(callable_, where)
