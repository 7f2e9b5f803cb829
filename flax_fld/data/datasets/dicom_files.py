"""DICOM files (what ultrasound scanners export) as float frames in [0, 1], one example per frame.

pydicom is an optional dependency (``pip install 'flax-fld[dicom]'``), imported only when a ``.dcm`` file
is read. ``read_header`` reads a file's header (frame count, patient and study ids) and refuses, in one line
naming the file and what to do, a file that cannot give frames: unreadable, without pixel data (e.g. a
structured report), or compressed with a transfer syntax that no installed decoder reads. ``iter_frames``
decodes the frames one at a time.

Pixel values are scaled by the file's own range, never by the values it happens to hold:

- Grayscale (MONOCHROME1/2): by the range of *Bits Stored* (``[0, 2**b - 1]``, or ``[-2**(b-1), 2**(b-1) - 1]``
  when signed); with a VOI LUT or window (*Window Center/Width*) in the file, that is applied to the
  rescaled values (``pydicom.pixels.apply_modality_lut`` then ``apply_voi_lut``) and its output range is
  scaled instead. MONOCHROME1 (0 = white) is inverted, so bright is bright as in MONOCHROME2.
- RGB: by the range of *Bits Stored*.
- YBR_FULL / YBR_FULL_422: converted to RGB. pydicom's decoders convert while decoding (also for JPEG
  baseline decoded by Pillow) and say so in the properties they return; only a frame still labelled YBR is
  converted here (``pydicom.pixels.convert_color_space``), so a frame is never converted twice.
- PALETTE COLOR: through the file's palette (``pydicom.pixels.apply_color_lut``), scaled by the bits of
  its entries.

The pure functions (``stored_range``, ``grayscale_to_unit``, ``color_to_unit``, ``frame_to_unit``) take
numpy arrays and header values, so they are tested without files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Iterator

import numpy as np

DICOM_EXTENSIONS = (".dcm", ".dicom")
INSTALL_HINT = "pip install 'flax-fld[dicom]'"
GROUP_BY = ("patient", "study", "file")
GROUP_TAGS = {"patient": "PatientID", "study": "StudyInstanceUID"}
# pip names of the packages pydicom names in its decoders' missing dependencies.
_PIP_NAMES = {"gdcm": "python-gdcm"}


def is_dicom(path: str) -> bool:
    """Whether ``path`` names a DICOM file by its extension (.dcm / .dicom, any case)."""
    return path.lower().endswith(DICOM_EXTENSIONS)


def _pydicom(path: str):
    """The pydicom module, imported on first use; ValueError naming ``path`` and the install command."""
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401  (the decoders and processing functions used below)
    except ImportError:
        raise ValueError(f"cannot read DICOM {path}: pydicom is not installed; {INSTALL_HINT}") from None
    return pydicom


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@dataclasses.dataclass(frozen=True)
class Header:
    """What the listing needs of a DICOM file: frames (examples) and the ids that group files for the split."""

    frames: int
    patient_id: str  # '' when absent
    study_uid: str  # '' when absent


def _read(path: str, *, header_only: bool):
    pydicom = _pydicom(path)
    try:
        # defer_size: the header is read, the (large) pixel data only located.
        return pydicom.dcmread(path, defer_size="1 KB" if header_only else None)
    except Exception as error:  # pydicom raises InvalidDicomError, EOFError, struct/value errors, ...
        raise ValueError(f"corrupt or truncated DICOM {path}: {_one_line(error)}") from None


def _install_hint(decoder) -> str:
    """``pip install pylibjpeg pylibjpeg-libjpeg`` (or ...) from a pydicom decoder's missing dependencies."""
    commands = []
    for text in decoder.missing_dependencies:  # e.g. 'pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1'
        requirements = text.split(" - requires ", 1)[-1].split(" and ")
        names = [re.split(r"[<>=!~ ]", r.strip(), maxsplit=1)[0] for r in requirements]
        names = [_PIP_NAMES.get(n, n) for n in names if n and n != "numpy"]
        if names:
            commands.append("pip install " + " ".join(names))
    return " or ".join(commands) or "a decoder plugin for pydicom"


