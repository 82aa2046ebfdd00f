"""The Slicer bridge: the one place in Pantheon that touches Slicer's API.

Scene -> worker: :func:`volume_from_node`, :func:`export_volume`, :func:`export_segmentation`,
:func:`segment_masks` / :func:`iter_segment_masks` (segments on a volume's grid),
:func:`write_label_array`. Worker -> scene: :func:`import_result` (returns :class:`ImportedResult`),
:func:`import_segment` (one segment into a chosen segmentation, replaced on re-run),
:func:`output_node`, :func:`show_result` (view layout; needs the Slicer application),
:func:`outputs_of`, :func:`remove_outputs`.
Crop boxes -> markups ROI: :func:`import_roi` (:mod:`pantheon.slicerbridge.markups`).

``slicer`` and ``vtk`` are imported inside functions only, and nothing here imports torch: this
runs in the Slicer process. Design notes (geometry frame, replacement on re-run, colour tables,
terminology, subject hierarchy) are in :mod:`pantheon.slicerbridge.scene`.
"""

from .markups import find_roi, import_roi, roi_corners_ras, roi_geometry, roi_node_corners
from .scene import (
                    ATTR_ACTION,
                    ATTR_INPUT,
                    ATTR_KIND,
                    ATTR_OUTPUT,
                    ImportedResult,
                    color_node_id,
                    export_segmentation,
                    export_volume,
                    import_result,
                    import_segment,
                    iter_segment_masks,
                    output_node,
                    outputs_of,
                    remove_outputs,
                    segment_masks,
                    segment_terminology,
                    show_result,
                    volume_from_node,
                    write_label_array,
)
from .terms import BTCV_ORGANS, parse_terminology, resolve_label_values, terminology_string

__all__ = [
    "volume_from_node", "export_volume", "export_segmentation", "import_result", "ImportedResult",
    "segment_masks", "iter_segment_masks", "write_label_array", "import_segment", "output_node",
    "show_result", "outputs_of", "remove_outputs", "color_node_id", "segment_terminology",
    "BTCV_ORGANS", "terminology_string", "parse_terminology", "resolve_label_values",
    "ATTR_INPUT", "ATTR_ACTION", "ATTR_OUTPUT", "ATTR_KIND",
    "import_roi", "find_roi", "roi_geometry", "roi_corners_ras", "roi_node_corners",
]
