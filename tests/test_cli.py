"""Every command is documented (an Example line, and a row in the README), and --help never
loads TensorFlow."""

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from segflow.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COMMANDS = sorted(cli.commands)


def test_the_pipeline_steps_are_all_commands():
    assert {"synth", "download", "convert", "models", "train", "evaluate", "predict", "report", "demo", "serve"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_with_an_example_and_a_readme_entry(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in cli.commands[name].help
    assert f"segflow {name}" in README


def test_help_starts_without_tensorflow_or_prefect():
    code = "import sys; from segflow.cli import cli; print(sorted(m for m in ('tensorflow', 'prefect') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_a_user_error_is_one_line_and_exit_code_1(tmp_path):
    result = CliRunner().invoke(cli, ["convert", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "missing" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("arguments", "code", "text"), [
    (["train", "--config", "/no/such/config.json", "--records", "/tmp", "--out", "/tmp/never"], 1, "Error: cannot read training settings"),
    (["recipes", "demo"], 0, "deeplabv3plus"),
    (["train", "--help"], 0, "Example: segflow train"),  # ends through segflow/__main__.py's os._exit
])  # fmt: skip
def test_python_m_segflow_keeps_the_exit_status_and_every_line(arguments, code, text, tmp_path):
    """`python -m segflow train` skips the interpreter's teardown (segflow/__main__.py): its
    status and output, to a file as the pipeline captures it, are those of any other command."""
    with open(tmp_path / "log", "w") as log:
        finished = subprocess.run([sys.executable, "-m", "segflow", *arguments], stdout=log, stderr=subprocess.STDOUT, timeout=120)
    assert finished.returncode == code
    assert text in (tmp_path / "log").read_text()
