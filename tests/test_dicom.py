"""DICOM input (flax_fld/datasets/dicom_files.py) and every bit depth: the photometric interpretations of pydicom's
own test files, frames as examples, grouping by patient/study for the split, one-line errors; 16-bit PNG/TIFF;
a DICOM class folder that trains (tiny preset), previews and is graded by predict."""

import csv
import io
import os
import shutil
import sys

import numpy as np
import PIL.Image
import pydicom
import pydicom.encaps
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, get_decoder
from pydicom.uid import JPEGLSLossless

from flax_fld.data import input_pipeline
from flax_fld.data.datasets import base, class_folders, dicom_files
from flax_fld.evaluation import metrics
from flax_fld.reporting import metric_writers, tables
from flax_fld.runs import predict
from flax_fld.runtime.config_files import load_config
from flax_fld.tools import preview

MONOCHROME1 = "dicomdirtests/77654033/CR1/6154"  # a 16x16 CR image, 12 bits stored, with a window


def pydicom_file(name):
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return path


def frames_of(name):
    return list(dicom_files.iter_frames(pydicom_file(name)))


def raw_frame(name):
    ds = pydicom.dcmread(pydicom_file(name))
    return get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=0, as_rgb=False)[0], ds


def data_config(root, **overrides):
    config = load_config("default").data
    config.update(dict(name="class_folders", root=str(root), image_size=8, class_names=()), **overrides)
    return config


def read_record(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_dicom(path, pixels, patient_id="P1", study_uid="1.2.3.4", bits_stored=12, **tags):
    """A copy of pydicom's MR_small.dcm holding ``pixels`` [F, H, W] (uint16, MONOCHROME2, no window)."""
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    for keyword in ("WindowCenter", "WindowWidth", "SmallestImagePixelValue", "LargestImagePixelValue",
                    "DataSetTrailingPadding"):
        delattr(ds, keyword)  # pixel data last in the file, so cutting the file's end cuts the pixels
    pixels = np.asarray(pixels, np.uint16)
    ds.set_pixel_data(pixels if len(pixels) > 1 else pixels[0], "MONOCHROME2", bits_stored)
    ds.PatientID, ds.StudyInstanceUID = patient_id, study_uid
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def copy_with(name, path, **tags):
    """pydicom's test file ``name`` saved at ``path`` with the given elements set (None: deleted)."""
    ds = pydicom.dcmread(pydicom_file(name))
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


# --- photometric interpretations of real files --------------------------------------------------------------


def test_ybr_full_422_jpeg_cine_gives_every_frame_as_rgb():
    path = pydicom_file("examples_ybr_color.dcm")  # 30-frame ultrasound cine, JPEG baseline, YBR_FULL_422
    assert dicom_files.read_header(path).frames == 30
    frames = list(dicom_files.iter_frames(path))
    assert len(frames) == 30
    assert all(f.shape == (240, 320, 3) and f.dtype == np.float32 for f in frames)
    assert min(f.min() for f in frames) >= 0.0 and max(f.max() for f in frames) <= 1.0
    assert not np.array_equal(frames[0], frames[-1])  # frames in order, not one frame repeated


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm",  # YBR_FULL, JPEG baseline (Pillow)
                                  "SC_rgb_dcmtk_+eb+cy+s2.dcm",  # YBR_FULL_422, JPEG baseline
                                  "SC_ybr_full_422_uncompressed.dcm",  # YBR_FULL_422, native
                                  "SC_rgb_dcmtk_+eb+cr.dcm"])  # RGB, JPEG baseline
def test_ybr_is_converted_to_rgb_exactly_once(name):
    """The same 100x100 test card (bands red, pink, light green, blue, black, gray, white) in every encoding."""
    (frame,) = frames_of(name)
    (reference,) = frames_of("SC_rgb_rle.dcm")  # RGB, lossless
    assert frame.shape == (100, 100, 3)
    np.testing.assert_allclose(frame, reference, atol=6 / 255)  # JPEG's loss; a YBR left or converted twice is far off
    np.testing.assert_allclose(frame[5, 50], [1, 0, 0], atol=2 / 255)  # the top band is red


