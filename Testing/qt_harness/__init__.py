"""A real Qt (PySide6, offscreen) in which Pantheon's Slicer panels run as Slicer runs them.

- :mod:`.pythonqt`: PythonQt's semantics (properties as attributes, string signals, argument
  truncation, no new attributes on C++ objects, exceptions in slots fail the test) and the ``qt``
  module;
- :mod:`.standins`: Slicer/CTK widgets the .ui files use (qMRMLNodeComboBox ...), on the real MRML
  scene of PyPI ``slicer-core``;
- :mod:`.uiloader`: ``qt.QUiLoader`` (strict about properties and connections);
- :mod:`.application`: ``slicer.app``, loading modules as Slicer does, the scene's view nodes,
  dialogs answered by a robot, the event loop, screenshots.

Slicer 5.12.3's own ``ScriptedLoadableModule.py``, ``i18n.py`` and ``parameterNodeWrapper/`` are
used, not stand-ins: they are found through ``$PANTHEON_SLICER_PYTHON`` (default
``../shared/third_party/slicer-5.12.3``); without them the harness tests skip with that reason.

Nothing is imported here: :mod:`.fixtures` is a pytest plugin of Testing/conftest.py, which must
load where PySide6 is not installed; import ``qt_harness.application`` for ``SlicerHarness``.
"""
