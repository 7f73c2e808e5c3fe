"""Which DICOM attributes may leave the archive, and in what shape.

The ``dicom`` output column takes keywords from ``KEEP`` only (unless the job sets
``decode.dicom_allow_phi: true``). ``KEEP`` is the table this project derived from DICOM PS3.15
Annex E, the Basic Application Level Confidentiality Profile, with the **Retain UIDs Option**: the
attributes it keeps are those Table E.1-1 does not list for removal or replacement — here, the
technical attributes that describe how an image was acquired and is to be displayed — plus the
UIDs that the Retain UIDs Option keeps. Dates, times, names, identifiers, free text, device serials,
institution and physician attributes, the patient's sex, age, size and weight (all listed in
E.1-1) are not in it, and sequences are never written (a sequence can nest anything).

Every value is checked against its value representation before it is written: a UID holds only
digits and dots, a code string only upper-case letters, digits, space and '_', numbers parse as
numbers, texts stay within their length limits and have no control characters. A value that does
not fit (for instance one whose malformed length swallowed the elements after it) is dropped, and
never shown in a message.
"""

from __future__ import annotations

import re
from typing import Any, Optional

# Retain UIDs Option.
_UIDS = {"SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPClassUID"}
# Not listed in PS3.15 Table E.1-1: kept by the Basic Profile (image geometry, pixel encoding,
# display, acquisition technique, the modality and body part examined).
_TECHNICAL = {
    "Modality", "BodyPartExamined", "ImageType", "Manufacturer", "Laterality", "ImageLaterality",
    "ViewPosition", "PatientPosition", "PatientOrientation", "PresentationIntentType",
    "SeriesNumber", "InstanceNumber", "AcquisitionNumber",
    "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames", "PixelAspectRatio",
    "PixelSpacing", "ImagerPixelSpacing", "SliceThickness", "SpacingBetweenSlices", "SliceLocation",
    "ImagePositionPatient", "ImageOrientationPatient",
    "WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope", "RescaleType", "VOILUTFunction",
    "LossyImageCompression", "LossyImageCompressionRatio", "BurnedInAnnotation",
    "FrameTime", "CineRate", "RecommendedDisplayFrameRate",
    "KVP", "ExposureTime", "XRayTubeCurrent", "Exposure", "ConvolutionKernel", "FilterType",
    "GantryDetectorTilt", "DataCollectionDiameter", "ReconstructionDiameter",
    "DistanceSourceToDetector", "DistanceSourceToPatient",
    "MagneticFieldStrength", "EchoTime", "RepetitionTime", "InversionTime", "FlipAngle",
    "EchoTrainLength", "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType",
    "ImagingFrequency", "ImagedNucleus", "NumberOfAverages", "PixelBandwidth",
}
KEEP = frozenset(_UIDS | _TECHNICAL)
PROFILE = "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, Retain UIDs Option"

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
_CHECKS = {
    "UI": lambda v: len(v) <= 64 and re.fullmatch(r"[0-9]+(\.[0-9]+)*", v) is not None,
    "CS": lambda v: len(v) <= 16 and re.fullmatch(r"[A-Z0-9 _]*", v) is not None,
    "DS": lambda v: len(v) <= 16 and re.fullmatch(r" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *", v) is not None,
    "IS": lambda v: len(v) <= 12 and re.fullmatch(r" *[+-]?[0-9]+ *", v) is not None,
    "SH": lambda v: len(v) <= 16 and not _CONTROL.search(v),
    "LO": lambda v: len(v) <= 64 and not _CONTROL.search(v),
}
_NUMERIC = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}


def keyword_problem(keyword: str, allow_phi: bool) -> Optional[str]:
    """Why a keyword may not go into the dicom column (None when it may)."""
    from pydicom.datadict import dictionary_VR, keyword_dict

    if keyword not in keyword_dict:
        return "not a DICOM keyword"
    if dictionary_VR(keyword_dict[keyword]) == "SQ":
        return "a sequence (sequences are never written: they can nest any attribute)"
    if keyword not in KEEP and not allow_phi:
        return "not kept by the de-identification profile"
    return None


def _value_fits(vr: str, value: Any) -> bool:
    values = list(value) if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else [value]
    for v in values:
        if vr in _NUMERIC:
            if not isinstance(v, (int, float)):
                return False
            continue
        if isinstance(v, bytes):
            return False
        check = _CHECKS.get(vr)
        if check is not None and not check(str(v)):
            return False
    return True


def safe_value(ds, keyword: str, allow_phi: bool) -> Optional[str]:
    """The attribute as a string when it is present and fits its value representation, else None.
    With ``allow_phi`` any non-sequence value is returned as it is."""
    from pydicom.datadict import dictionary_VR, keyword_dict

    tag = keyword_dict.get(keyword)
    if tag is None or tag not in ds or (keyword not in KEEP and not allow_phi):
        return None
    try:
        element = ds[tag]
        value = element.value
    except Exception:  # noqa: BLE001 - a value pydicom cannot parse is dropped, never shown
        return None
    if value is None or value == "" or element.VR == "SQ":
        return None
    if not allow_phi:
        expected = dictionary_VR(tag)
        if element.VR != expected and not (expected.startswith(element.VR) or element.VR in expected.split(" or ")):
            return None
        if not _value_fits(element.VR, value):
            return None
    text = str(value)
    return text if allow_phi or not _CONTROL.search(text.replace("\\", "")) else None


def check_keywords(keywords: list[str], allow_phi: bool) -> None:
    """Refuse keywords that are unknown, sequences, or outside the de-identification profile's keep
    list unless ``allow_phi`` (ValueError naming them)."""
    from imgclf_ray.extras import installed, message

    if not installed("dicom"):
        raise ValueError(f"dicom_attributes: {message('dicom')}")
    problems = {k: keyword_problem(k, allow_phi) for k in keywords}
    unknown = [k for k, p in problems.items() if p == "not a DICOM keyword"]
    if unknown:
        raise ValueError(f"dicom_attributes: unknown DICOM keyword(s) {', '.join(unknown)}")
    sequences = [k for k, p in problems.items() if p and p.startswith("a sequence")]
    if sequences:
        raise ValueError(f"dicom_attributes: {', '.join(sequences)}: sequences are never written "
                         "(they can nest any attribute, identifying ones included)")
    phi = [k for k, p in problems.items() if p]
    if phi:
        raise ValueError(f"dicom_attributes: {', '.join(phi)} are not kept by the {PROFILE} (they may "
                         "identify the patient); they are written only with decode.dicom_allow_phi: true")
