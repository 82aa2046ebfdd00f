"""Readers for public datasets' label formats (no Slicer, no torch).

- :mod:`pantheon.data.dentex`: DENTEX (MICCAI 2023) hierarchical COCO-style JSON (quadrant /
  enumeration / diagnosis) and plain COCO, to per-image tooth records with FDI numbers.
"""
