"""class_folders: a user's images in root/<class>/ (split by the project, optionally grouped by patient) or in
root/{train,validation,test}/<class>/; every bad layout or setting fails with one line and writes nothing."""

import csv
import os
import pathlib

import numpy as np
import PIL.Image
import pytest

from flax_fld.data import input_pipeline
from flax_fld.data.datasets import class_folders, folder_split
from flax_fld.runtime.config_files import load_config
from flax_fld.training import checkpointing, config_validation


def data_config(root, **overrides):
    config = load_config("default").data
    config.update(dict(name="class_folders", root=str(root), image_size=8, class_names=()), **overrides)
    return config


def write_png(path, seed, size=(8, 8), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8), mode).save(path)


def write_plain(root, counts):
    """root/<class>/img<i>.png for class -> number of images."""
    for index, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            write_png(root / name / f"img{i:02d}.png", seed=100 * index + i)
    return root


def write_patients(root, frames):
    """root/<class>/P<id>_frame<j>.png for class -> {patient id: number of frames}."""
    for name, patients in frames.items():
        for patient, count in patients.items():
            for j in range(count):
                write_png(root / name / f"{patient}_frame{j:02d}.png", seed=int(patient[1:]) * 100 + j)
    return root


def write_split_folders(root, class_names=("normal", "mild", "moderate", "severe"), per_class=2):
    formats = [("png", "L", (30, 20)), ("jpg", "RGB", (17, 41)), ("bmp", "L", (25, 25))]
    for split in ("train", "validation", "test"):
        for label, name in enumerate(class_names):
            for i in range(per_class):
                ext, mode, size = formats[(label + i) % len(formats)]
                write_png(root / split / name / f"img{i}.{ext}", seed=label * 10 + i, size=size, mode=mode)
            (root / split / name / "notes.txt").write_text("ignored")
    return root


def read_record(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def prepared_dirs(data_dir):
    root = pathlib.Path(data_dir)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "downloads" not in p.relative_to(root).parts)


# --- the plain root/<class>/ layout ------------------------------------------------------------------------


def test_class_names_from_folders_are_sorted_and_printed(tmp_path, capsys):
    root = write_plain(tmp_path / "scans", {"zebra": 5, "apple": 4, "mango": 3})
    data = input_pipeline.prepare_data_source(data_config(root), str(tmp_path / "data"))
    assert data.info.class_names == ("apple", "mango", "zebra")
    assert "sorted by name: 0=apple, 1=mango, 2=zebra" in capsys.readouterr().out
    totals = np.sum([data.info.class_counts[split] for split in ("train", "validation", "test")], axis=0)
    assert totals.tolist() == [4, 3, 5]
    rows = read_record(data.info.split_record)
    assert os.path.dirname(data.info.split_record) == data.builder.data_dir  # next to the prepared data
    assert len(rows) == 12 and list(rows[0]) == ["path", "class", "patient", "split", "frames"]
    assert {row["frames"] for row in rows} == {"1"}
    for split in ("train", "validation", "test"):  # the record is what the prepared splits hold
        source = data.split(split)
        labels = [source[i]["label"] for i in range(len(source))]
        expected = [data.info.class_names.index(row["class"]) for row in rows if row["split"] == split]
        assert sorted(labels) == sorted(expected) and set(labels) == {0, 1, 2}  # every class in every split


def test_class_names_from_config_give_the_label_order_and_must_match(tmp_path):
    root = write_plain(tmp_path / "scans", {"zebra": 5, "apple": 4, "mango": 3})
    info = input_pipeline.prepare_data_source(data_config(root, class_names=("zebra", "apple", "mango")),
                                              str(tmp_path / "data")).info
    assert info.class_names == ("zebra", "apple", "mango")
    assert np.sum([info.class_counts[s] for s in info.class_counts], axis=0).tolist() == [5, 4, 3]
    with pytest.raises(ValueError, match=r"class folders in .*scans do not match data.class_names: "
                                         r"missing \['kiwi'\], unknown \['zebra'\]"):
        input_pipeline.prepare_data_source(data_config(root, class_names=("apple", "mango", "kiwi")),
                                           str(tmp_path / "data"))


