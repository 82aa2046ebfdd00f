"""What every pipeline returns: volumes in the input's geometry plus tables, scalars and notes.

The Slicer bridge turns a :class:`Result` into scene nodes; the command line writes it to files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .io.volume import Volume


@dataclass
class Segment:
    """One label value of a label volume."""

    value: int
    name: str
    color: Tuple[float, float, float]  # RGB in [0, 1]
    # Standard terminology where one exists: (coding scheme, code value, code meaning).
    code: Optional[Tuple[str, str, str]] = None


@dataclass
class LabelOutput:
    volume: Volume
    segments: List[Segment]


@dataclass
class HeatmapOutput:
    """A map of one number per input voxel.

    ``value_range`` is the range the values can take (the colour bar's ends). When every value lies
    in it, the files store the map to 1/255 of that range (see :mod:`pantheon.outputs`).
    """

    volume: Volume
    colormap: str = "inferno"  # a matplotlib / Slicer colour map name
    value_range: Tuple[float, float] = (0.0, 1.0)
    description: str = ""  # what a value means, in a sentence: result.json, the Slicer node's description
    label: str = ""  # the same in a few words, for the preview's colour bar (the description when empty)


@dataclass
class Result:
    """Outputs of one pipeline run. Keys are stable names, used for file names and node names."""

    labels: Dict[str, LabelOutput] = field(default_factory=dict)
    heatmaps: Dict[str, HeatmapOutput] = field(default_factory=dict)
    volumes: Dict[str, Volume] = field(default_factory=dict)  # other images, e.g. a 3-component PCA map
    tables: Dict[str, List[dict]] = field(default_factory=dict)
    scalars: Dict[str, float] = field(default_factory=dict)
    notes: Dict[str, str] = field(default_factory=dict)
