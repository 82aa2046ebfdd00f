"""Writers of results into standard interchange formats (DICOM SEG for label maps).

Kept out of :mod:`pantheon.io` because these writers need the source data set (the DICOM
series a label map was computed on), not just a :class:`~pantheon.io.Volume`.
"""

from .dicom_seg import read_dicom_seg_as_label, write_dicom_seg, write_dicom_seg_side_output

__all__ = ["write_dicom_seg", "write_dicom_seg_side_output", "read_dicom_seg_as_label"]