def test_a_frame_still_labelled_ybr_is_converted_and_rgb_is_left_alone():
    raw, ds = raw_frame("SC_ybr_full_422_uncompressed.dcm")  # as stored: YCbCr
    (expected,) = frames_of("SC_ybr_full_422_uncompressed.dcm")  # the decoder converted
    np.testing.assert_allclose(dicom_files.frame_to_unit(raw, ds, "YBR_FULL_422"), expected, atol=1e-6)
    rgb = np.round(expected * 255).astype(np.uint8)
    np.testing.assert_array_equal(dicom_files.frame_to_unit(rgb, ds, "RGB"), expected)


@pytest.mark.parametrize("name, shape", [("examples_rgb_color.dcm", (240, 320, 3)),
                                         ("ExplVR_BigEnd.dcm", (60, 80, 3))])
def test_rgb_is_scaled_by_its_8_bits(name, shape):
    (frame,) = frames_of(name)
    raw, _ = raw_frame(name)
    assert frame.shape == shape and raw.dtype == np.uint8
    np.testing.assert_allclose(frame, raw / 255.0, atol=1e-6)
    assert frame.max() > 0.9 and frame.min() < 0.1


def test_16_bit_rgb_is_scaled_by_its_bits_stored():
    (frame16,) = frames_of("SC_rgb_rle_16bit.dcm")  # the test card with 16 bits stored
    (frame8,) = frames_of("SC_rgb_rle.dcm")
    assert raw_frame("SC_rgb_rle_16bit.dcm")[0].max() == 65535
    np.testing.assert_allclose(frame16, frame8, atol=1e-6)


def test_palette_color_goes_through_the_files_palette():
    (frame,) = frames_of("examples_palette.dcm")
    raw, ds = raw_frame("examples_palette.dcm")
    assert raw.ndim == 2 and frame.shape == (350, 800, 3)
    np.testing.assert_allclose(frame, apply_color_lut(raw, ds) / 65535.0, atol=1e-6)  # 16-bit palette entries
    assert np.abs(frame[..., 0] - frame[..., 2]).max() > 0.2  # colors, not the gray indices


def test_monochrome2_is_scaled_by_bits_stored_and_keeps_its_orientation():
    (frame,) = frames_of("CT_small.dcm")  # 16 bits stored, signed, no window
    raw, _ = raw_frame("CT_small.dcm")
    assert frame.shape == (128, 128) and raw.dtype == np.int16
    np.testing.assert_allclose(frame, (raw.astype(np.float64) + 32768) / 65535, atol=1e-6)


def test_monochrome2_applies_its_window():
    (frame,) = frames_of("MR_small.dcm")  # Window Center 600, Width 1600, 16 bits stored, signed
    raw, _ = raw_frame("MR_small.dcm")
    assert frame.shape == (64, 64)
    expected = np.clip((raw - (600 - 0.5)) / (1600 - 1) + 0.5, 0, 1)  # DICOM's linear window
    np.testing.assert_allclose(frame, expected, atol=1e-4)
    assert frame.max() == 1.0 and frame.min() > 0.1  # the window, not the 16-bit range (which would be ~0.5)


def test_monochrome1_is_inverted():
    (frame,) = frames_of(MONOCHROME1)
    raw, ds = raw_frame(MONOCHROME1)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and frame.shape == (16, 16)
    assert np.corrcoef(raw.ravel(), frame.ravel())[0, 1] < -0.99  # the highest stored value is the darkest
    np.testing.assert_allclose(frame, 1.0 - dicom_files.frame_to_unit(raw, ds, "MONOCHROME2"), atol=1e-6)