def test_stratified_split_keeps_each_class_proportions_and_is_seeded(tmp_path):
    root = write_plain(tmp_path / "scans", {"a": 20, "b": 40})

    def assignment(seed, fractions=(0.5, 0.25, 0.25)):
        listing = class_folders.list_images(str(root), (), fractions=fractions, seed=seed)
        return {(row.path, row.label): row.split for row in listing.rows}

    first = assignment(0)
    for label, total in ((0, 20), (1, 40)):
        counts = [sum(1 for (_, lab), split in first.items() if lab == label and split == name)
                  for name in ("train", "validation", "test")]
        assert counts == [total // 2, total // 4, total // 4]
    assert assignment(0) == first and assignment(1) != first
    # Prepared twice with the same settings: the same CSV, and the prepared data set is reused.
    data_dir = str(tmp_path / "data")
    config = data_config(root, split_fractions=(0.5, 0.25, 0.25))
    record = pathlib.Path(input_pipeline.prepare_data_source(config, data_dir).info.split_record).read_bytes()
    again = input_pipeline.prepare_data_source(config, str(tmp_path / "other")).info.split_record
    assert pathlib.Path(again).read_bytes() == record
    other_seed = input_pipeline.prepare_data_source(data_config(root, split_fractions=(0.5, 0.25, 0.25),
                                                                split_seed=1), data_dir).info.split_record
    assert pathlib.Path(other_seed).read_bytes() != record
    input_pipeline.prepare_data_source(config, data_dir)
    input_pipeline.prepare_data_source(data_config(root), data_dir)  # other fractions
    names = os.listdir(os.path.join(data_dir, "class_folders"))
    assert len(names) == 3  # a preparation per (fractions, seed); never a stale one reused


def test_split_groups_meets_the_fractions_and_fills_every_split():
    rng = np.random.default_rng(0)
    singles = folder_split.split_groups([1] * 100, (0.7, 0.15, 0.15), rng)
    assert np.bincount(singles).tolist() == [70, 15, 15]
    # One big patient and two small ones: every split still gets a patient.
    assert sorted(folder_split.split_groups([50, 1, 1], (0.7, 0.15, 0.15), rng)) == [0, 1, 2]


def test_patients_stay_in_one_split_and_the_counts_are_printed(tmp_path, capsys):
    frames = {"normal": {f"P{i:03d}": 1 + i % 4 for i in range(8)},
              "fatty": {f"P{i:03d}": 2 + i % 3 for i in range(10, 16)}}
    root = write_patients(tmp_path / "scans", frames)
    config = data_config(root, patient_regex=r"^(P\d+)_", split_seed=3)
    info = input_pipeline.prepare_data_source(config, str(tmp_path / "data")).info
    out = capsys.readouterr().out
    rows = read_record(info.split_record)
    split_of = {}
    for row in rows:
        assert split_of.setdefault(row["patient"], row["split"]) == row["split"], row  # one split per patient
        assert row["path"].split(os.sep)[-1].startswith(row["patient"] + "_")
    assert set(split_of) == set(frames["normal"]) | set(frames["fatty"])
    assert "patients from data.patient_regex='^(P\\d+)_'" in out
    for name in ("normal", "fatty"):
        parts = []
        for split in ("train", "validation", "test"):
            chosen = [row for row in rows if row["class"] == name and row["split"] == split]
            patients = {row["patient"] for row in chosen}
            assert patients, (name, split)  # every class in every split
            parts.append(f"{split} {len(patients)} patient{'s' * (len(patients) != 1)} / {len(chosen)} images")
        assert f"  {name}: {', '.join(parts)}" in out
    # The whole match serves as the id when the regex has no group; other ids, other prepared data set.
    whole = class_folders.list_images(str(root), fractions=(0.7, 0.15, 0.15), seed=3, patient_regex=r"P\d+")
    assert {row.patient for row in whole.rows} == set(split_of)


def test_the_run_keeps_a_copy_of_the_split_record(tmp_path):
    root = write_plain(tmp_path / "scans", {"a": 4, "b": 4})
    config = load_config("default")
    config.data = data_config(root)
    info = input_pipeline.prepare_data_source(config.data, str(tmp_path / "data")).info
    workdir = tmp_path / "run"
    workdir.mkdir()
    checkpointing.write_run_files(str(workdir), config, info)
    assert (workdir / "split_assignment.csv").read_bytes() == pathlib.Path(info.split_record).read_bytes()
    _, info_dict = checkpointing.read_run_files(str(workdir))
    assert input_pipeline.DatasetInfo.from_dict(info_dict) == info


# --- the root/{train,validation,test}/<class>/ layout ------------------------------------------------------


def test_split_folders_read_mixed_formats(tmp_path):
    root = write_split_folders(tmp_path / "scans")
    data = input_pipeline.prepare_data_source(data_config(root, image_size=24), str(tmp_path / "data"))
    assert data.info.class_names == ("mild", "moderate", "normal", "severe")  # from the folders, sorted
    assert data.info.num_examples == {"train": 8, "validation": 8, "test": 8}
    assert data.info.class_counts["train"] == (2, 2, 2, 2) and data.info.image_shape == (24, 24, 1)
    examples = [data.split("train")[i] for i in range(8)]
    assert all(e["image"].shape == (24, 24, 1) for e in examples)
    assert sorted(e["label"] for e in examples) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert {row["split"] for row in read_record(data.info.split_record)} == {"train", "validation", "test"}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "test/mild/img0.png").write_bytes(b"not a png"), "corrupt or truncated image .*img0.png"),
        (lambda root: (root / "test/mild/img0.jpg").write_bytes((root / "test/mild/img0.jpg").read_bytes()[:300]),
         "corrupt or truncated image .*img0.jpg"),
        (lambda root: os.rename(root / "validation/severe", root / "validation/steatosis"),
         r"class folders in .*validation do not match data.class_names: missing \['severe'\], unknown \['steatosis'\]"),
        (lambda root: [p.unlink() for p in (root / "validation").rglob("*.*")], "empty class: .*validation"),
    ],
    ids=["corrupt", "truncated", "class_mismatch", "empty_class"],
)
def test_bad_input_leaves_prepared_data_intact(tmp_path, damage, message):
    data_dir = tmp_path / "data"
    names = ("normal", "mild", "moderate", "severe")
    good = data_config(write_split_folders(tmp_path / "good"), image_size=16, class_names=names)
    input_pipeline.prepare_data_source(good, str(data_dir))
    before = {p: os.stat(data_dir / p).st_mtime_ns for p in prepared_dirs(data_dir) if (data_dir / p).is_file()}
    paths_before = set(prepared_dirs(data_dir))
    bad_root = write_split_folders(tmp_path / "bad")
    damage(bad_root)
    with pytest.raises(ValueError, match=message) as error:
        input_pipeline.prepare_data_source(data_config(bad_root, image_size=16, class_names=names), str(data_dir))
    assert "\n" not in str(error.value)
    assert {p: os.stat(data_dir / p).st_mtime_ns for p in prepared_dirs(data_dir) if (data_dir / p).is_file()} == before
    # No leftover of the failed preparation. (Not a search for "bad" in the names: the prepared folders are
    # named by a hexadecimal hash, which can contain "bad".)
    assert set(prepared_dirs(data_dir)) == paths_before
    assert input_pipeline.prepare_data_source(good, str(data_dir)).info.num_examples["test"] == 8


