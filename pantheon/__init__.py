"""Pantheon: research models for medical imaging behind 3D Slicer panels and a command line.

Models (one sub-package each under ``pantheon.models``):

- NEMESIS: self-supervised CT foundation model (masked autoencoder on 128^3 superpatches).
- MATHENA: panoramic dental X-ray analysis (later issue).
- NeoNet: perineural invasion prediction in cholangiocarcinoma MRI (later issue).

The core never imports ``slicer``, ``qt``, ``ctk`` or ``vtk`` at module level; only
``pantheon.slicerbridge`` touches Slicer, inside functions.
"""

__version__ = "0.1.0"