def test_stored_range_and_scaling():
    assert dicom_files.stored_range(8, False) == (0, 255)
    assert dicom_files.stored_range(12, False) == (0, 4095)
    assert dicom_files.stored_range(16, True) == (-32768, 32767)
    np.testing.assert_allclose(dicom_files.scale_to_unit(np.array([0, 2048, 4095, 5000]), 0, 4095),
                               [0, 2048 / 4095, 1, 1], rtol=1e-6)


# --- one-line errors naming the file and what to do --------------------------------------------------------


def _no_pixel_data(tmp_path):
    return copy_with("CT_small.dcm", tmp_path / "x" / "nopixels.dcm", PixelData=None)


def _report(tmp_path):
    path = tmp_path / "x" / "report.dcm"
    path.parent.mkdir(parents=True)
    shutil.copy(pydicom_file("reportsi.dcm"), path)
    return path


def _jpeg_ls(tmp_path):
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])  # labelled JPEG-LS: no decoder here gets to read it
    path = tmp_path / "x" / "jpegls.dcm"
    path.parent.mkdir(parents=True)
    ds.save_as(path)
    return path


def _not_dicom(tmp_path):
    path = tmp_path / "x" / "scan.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a dicom file at all")
    return path


@pytest.mark.parametrize("make, message", [
    (_no_pixel_data, r"DICOM .*nopixels.dcm \(CT Image Storage\) holds no pixel data \(no PixelData element\): "
                     "remove it"),
    (_report, r"DICOM .*report.dcm is a structured report \(SR\), not an image: remove it"),
    (_jpeg_ls, r"DICOM .*jpegls.dcm: no installed decoder reads its transfer syntax JPEG-LS Lossless Image "
               r"Compression \(1.2.840.10008.1.2.4.80\); pip install .*pylibjpeg pylibjpeg-libjpeg"),
    (_not_dicom, r"corrupt or truncated DICOM .*scan.dcm: "),
], ids=["no_pixel_data", "structured_report", "undecodable_transfer_syntax", "not_dicom"])
def test_unusable_files_fail_in_one_line_naming_the_file(tmp_path, make, message):
    if make is _jpeg_ls and get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = make(tmp_path)
    for read in (dicom_files.read_header, lambda p: list(dicom_files.iter_frames(p)), predict.decode_file):
        with pytest.raises(ValueError, match=message) as error:
            read(str(path))
        assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_frame_the_installed_decoders_cannot_decode_names_the_file_and_what_to_install():
    path = pydicom_file("JPEG-lossy.dcm")  # 12-bit JPEG extended: Pillow decodes only 8-bit JPEG
    if get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).missing_dependencies == []:
        pytest.skip("every JPEG extended decoder is installed here")
    with pytest.raises(ValueError, match=r"cannot decode DICOM .*JPEG-lossy.dcm: .*12-bit.*; another decoder may "
                                         r"read it: .*pip install pylibjpeg pylibjpeg-libjpeg") as error:
        list(dicom_files.iter_frames(path))
    assert "\n" not in str(error.value)


def test_without_pydicom_a_dcm_file_says_how_to_install_it(tmp_path, monkeypatch):
    root = tmp_path / "scans"
    for name in ("a", "b"):
        for i in range(3):
            write_dicom(root / name / f"s{i}.dcm", np.full((1, 8, 8), 100 * i), patient_id=f"{name}{i}")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    with pytest.raises(ValueError, match=r"^cannot read DICOM .*scans/a/s0.dcm: pydicom is not installed; "
                                         r"pip install 'flax-fld\[dicom\]'$"):
        input_pipeline.prepare_data_source(data_config(root), str(tmp_path / "data"))
    with pytest.raises(ValueError, match=r"s0.dcm: pydicom is not installed; pip install 'flax-fld\[dicom\]'"):
        predict.decode_file(str(root / "a" / "s0.dcm"))
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.array_record*"))