# --- one clear line for every bad layout or setting --------------------------------------------------------


def _mixed(root):
    write_plain(root, {"a": 3, "b": 3})
    write_png(root / "train" / "a" / "x.png", 1)


def _nested(root):
    write_plain(root, {"a": 3, "b": 3})
    write_png(root / "a" / "more" / "x.png", 1)


def _loose(root):
    write_plain(root, {"a": 3, "b": 3})
    write_png(root / "stray.png", 1)


def _only_text(root):
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "notes.txt").write_text("no image here")


def _one_file_without_patient(root):
    write_patients(root, {"a": {"P1": 3, "P2": 1}, "b": {"P3": 1, "P4": 1, "P5": 2}})
    write_png(root / "b" / "scan.png", 1)


def _patient_in_two_splits(root):
    for split in ("train", "validation", "test"):
        for name in ("a", "b"):
            write_png(root / split / name / f"P{split}{name}_0.png", 1)
    write_png(root / "test" / "a" / "Ptraina_1.png", 2)


@pytest.mark.parametrize("build, overrides, message", [
    (_mixed, {}, r"scans mixes split folders \['train'\] with other folders \['a', 'b'\]"),
    (lambda root: [write_png(root / s / "a" / "x.png", 1) for s in ("train", "test")], {},
     r"missing split folder .*scans/validation"),
    (_nested, {}, "unexpected folder .*scans/a/more: images must lie directly in the class folder"),
    (_loose, {}, "image .*scans/stray.png lies outside a class folder"),
    (lambda root: root.mkdir(), {}, "no class folders in .*scans"),
    (_only_text, {}, r"empty class: no .* images in .*scans/a"),
    (lambda root: write_plain(root, {"a": 3, "b": 0}), {}, "empty class: no .* images in .*scans/b"),
    (lambda root: write_plain(root, {"a": 3}), {},
     r"scans holds one class folder \['a'\]; a classifier needs at least two"),
    (lambda root: None, {}, r"data.root='.*scans' is not a folder"),
    (lambda root: write_plain(root, {"a": 3, "b": 3}), {"patient_regex": r"^(P\d+)_"},
     r"data.patient_regex='\^\(P\\d\+\)_' matches none of the 6 image file names under .*scans"),
    (_one_file_without_patient, {"patient_regex": r"^(P\d+)_"},
     "finds no patient id in 1 of the 9 image file names under .*scans, e.g. 'scan.png'"),
    (lambda root: write_plain(root, {"a": 3, "b": 3}), {"patient_regex": "(P"},
     r"data.patient_regex='\(P' does not compile"),
    (lambda root: write_plain(root, {"a": 3, "b": 3}), {"split_fractions": (0.7, 0.2, 0.2)},
     r"data.split_fractions=\(0.7, 0.2, 0.2\) sums to 1.1; the fractions must sum to 1"),
    (lambda root: write_plain(root, {"a": 3, "b": 3}), {"split_fractions": (0.8, 0.0, 0.2)},
     r"data.split_fractions=\(0.8, 0.0, 0.2\) leaves the validation split empty"),
    (lambda root: write_plain(root, {"a": 3, "b": 3}), {"split_fractions": (0.5, 0.5)},
     r"data.split_fractions=\(0.5, 0.5\): expected three numbers"),
    (lambda root: write_plain(root, {"a": 3, "b": 2}), {},
     "class 'b' under .*scans has 2 images; each of the 3 splits needs at least one"),
    (lambda root: write_patients(root, {"a": {"P1": 3, "P2": 3, "P3": 1}, "b": {"P4": 5, "P5": 5}}),
     {"patient_regex": r"^(P\d+)_"}, r"class 'b' under .*scans has 2 patients \(data.patient_regex\)"),
    (_patient_in_two_splits, {"patient_regex": r"^(P[a-z]+)_"},
     "patient 'Ptraina' .* has images in both train and test: .*Ptraina_0.png and .*Ptraina_1.png"),
], ids=["mixed_layout", "missing_split", "nested_folder", "loose_image", "no_folders", "no_images", "empty_class",
        "one_class", "no_root", "regex_matches_nothing", "regex_misses_a_file", "regex_does_not_compile",
        "fractions_sum", "fraction_zero", "fractions_length", "too_few_images", "too_few_patients",
        "patient_in_two_splits"])
