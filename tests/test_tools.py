"""The `detector` console command: every subcommand answers --help and runs a real small case."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from detector.tools import SUBCOMMANDS, main
from detector.tools.benchmark import TASKS
from tests.test_ablation import fake_job, metrics
from tests.test_dataset_faults import build_defective


def test_the_installed_command_lists_every_subcommand():
    command = Path(sys.executable).parent / "detector"
    assert command.is_file(), "pip install -e . puts the detector command beside the Python it installs into"
    result = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and all(f"  {name} " in result.stdout for name in SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_answers_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"usage: detector {name}")


def test_an_unknown_subcommand_lists_the_valid_ones(capsys):
    assert main(["train"]) == 2
    error = capsys.readouterr().err
    assert "unknown subcommand 'train'" in error and "validate-data" in error


def test_benchmark_lists_its_tasks_and_passes_help_to_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and all(f"  {task} " in out for task in TASKS)
    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", "--task", "matcher", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("usage: detector benchmark --task matcher") and "--boxes" in out


@pytest.mark.parametrize("argv, says", [(["--task", "speed"], "invalid choice: 'speed'"), ([], "--task is required")])
def test_benchmark_without_a_valid_task_lists_the_tasks(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", *argv])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and says in error and all(task in error for task in TASKS)


def test_validate_data_returns_the_exit_code_a_shell_sees(tmp_path, capsys):
    ann_file, images_dir = build_defective(tmp_path)
    assert main(["validate-data", str(ann_file), str(images_dir), "--no-decode"]) == 0
    assert "images and" in capsys.readouterr().out
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    assert main(["validate-data", str(broken), str(images_dir)]) == 1


def test_ablation_table_and_compare_runs_on_a_multirun(tmp_path):
    fake_job(tmp_path, 0, 0.25, metrics(5.0))
    fake_job(tmp_path, 1, 0.5, metrics(20.0))
    assert main(["ablation-table", str(tmp_path), "--no-picture"]) == 0
    assert "| loss.alpha=0.5 | 1 ok | 20.00 |" in (tmp_path / "table.md").read_text()
    assert main(["compare-runs", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    assert "| loss.alpha=0.5 | 1 ok | 20.00 |" in (tmp_path / "report" / "report.md").read_text()


def test_pretrain_backbone_writes_its_record(tmp_path):
    out = tmp_path / "r18.pth"
    arguments = ["--steps", "2", "--batch-size", "4", "--crop-size", "32", "--warmup-steps", "1", "--eval-crops", "8"]
    assert main(["pretrain-backbone", *arguments, "--workers", "0", "--amp", "off", "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["steps"] == 2