def test_a_missing_patient_id_asks_for_another_grouping(tmp_path):
    root = tmp_path / "scans"
    for name in ("a", "b"):
        for i in range(3):
            write_dicom(root / name / f"s{i}.dcm", np.full((1, 8, 8), 100), patient_id=f"{name}{i}")
    copy_with("ExplVR_BigEnd.dcm", root / "b" / "anonymous.dcm")  # a real file without PatientID
    with pytest.raises(ValueError, match=r"DICOM .*anonymous.dcm has no PatientID to group it by "
                                         r"\(data.dicom_group_by='patient'\): set data.dicom_group_by to 'study' or "
                                         r"'file'") as error:
        class_folders.list_images(str(root))
    assert "\n" not in str(error.value)
    assert len(class_folders.list_images(str(root), dicom_group_by="file").rows) == 7


def test_a_corrupt_dicom_leaves_prepared_data_intact(tmp_path):
    root = tmp_path / "scans"
    for name in ("a", "b"):
        for i in range(3):
            write_dicom(root / name / f"s{i}.dcm", np.full((2, 8, 8), 100 * i), patient_id=f"{name}{i}")
    (root / "b" / "s1.dcm").write_bytes((root / "b" / "s1.dcm").read_bytes()[:-100])  # pixel data cut short
    with pytest.raises(ValueError, match=r"s1.dcm") as error:
        input_pipeline.prepare_data_source(data_config(root), str(tmp_path / "data"))
    assert "\n" not in str(error.value)
    assert not any((tmp_path / "data").rglob("*.array_record*"))


# --- no leakage: frames and files of a patient (or study) in one split --------------------------------------


def test_a_run_from_before_dicom_resumes_only_with_the_default_grouping(tmp_path):
    from flax_fld.training import checkpointing

    old = load_config("tiny")
    del old.data["dicom_group_by"]
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "3").mkdir(parents=True)
    (workdir / "config.json").write_text(old.to_json_best_effort())
    assert checkpointing.config_changes(str(workdir), load_config("tiny")) == []
    other = load_config("tiny")
    other.data.dicom_group_by = "file"
    assert checkpointing.config_changes(str(workdir), other) == ["data.dicom_group_by: '<unset>' -> 'file'"]


def write_patients(root, patients, frames=2):
    """root/<class>/scan<n>.dcm for class -> {PatientID: files}; each file ``frames`` frames and its own study.

    Returns {file name: PatientID} (the file names do not hold the ids).
    """
    owner = {}
    for name, files in patients.items():
        for patient, count in files.items():
            for k in range(count):
                seed = len(owner)
                pixels = np.random.default_rng(seed).integers(0, 4096, (frames, 8, 8))
                owner[f"scan{seed:02d}.dcm"] = patient
                write_dicom(root / name / f"scan{seed:02d}.dcm", pixels, patient_id=patient,
                            study_uid=f"1.2.826.0.1.{seed}")
    return owner


PATIENTS = {"normal": {f"Jane^Doe{i}": 1 + i % 3 for i in range(8)},
            "fatty": {f"John^Roe{i}": 1 + i % 3 for i in range(8)}}


def test_group_by_patient_keeps_a_patients_files_and_frames_in_one_split(tmp_path, capsys):
    root = tmp_path / "scans"
    owner = write_patients(root, PATIENTS, frames=3)
    data = input_pipeline.prepare_data_source(data_config(root, split_seed=1), str(tmp_path / "data"))
    out = capsys.readouterr().out
    rows = read_record(data.info.split_record)
    assert len(rows) == 30 and {row["frames"] for row in rows} == {"3"}
    split_of = {}
    for row in rows:
        patient = owner[os.path.basename(row["path"])]
        assert split_of.setdefault(patient, row["split"]) == row["split"], row  # one split per patient
        assert row["patient"].startswith("dicom-patient-") and len(row["patient"]) == len("dicom-patient-") + 12
    assert len({row["patient"] for row in rows}) == 16  # one hash per patient
    assert sum(data.info.num_examples.values()) == 30 * 3  # every frame an example
    for split in ("train", "validation", "test"):
        assert data.info.num_examples[split] == 3 * sum(row["split"] == split for row in rows)
    # Nothing identifying is stored or printed: the ids appear only as hashes.
    record = open(data.info.split_record, encoding="utf-8").read()
    assert "Doe" not in record and "Roe" not in record and "Doe" not in out and "Roe" not in out
    for path in (tmp_path / "data").rglob("*"):  # nor anywhere in the prepared data set (metadata included)
        assert path.is_dir() or b"Doe" not in path.read_bytes(), path
    assert "grouped by PatientID (data.dicom_group_by='patient')" in out
    assert "30 DICOM files (90 frames)" in out