def test_bad_layouts_and_settings_fail_in_one_line_and_write_nothing(tmp_path, build, overrides, message):
    root = tmp_path / "scans"
    build(root)
    with pytest.raises(ValueError, match=message) as error:
        input_pipeline.prepare_data_source(data_config(root, **overrides), str(tmp_path / "data"))
    assert "\n" not in str(error.value)
    assert prepared_dirs(tmp_path / "data") == []


def test_config_validation_checks_the_data_keys():
    config = load_config("default")
    config.data.name, config.data.class_names = "class_folders", ()
    config_validation.validate_config(config)  # () takes the class folders' names
    for key, value, message in [
        ("split_fractions", (0.5, 0.5, 0.5), r"config.data.split_fractions=\(0.5, 0.5, 0.5\): expected three"),
        ("split_seed", -1, r"config.data.split_seed=-1: expected an integer in \[0, inf\)"),
        ("patient_regex", "(", r"config.data.patient_regex='\(': expected a regular expression that compiles"),
        ("dicom_group_by", "series", r"config.data.dicom_group_by='series': expected one of \('patient', 'study', "
                                     r"'file'\)"),
    ]:
        bad = load_config("default")
        bad.data[key] = value
        with pytest.raises(ValueError, match=message):
            config_validation.validate_config(bad)
    synthetic = load_config("default")
    synthetic.data.class_names = ()
    with pytest.raises(ValueError, match=r"config.data.class_names=\(\): expected two or more"):
        config_validation.validate_config(synthetic)
