"""DICOM files to 8-bit PNGs for review, with their study and series, and nothing that identifies the patient.

Grayscale pixels get the modality rescale (RescaleSlope, RescaleIntercept), then the file's own window (the first
WindowCenter/WindowWidth pair; without one the image's min–max) mapped linearly to 0..255; MONOCHROME1 is inverted so
that bright always means dense. RGB and YBR colour images keep their colours. Of a multi-frame file the middle frame is
taken (a cine loop's most typical view). The .dcm itself is not kept. Patient identifiers are read only to derive
`patient_key`, an HMAC of the PatientID under SECRET_KEY: it groups one patient's studies and reveals nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import re
from dataclasses import dataclass

import numpy as np
import pydicom
from django.conf import settings
from PIL import Image as PILImage
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder, pixel_array

from annotator.ingest.archive import name_cleaned
from annotator.png import png_encode

DICOM_MAGIC = b"DICM"  # after the 128-byte preamble of a DICOM file
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")
# A Python object as the decoders' messages name it, e.g. Pillow's "cannot identify image file <_io.BytesIO object at
# 0x7f…>": nothing a person can act on.
OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-fA-F]+>")
PATIENT_KEY_LENGTH = 32  # hex characters: 128 bits, plenty to group patients, too short to matter if leaked


class DicomError(ValueError):
    """A DICOM file that cannot be turned into a picture for review."""


@dataclass(frozen=True)
class DicomPicture:
    png: bytes
    width: int
    height: int
    study_uid: str
    study_name: str
    modality: str
    patient_key: str
    series_uid: str
    series_description: str
    instance_number: int | None


def dicom_detect(data: bytes, name: str) -> bool:
    return data[128:132] == DICOM_MAGIC or name.lower().endswith(".dcm")


def dicom_convert(data: bytes, max_pixels: int) -> DicomPicture:
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError) as error:
        raise DicomError(f"not a readable DICOM file ({error})") from error
    if "PixelData" not in dataset:
        raise DicomError("a DICOM file without pixel data (a DICOMDIR, report or structured document?)")
    _check_decodable(dataset)
    try:
        return _picture_from(dataset, max_pixels)
    except DicomError:
        raise  # says what is wrong already
    except (ValueError, TypeError, ArithmeticError) as error:  # e.g. a RescaleSlope of "abc"
        raise DicomError(f"unusable DICOM attributes ({type(error).__name__}: {error})") from error


def _picture_from(dataset, max_pixels: int) -> DicomPicture:
    rows, columns = int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0)
    if rows * columns > max_pixels:
        raise DicomError(f"{columns}x{rows} pixels is over the limit of {max_pixels} (possible decompression bomb)")
    photometric = str(dataset.get("PhotometricInterpretation") or "")
    if photometric not in GRAYSCALE + COLOUR:
        raise DicomError(f"photometric interpretation {photometric or 'missing'} is not supported; "
                         f"{', '.join(GRAYSCALE + COLOUR)} are")
    frames = int(dataset.get("NumberOfFrames") or 1)
    try:
        pixels = pixel_array(dataset, index=frames // 2 if frames > 1 else None)
    except Exception as error:  # pydicom's decoders raise many kinds; any of them means unusable pixel data
        reason = OBJECT_REPR.sub("", str(error))
        raise DicomError(f"corrupt or truncated pixel data ({type(error).__name__}: {reason})") from error
    picture = _grayscale_8bit(pixels, dataset) if photometric in GRAYSCALE else _colour_8bit(pixels)
    return DicomPicture(
        png=png_encode(picture), width=picture.width, height=picture.height,
        study_uid=_text(dataset, "StudyInstanceUID", 128), study_name=_study_name(dataset),
        modality=_text(dataset, "Modality", 16), patient_key=patient_key_derive(_text(dataset, "PatientID", 64)),
        series_uid=_text(dataset, "SeriesInstanceUID", 128),
        series_description=_text(dataset, "SeriesDescription", 200),
        instance_number=_integer(dataset.get("InstanceNumber")),
    )


def patient_key_derive(patient_id: str) -> str:
    if not patient_id:
        return ""
    digest = hmac.new(settings.SECRET_KEY.encode(), patient_id.encode(), hashlib.sha256).hexdigest()
    return digest[:PATIENT_KEY_LENGTH]


def _check_decodable(dataset) -> None:
    syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is None:
        raise DicomError("no transfer syntax in the file meta information; cannot tell how the pixels are encoded")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise DicomError(f"transfer syntax {syntax.name} ({syntax}) is not supported") from error
    if not decoder.is_available:
        raise DicomError(f"compressed transfer syntax {syntax.name} ({syntax}) needs a decoder that is not installed "
                         "here; send it as uncompressed DICOM (Explicit VR Little Endian) or as PNG")


def _grayscale_8bit(pixels: np.ndarray, dataset) -> PILImage.Image:
    slope = float(dataset.get("RescaleSlope") or 1)
    intercept = float(dataset.get("RescaleIntercept") or 0)
    values = pixels.astype(np.float64) * slope + intercept
    center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        low, high = float(values.min()), float(values.max())
    else:
        low, high = center - width / 2, center + width / 2
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    gray = np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    if dataset.PhotometricInterpretation == "MONOCHROME1":  # 0 is white there
        gray = 255 - gray
    return PILImage.fromarray(gray, mode="L")


def _colour_8bit(pixels: np.ndarray) -> PILImage.Image:
    if pixels.dtype != np.uint8:
        raise DicomError(f"colour pixels of type {pixels.dtype} are not supported; 8 bits per sample are")
    return PILImage.fromarray(pixels, mode="RGB")  # pydicom already converted YBR to RGB


def _study_name(dataset) -> str:
    description = _text(dataset, "StudyDescription", 200)
    if description:
        return description
    date = _text(dataset, "StudyDate", 8)
    if len(date) == 8 and date.isdigit():
        return f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return "DICOM study"


def _text(dataset, keyword: str, max_length: int) -> str:
    """The tag's text as the name rule allows it: a forged file may hide a NUL (which PostgreSQL refuses) in it."""
    return name_cleaned(str(dataset.get(keyword) or "").strip())[:max_length]


def _first(value) -> float | None:
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _integer(value) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None
