"""flax_fld/runtime/config_files.py: one loader for configs by name, by path relative to the repository, or absolute."""

import os

import pytest

from flax_fld.runtime import config_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_name_a_relative_path_and_an_absolute_path_load_the_same_config(tmp_path, monkeypatch):
    by_name = config_files.load_config("tiny")
    assert by_name.data.image_size == 32 and by_name.train.num_epochs == 2
    monkeypatch.chdir(tmp_path)  # configs/tiny.py is not under the working directory: found under the repository
    assert config_files.load_config("configs/tiny.py").to_dict() == by_name.to_dict()
    assert config_files.load_config(os.path.join(REPO, "configs", "tiny.py")).to_dict() == by_name.to_dict()


def test_each_call_returns_a_fresh_config():
    first = config_files.load_config("default")
    first.data.image_size = 7
    assert config_files.load_config("default").data.image_size == 64


def test_the_shipped_configs_are_known_and_start_from_default():
    assert set(config_files.known_configs()) >= {"default", "tiny", "paper", "ablation"}
    default = config_files.load_config("default")
    paper = config_files.load_config("paper")
    assert paper.data.image_size == 224 and paper.loss.to_dict() == default.loss.to_dict()
    assert "ablation" in config_files.load_config("ablation") and "ablation" not in default


def test_a_file_in_the_working_directory_wins_over_the_repositorys(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.py").write_text(
        "from flax_fld.runtime.config_files import load_config\n\n"
        "def get_config():\n    config = load_config('tiny')\n    config.seed = 99\n    return config\n")
    monkeypatch.chdir(tmp_path)
    assert config_files.load_config("configs/tiny.py").seed == 99
    assert config_files.load_config("tiny").seed == 0


def test_unknown_name_missing_file_and_missing_get_config_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^config: unknown name 'tinyy' \(no .*configs/tinyy\.py\); "
                                         r"choose one of ablation, default, paper, robust, tiny"):
        config_files.load_config("tinyy")
    with pytest.raises(ValueError, match=r"^config: file nowhere/x\.py not found \(looked at .*nowhere/x\.py"):
        config_files.load_config("nowhere/x.py")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ValueError, match=rf"^config: {empty} defines no get_config\(\)$"):
        config_files.load_config(str(empty))
    for call in (lambda: config_files.load_config("tinyy"), lambda: config_files.load_config("")):
        with pytest.raises(ValueError) as error:
            call()
        assert "\n" not in str(error.value)
