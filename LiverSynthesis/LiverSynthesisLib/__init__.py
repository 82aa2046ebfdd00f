"""GUI-free helpers of the LiverSynthesis module (pure Python: no slicer, qt, vtk or torch imports).

Everything here can be unit-tested in a plain Python; ``LiverSynthesis.py`` keeps only the Slicer
wiring (widget, logic, self-test) on top of it.
"""

from .core import *  # noqa: F401,F403
from .core import __all__  # noqa: F401