def test_group_by_file_would_split_a_patient_and_group_by_study_follows_the_study(tmp_path):
    root = tmp_path / "scans"
    owner = write_patients(root, PATIENTS)

    def split_of_patients(group_by, seed):
        rows = class_folders.list_images(str(root), seed=seed, dicom_group_by=group_by).rows
        splits = {}
        for row in rows:
            splits.setdefault(owner[os.path.basename(row.path)], set()).add(row.split)
        return splits, rows

    assert any(len(s) > 1 for seed in range(5) for s in split_of_patients("file", seed)[0].values())
    assert all(len(s) == 1 for seed in range(5) for s in split_of_patients("patient", seed)[0].values())
    # Every file is its own study here: grouping by study gives a group per file, by file none at all.
    by_study = split_of_patients("study", 0)[1]
    assert all(row.patient.startswith("dicom-study-") for row in by_study)
    assert len({row.patient for row in by_study}) == len(by_study)
    assert {row.patient for row in split_of_patients("file", 0)[1]} == {""}


def test_frames_weigh_the_split_and_the_summary(tmp_path, capsys):
    root = tmp_path / "scans"
    for name in ("a", "b"):
        write_dicom(root / name / "long.dcm", np.zeros((12, 8, 8)), patient_id=f"{name}0")
        for i in range(1, 4):
            write_dicom(root / name / f"short{i}.dcm", np.zeros((1, 8, 8)), patient_id=f"{name}{i}")
    listing = class_folders.list_images(str(root), fractions=(0.6, 0.2, 0.2))
    frames = {split: sum(r.frames for r in listing.rows if r.split == split and r.label == 0)
              for split in ("train", "validation", "test")}
    # Targets 9/3/3 of the class's 15 images: the long file fills train. Counting files instead (targets
    # 2.4/0.8/0.8 of 4) would put a short file in train as well.
    assert frames == {"train": 12, "validation": 2, "test": 1}
    capsys.readouterr()
    input_pipeline.prepare_data_source(data_config(root, split_fractions=(0.6, 0.2, 0.2)), str(tmp_path / "data"))
    assert "  a: train 1 patient / 12 images, validation 2 patients / 2 images, test 1 patient / 1 images" in (
        capsys.readouterr().out)


def test_a_patient_in_two_given_split_folders_is_refused(tmp_path):
    root = tmp_path / "scans"
    for split in ("train", "validation", "test"):
        for name in ("a", "b"):
            write_dicom(root / split / name / "s.dcm", np.zeros((1, 8, 8)), patient_id=f"{split}{name}")
    write_dicom(root / "test" / "a" / "t.dcm", np.zeros((1, 8, 8)), patient_id="traina")
    with pytest.raises(ValueError, match=r"patient 'dicom-patient-[0-9a-f]{12}' \(data.dicom_group_by='patient'\) "
                                         r"has images in both train and test: .*train/a/s.dcm and .*test/a/t.dcm"):
        class_folders.list_images(str(root))
    assert len(class_folders.list_images(str(root), dicom_group_by="file").rows) == 7


