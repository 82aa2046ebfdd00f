"""DICOM inputs as real-world tools write them, built with pydicom (no PHI, nothing downloaded).

- :func:`write_series`: a CT or MR series, one file per slice with the geometry in the standard
  tags. ``deidentified=True`` leaves out every type-2 patient/study attribute a de-identification
  profile blanks or drops (PatientID, PatientName, PatientBirthDate, PatientSex, AccessionNumber,
  StudyDate, StudyTime, StudyID, ReferringPhysicianName): the attributes are *absent*, not empty,
  as many anonymisers leave them; ``deidentified="flagged"`` also says so (PatientIdentityRemoved
  YES with the method, as PS3.15 asks).
- ``spacing_between_slices``: the value written into SpacingBetweenSlices whatever the real
  distance between ImagePositionPatient values is (GDCM-written MR series are known to say 1 mm).
- :func:`write_dx`: one DX (digital X-ray, For Presentation) image, 2D, no ImagePositionPatient /
  ImageOrientationPatient (normal for projection radiographs), ImagerPixelSpacing only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
ROOT = "1.2.826.0.1.3680043.2.1125.77."  # a private test root; every UID below is made from it

_TYPE2_PATIENT_STUDY = {"PatientID": "PANTHEON-TEST", "PatientName": "Test^Phantom", "PatientBirthDate": "19700101",
                        "PatientSex": "O", "AccessionNumber": "A1", "StudyDate": "20240101", "StudyTime": "120000",
                        "StudyID": "1", "ReferringPhysicianName": ""}


def _ds(x: Sequence[float]) -> list:
    return [f"{float(v):.10g}" for v in x]


def _base(sop_class: str, sop_uid: str, modality: str, study_uid: str, deidentified: Union[bool, str]) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop_uid, modality
    ds.StudyInstanceUID = study_uid
    ds.Manufacturer = "Pantheon test writer"
    if not deidentified:
        for kw, value in _TYPE2_PATIENT_STUDY.items():
            setattr(ds, kw, value)
    elif deidentified == "flagged":  # PatientIdentityRemoved as profiles require it: with the method
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "PS3.15 E.1 Basic Profile"
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator = "113100", "DCM"
        item.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = [item]
    return ds


def _pixels(ds: Dataset, plane: np.ndarray) -> None:
    plane = np.asarray(plane)
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    signed = plane.dtype.kind == "i"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, int(signed)
    ds.PixelData = np.ascontiguousarray(plane.astype(np.int16 if signed else np.uint16)).tobytes()


def write_series(folder, vol, modality: str = "CT", deidentified: Union[bool, str] = True,
                 spacing_between_slices: Optional[float] = None, slice_thickness: Optional[float] = None,
                 frame_of_reference: bool = True, order=None, seed: int = 0) -> Path:
    """Write ``vol`` (a pantheon Volume, LPS) as a single-frame CT or MR series; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sop_class = CT_IMAGE if modality == "CT" else MR_IMAGE
    study, series, for_uid = (f"{ROOT}{seed}.1", f"{ROOT}{seed}.2", f"{ROOT}{seed}.3")
    arr = np.asarray(vol.array)
    arr = np.round(arr).astype(np.int16) if arr.dtype.kind == "f" else arr.astype(np.int16)
    d = np.asarray(vol.direction)
    for k in (order if order is not None else range(arr.shape[0])):
        ds = _base(sop_class, f"{series}.{k + 1}", modality, study, deidentified)
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series, 3, k + 1
        if frame_of_reference:
            ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = for_uid, ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = _ds(vol.ijk_to_world([0, 0, k])[0])
        ds.ImageOrientationPatient = _ds(list(d[:, 0]) + list(d[:, 1]))
        ds.PixelSpacing = _ds([vol.spacing[1], vol.spacing[0]])  # between rows, between columns
        ds.SliceThickness = f"{slice_thickness if slice_thickness is not None else vol.spacing[2]:.10g}"
        if spacing_between_slices is not None:
            ds.SpacingBetweenSlices = f"{spacing_between_slices:.10g}"
        if modality == "CT":
            ds.KVP, ds.RescaleIntercept, ds.RescaleSlope = "120", "0", "1"
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "SP", "", "3D"
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.MagneticFieldStrength = "4.1", "1.9", "1", "3"
        _pixels(ds, arr[k])
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return folder


def write_dx(folder, image: np.ndarray, pixel_spacing=(0.1, 0.1), deidentified: Union[bool, str] = True,
             frame_of_reference: bool = False, seed: int = 0) -> Path:
    """Write a 2D grayscale ``image`` (rows, columns) as one DX For Presentation file; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study, series = f"{ROOT}{seed}.11", f"{ROOT}{seed}.12"
    ds = _base(DX_PRESENTATION, f"{series}.1", "DX", study, deidentified)
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series, 1, 1
    if frame_of_reference:
        ds.FrameOfReferenceUID = f"{ROOT}{seed}.13"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = _ds(pixel_spacing)
    ds.PatientOrientation = ["L", "F"]  # as displayed: rows run to the patient's left, columns to the feet
    ds.BodyPartExamined = "JAW"
    ds.KVP, ds.ExposureTime = "70", "16000"
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LIN", 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    image = np.asarray(image)
    _pixels(ds, image.astype(np.uint16))
    ds.BitsStored, ds.HighBit = 12, 11
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.save_as(folder / "OPG.dcm", enforce_file_format=True)
    return folder


__all__ = ["write_series", "write_dx"]