def check_image(ds: Any, path: str) -> None:
    """ValueError (one line naming ``path`` and what to do) unless dataset ``ds`` holds decodable pixel data."""
    import pydicom.pixels

    if "PixelData" not in ds:
        sop = ds.get("SOPClassUID")
        sop_name = getattr(sop, "name", "") if sop else ""
        if ds.get("Modality") == "SR" or " SR" in f" {sop_name}" or "Report" in sop_name:
            raise ValueError(f"DICOM {path} is a structured report (SR), not an image: remove it from the image "
                             "folder")
        kind = f" ({sop_name})" if sop_name else ""
        raise ValueError(f"DICOM {path}{kind} holds no pixel data (no PixelData element): remove it from the "
                         "image folder")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if not syntax:
        raise ValueError(f"DICOM {path} has no TransferSyntaxUID in its file meta information: re-export it "
                         "from the scanner or PACS")
    try:
        decoder = pydicom.pixels.get_decoder(syntax)
    except NotImplementedError:
        raise ValueError(f"DICOM {path}: pydicom cannot decode its transfer syntax {syntax.name} ({syntax}); "
                         "convert it to an uncompressed DICOM (e.g. dcmdjpeg/gdcmconv --raw)") from None
    if not decoder.is_available:
        raise ValueError(f"DICOM {path}: no installed decoder reads its transfer syntax {syntax.name} ({syntax}); "
                         f"{_install_hint(decoder)}")