def test_dicom_beside_png_and_color_channels(tmp_path):
    root = tmp_path / "scans"
    for name, value in (("a", 0.25), ("b", 0.75)):
        for i in range(3):
            write_dicom(root / name / f"s{i}.dcm", np.full((2, 8, 8), value * 4095), patient_id=f"{name}{i}")
            PIL.Image.fromarray(np.full((8, 8), round(value * 255), np.uint8)).save(root / name / f"p{i}.png")
    shutil.copy(pydicom_file("examples_rgb_color.dcm"), root / "b" / "color.dcm")
    data = input_pipeline.prepare_data_source(data_config(root, channels=3), str(tmp_path / "data"))
    assert sum(data.info.num_examples.values()) == 2 * (3 * 2 + 3) + 1
    rows = {os.path.basename(r["path"]): r for r in read_record(data.info.split_record) if r["class"] == "a"}
    assert rows["p0.png"]["patient"] == "" and rows["p0.png"]["frames"] == "1" and rows["s0.dcm"]["frames"] == "2"
    examples = [data.split(s)[i] for s in ("train", "validation", "test") for i in range(len(data.split(s)))]
    assert all(e["image"].shape == (8, 8, 3) for e in examples)
    gray = [e for e in examples if e["label"] == 0]
    assert all(np.abs(e["image"].astype(int) - 64).max() <= 1 for e in gray)  # 0.25 of 4095 == 0.25 of 255
    color = [e["image"] for e in examples if e["label"] == 1 and not np.array_equal(e["image"][..., 0],
                                                                                  e["image"][..., 2])]
    assert len(color) == 1  # the RGB file keeps its colors; the grayscale ones are gray in all three channels


# --- every bit depth: 16-bit PNG and TIFF -------------------------------------------------------------------


def write_16_bit(path, values):
    PIL.Image.fromarray(np.asarray(values, np.uint16)).save(path)  # mode I;16
    return path


GRADIENT = (np.arange(64).reshape(8, 8) * 1039 + 12).astype(np.uint16)  # 12 .. 65469


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_images_are_scaled_by_65535(tmp_path, ext):
    path = write_16_bit(tmp_path / f"deep.{ext}", GRADIENT)
    with PIL.Image.open(path) as image:
        assert image.mode == "I;16"
    expected = np.round(GRADIENT / 65535 * 255).astype(np.uint8)
    np.testing.assert_allclose(predict.read_images([str(path)], 8, 1)[0, ..., 0], expected / 255.0, atol=1e-7)
    loaded = PIL.Image.open(io.BytesIO(class_folders.load_image(str(path), 8, 1)))
    np.testing.assert_array_equal(np.asarray(loaded), expected)


def test_32_bit_tiff_is_scaled_by_its_signed_range(tmp_path):
    path = tmp_path / "deep32.tif"
    PIL.Image.fromarray(np.array([[-(2**31), 0], [2**31 - 1, 2**30]], np.int32)).save(path)
    with PIL.Image.open(path) as image:
        assert image.mode == "I" and base.integer_range(image) == (-(2**31), 2**31 - 1)
    pixels = np.asarray(predict.decode_image(str(path)))
    np.testing.assert_array_equal(pixels, [[0, 128], [255, 191]])


