"""flax_fld/reporting/names.py (the paper's labels and column order) and flax_fld/runtime/atomic_files.py."""

import json
import os

import ml_collections
import pytest

from flax_fld.reporting import names, report_fields
from flax_fld.runs import ablation
from flax_fld.runtime import atomic_files


@pytest.mark.parametrize("classifier, decouplers, adversarial, label", [
    ("squeezenet1_1", True, True, "SqueezeNet+ICFDNet+AT"),
    ("cbam_resnet18", True, False, "CBAM+ICFDNet"),
    ("se_resnet18", False, False, "SENet"),
    ("my_net", False, True, "my_net+AT"),
])
def test_evaluation_and_ablation_label_rows_alike(classifier, decouplers, adversarial, label):
    assert names.method_name(classifier, decouplers, adversarial) == label
    config = ml_collections.ConfigDict({"model": {"classifier": classifier, "use_decouplers": decouplers},
                                        "adv": {"enabled": adversarial}})
    assert report_fields.method_name(config) == label
    row = {(False, False): "baseline", (True, False): "icfdnet", (True, True): "icfdnet_at"}.get(
        (decouplers, adversarial))
    if row:
        assert ablation.method_name(classifier, row) == label


def test_paper_column_order_only_for_the_papers_four_classes():
    assert names.paper_column_order(["Normal", "Mild", "Moderate", "Severe"]) == ["Mild", "Moderate", "Severe", "Normal"]
    assert names.paper_column_order(["normal", "mild", "moderate"]) == ["normal", "mild", "moderate"]
    assert names.paper_column_order(["a", "b", "c", "d"]) == ["a", "b", "c", "d"]


def test_atomic_writes_replace_the_whole_file_and_leave_no_temporary(tmp_path):
    path = str(tmp_path / "report.json")
    atomic_files.write_text_atomically(path, "old contents, longer than the new ones")
    assert atomic_files.write_json_atomically(path, {"a": [1, 2]}) == path
    with open(path, encoding="utf-8") as handle:
        assert json.load(handle) == {"a": [1, 2]}
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = str(tmp_path / "table.md")
    atomic_files.write_text_atomically(path, "previous")
    with pytest.raises(TypeError):
        atomic_files.write_json_atomically(path, {"not serializable": object()})
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == "previous"