def read_header(path: str) -> Header:
    """The frame count and grouping ids of one DICOM file, after ``check_image``; ValueError naming the file."""
    ds = _read(path, header_only=True)  # first: imports pydicom, or says how to install it
    check_image(ds, path)
    from pydicom.pixels.utils import get_nr_frames

    try:
        frames = int(get_nr_frames(ds, warn=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"DICOM {path}: invalid NumberOfFrames: {_one_line(error)}") from None
    return Header(frames, str(ds.get("PatientID", "") or "").strip(), str(ds.get("StudyInstanceUID", "") or "").strip())


def group_key(header: Header, group_by: str, path: str) -> str:
    """The split group of a DICOM file: '' for ``group_by='file'`` (the file is its own group), else
    ``dicom-patient-<12 hex>`` / ``dicom-study-<12 hex>``: a SHA-256 of the id, so that the split record and
    the logs never hold a patient's id. ValueError naming the file when the id is missing."""
    if group_by not in GROUP_BY:
        raise ValueError(f"data.dicom_group_by={group_by!r}: expected one of {GROUP_BY}")
    if group_by == "file":
        return ""
    value = header.patient_id if group_by == "patient" else header.study_uid
    if not value:
        raise ValueError(f"DICOM {path} has no {GROUP_TAGS[group_by]} to group it by (data.dicom_group_by="
                         f"'{group_by}'): set data.dicom_group_by to "
                         f"{' or '.join(repr(g) for g in GROUP_BY if g != group_by)}")
    digest = hashlib.sha256(f"flax-fld:{group_by}:{value}".encode()).hexdigest()[:12]
    return f"dicom-{group_by}-{digest}"


# --- pure conversions of decoded frames ---------------------------------------------------------------------


def stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    """The values a sample of ``bits_stored`` bits can hold: (0, 2**b - 1), or two's complement when signed."""
    bits = int(bits_stored)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def scale_to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` mapped linearly from [low, high] to float32 [0, 1], clipped (same shape)."""
    if not high > low:
        raise ValueError(f"empty value range [{low}, {high}]")
    scaled = (np.asarray(values, np.float64) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _voi_range(ds: Any) -> tuple[float, float] | None:
    """Output range of ``apply_voi_lut`` on ``ds`` (its choice: the VOI LUT, else the window); None if neither."""
    sequence = ds.get("VOILUTSequence")
    if sequence and None not in (sequence[0].get("LUTDescriptor"), sequence[0].get("LUTData")):
        return 0.0, float(2 ** int(sequence[0].LUTDescriptor[2]) - 1)
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    # As pydicom.pixels.apply_windowing: the range of the stored values after the modality transform.
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    low, high = stored_range(ds.BitsStored, ds.get("PixelRepresentation", 0) == 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return float(min(low, high)), float(max(low, high))


def grayscale_to_unit(frame: np.ndarray, ds: Any, photometric: str) -> np.ndarray:
    """A decoded grayscale frame [H, W] (stored values) -> float32 [H, W] in [0, 1], 1 = bright.

    ``ds`` supplies BitsStored, PixelRepresentation and, when present, the VOI LUT / window and the modality
    rescale. MONOCHROME1 is inverted.
    """
    import pydicom.pixels

    voi = _voi_range(ds)
    if voi is None:
        unit = scale_to_unit(frame, *stored_range(ds.BitsStored, ds.get("PixelRepresentation", 0) == 1))
    else:
        values = pydicom.pixels.apply_voi_lut(pydicom.pixels.apply_modality_lut(frame, ds), ds)
        unit = scale_to_unit(values, *voi)
    return 1.0 - unit if photometric == "MONOCHROME1" else unit


def color_to_unit(frame: np.ndarray, ds: Any, photometric: str) -> np.ndarray:
    """A decoded color frame -> float32 RGB [H, W, 3] in [0, 1].

    ``frame``: [H, W, 3] for RGB / YBR_FULL / YBR_FULL_422 (converted to RGB here only when ``photometric``
    still says YBR), or the palette indices [H, W] for PALETTE COLOR.
    """
    import pydicom.pixels

    if photometric == "PALETTE COLOR":
        rgb = pydicom.pixels.apply_color_lut(frame, ds)[..., :3]
        return scale_to_unit(rgb, 0, 2 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1)
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        frame = pydicom.pixels.convert_color_space(frame, photometric, "RGB")
    elif photometric != "RGB":
        raise ValueError(f"unsupported photometric interpretation {photometric!r}")
    return scale_to_unit(frame, *stored_range(ds.BitsStored, ds.get("PixelRepresentation", 0) == 1))


def frame_to_unit(frame: np.ndarray, ds: Any, photometric: str) -> np.ndarray:
    """One decoded frame -> float32 [H, W] (grayscale) or [H, W, 3] (RGB) in [0, 1].

    ``photometric``: the interpretation of ``frame`` as decoded (pydicom's decoders may have converted YBR to
    RGB already; their returned properties say so), which may differ from the file's.
    """
    photometric = str(photometric).strip().upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if frame.ndim != 2:
            raise ValueError(f"{photometric} frame of shape {frame.shape}; expected [rows, columns]")
        return grayscale_to_unit(frame, ds, photometric)
    return color_to_unit(frame, ds, photometric)


def iter_frames(path: str) -> Iterator[np.ndarray]:
    """Every frame of the DICOM file ``path`` in order, as float32 [H, W] or [H, W, 3] in [0, 1].

    Decodes one frame at a time (a long cine loop never sits in memory whole). ValueError, one line naming
    the file (and the frame), for anything ``read_header`` refuses or a frame that fails to decode.
    """
    ds = _read(path, header_only=False)  # first: imports pydicom, or says how to install it
    check_image(ds, path)
    import pydicom.pixels
    from pydicom.pixels.utils import get_nr_frames

    decoder = pydicom.pixels.get_decoder(ds.file_meta.TransferSyntaxUID)
    frames = int(get_nr_frames(ds, warn=False))
    for index in range(frames):
        where = f"{path} frame {index + 1}/{frames}" if frames > 1 else path
        try:
            frame, properties = decoder.as_array(ds, index=index, as_rgb=True)
            photometric = properties.get("photometric_interpretation", ds.PhotometricInterpretation)
            unit = frame_to_unit(frame, ds, photometric)
        except Exception as error:  # decoder plugins raise many types; the message is what helps
            hint = "" if decoder.is_native else f"; another decoder may read it: {_install_hint(decoder)}"
            raise ValueError(f"cannot decode DICOM {where}: {_one_line(error)}{hint}") from None
        yield unit