def test_16_bit_class_folders_prepare_and_keep_their_contrast(tmp_path):
    root = tmp_path / "scans"
    for label, name in enumerate(("dark", "bright")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            value = 1000 + 60000 * label + i
            write_16_bit(root / name / f"img{i}.{('png', 'tif')[i % 2]}", np.full((8, 8), value))
    data = input_pipeline.prepare_data_source(data_config(root, class_names=("dark", "bright")),
                                              str(tmp_path / "data"))
    for split in ("train", "validation", "test"):
        for i in range(len(data.split(split))):
            example = data.split(split)[i]
            expected = round((1000 + 60000 * example["label"]) / 65535 * 255)
            assert np.abs(example["image"].astype(int) - expected).max() <= 1


# --- a DICOM class folder: train (tiny), preview, predict ---------------------------------------------------


def test_a_dicom_class_folder_trains_previews_and_predict_grades_a_dcm(tmp_path, capsys):
    from flax_fld.training import train

    root = tmp_path / "scans"
    rng = np.random.default_rng(0)
    for label, name in enumerate(("normal", "fatty")):
        for patient in range(4):
            for k in range(2):
                base_level = 800 + 2400 * label
                pixels = np.clip(base_level + rng.normal(0, 300, (4, 32, 32)), 0, 4095)
                write_dicom(root / name / f"{name}{patient}_{k}.dcm", pixels, patient_id=f"{name}{patient}")
    config = load_config("tiny")
    config.data.update(name="class_folders", root=str(root), class_names=(), data_dir=str(tmp_path / "tfds"))
    config.model.use_decouplers, config.adv.enabled = False, False  # the input path is under test, not the model
    config.train.num_epochs = 1
    workdir = str(tmp_path / "run")
    report = train.train_and_evaluate(config, workdir)
    last_lines = capsys.readouterr().out.rstrip().splitlines()[-2:]
    info = input_pipeline.prepare_data_source(config.data, config.data.data_dir).info
    assert info.class_names == ("fatty", "normal") and sum(info.num_examples.values()) == 2 * 4 * 2 * 4
    assert sum(map(sum, report["confusion_matrix"])) == info.num_examples["test"]
    assert os.path.exists(os.path.join(workdir, "split_assignment.csv"))
    # Where the run's time went: every phase once in metrics.jsonl, summing to the total, and the last line.
    (seconds,) = [record for record in metric_writers.read_metrics(workdir) if record["kind"] == "time"]
    phases = {key: value for key, value in seconds.items() if key not in ("kind", "step", "total")}
    assert set(phases) == {"data", "setup", "compile", "training", "validation", "checkpoints", "plots",
                           "test report", "other"}
    assert abs(sum(phases.values()) - seconds["total"]) < 0.01 and seconds["training"] > 0
    assert last_lines[0].startswith("time by phase: data ") and " XLA programs compiled (" in last_lines[1]

    out, class_names = preview.save_preview(config, config.data.data_dir, str(tmp_path / "preview.png"),
                                            per_class=2)
    assert class_names == ("fatty", "normal")
    with PIL.Image.open(out) as image:
        assert image.size == (2 * 128, 2 * 128)

    cine = root / "fatty" / "fatty0_0.dcm"
    single = write_dicom(tmp_path / "one.dcm", np.full((1, 40, 30), 3000))
    loaded = train.load_for_inference(workdir)
    capsys.readouterr()
    lines = predict.run(workdir, [str(cine), str(single)], loaded=loaded)
    assert [line.split(":")[0] for line in lines] == [f"{cine} frame {k}/4" for k in range(1, 5)] + [
        str(cine), str(single)]
    _, model, variables, _ = loaded
    probabilities, _ = predict.predict(model, variables, predict.read_images([str(cine)], 32, 1))
    assert lines[4] == tables.format_file_summary(str(cine), probabilities, class_names)
    assert lines[4].split("| mean ")[1].endswith("%") and "of 4 frames" in lines[4]
    assert capsys.readouterr().out.splitlines()[-6:] == lines


def test_majority_grade_and_the_file_line():
    probabilities = np.array([[0.6, 0.4], [0.45, 0.55], [0.2, 0.8], [0.9, 0.1]])  # 2 votes each: mean decides
    assert metrics.majority_grade(probabilities) == (0, 2)
    assert metrics.majority_grade(probabilities[1:]) == (1, 2)
    line = tables.format_file_summary("cine.dcm", probabilities, ("normal", "fatty"))
    assert line == "cine.dcm: normal (majority, 2 of 4 frames) | mean normal 53.8% fatty 46.2%"
    assert predict.plot_paths(["a/cine.dcm", "a/cine.dcm", "b.png"], "out", [1, 2, None]) == [
        "out/cine_frame1.png", "out/cine_frame2.png", "out/b.png"]
