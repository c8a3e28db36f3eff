"""The walkthrough notebook: committed without outputs, and it runs top to bottom on tiny settings."""

from __future__ import annotations

import html
import json
import os
import signal
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "walkthrough.ipynb"
KERNEL_NAME = "segflow-test"
# Smaller than the notebook's own settings: one flow architecture, fewer steps.
TINY_SETTINGS = """
SYNTHETIC_IMAGES = (4, 2)
EPOCHS = 2
STEPS_PER_EPOCH = 2
BATCH_SIZE = 2
FLOW_ARCHITECTURES = ["unet"]
"""


def stop_processes_with_env(name: str, value: str) -> list[str]:
    """Kill this user's processes whose environment has `name=value`; return their command lines."""
    setting, stopped = f"{name}={value}".encode(), []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) == os.getpid() or proc.stat().st_uid != os.getuid():
                continue
            if setting not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):  # gone already, or not ours to read
            continue
        stopped.append(command)
    return stopped


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_committed_notebook_is_valid_and_has_no_outputs():
    notebook = read_notebook()
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    with_outputs = [cell.id for cell in code_cells if cell.outputs or cell.execution_count is not None]
    assert with_outputs == [], f"strip the outputs of cells {with_outputs} before committing"
    assert not any("widgets" in cell.metadata or "execution" in cell.metadata for cell in notebook.cells)


def test_first_code_cell_holds_the_settings():
    first = next(cell for cell in read_notebook().cells if cell.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    assert "DATA_ROOT = None" in first.source
    assert 'os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")' in first.source
    assert 'os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")' in first.source


@pytest.mark.slow
def test_walkthrough_runs_top_to_bottom(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    # The kernel: this interpreter (the project's environment), whatever else Jupyter knows of.
    kernel_dir = tmp_path / "kernels" / KERNEL_NAME
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "segflow test", "language": "python",
    }))  # fmt: skip
    kernel_manager = KernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    )
    # The flow's temporary Prefect server keeps its database here, not in ~/.prefect.
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    notebook = read_notebook()
    settings_index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(settings_index + 1, nbformat.v4.new_code_cell(TINY_SETTINGS, id="injected-settings"))
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    client = NotebookClient(
        notebook, km=kernel_manager, timeout=600, resources={"metadata": {"path": str(work_dir)}}
    )
    # nbclient leaves running a kernel it was handed. Shut it down gracefully, so that its exit
    # handlers stop the temporary Prefect server the flow started (a killed kernel leaves it running).
    kernel_manager.shutdown_wait_time = 60
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    finally:
        if kernel_manager.has_kernel:
            kernel_manager.shutdown_kernel()
        leftovers = stop_processes_with_env("PREFECT_HOME", str(tmp_path / "prefect-home"))
    assert not leftovers, f"processes left running after the kernel shut down: {leftovers}"

    outputs = {cell.id: cell.outputs for cell in notebook.cells if cell.cell_type == "code"}

    def images(cell_id):
        return [output for output in outputs[cell_id] if "image/png" in output.get("data", {})]

    # Every figure was drawn: records, class frequencies, augmented batches, the live loss plot
    # (updated in place) and image | ground truth | prediction.
    for cell_id in ("records", "frequencies", "batches", "predict"):
        assert len(images(cell_id)) == 1, cell_id
    assert any("image/png" in output.get("data", {}) for output in outputs["train"]), "no loss plot"

    work = work_dir / "walkthrough-work"
    history = json.loads((work / "runs" / "unet" / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
    metrics = json.loads((work / "runs" / "unet" / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and len(metrics["class_iou"]) == 19
    table = next(output for output in outputs["evaluate"] if "| class | IoU (%) |" in output.get("data", {}).get("text/markdown", ""))
    assert table["data"]["text/markdown"].count("\n") == 1 + 19

    # The flow published a run with its report, and the notebook shows that report inline.
    latest = json.loads((work / "results" / "latest.json").read_text())
    published = work_dir / latest["uri"]  # the notebook passes an absolute results folder
    assert json.loads((published / "run.json").read_text())["architectures"]["unet"]["status"] == "completed"
    assert (published / "report" / "report.html").is_file()
    [report_output] = outputs["report"]
    shown = report_output["data"]["text/html"]
    assert '<iframe srcdoc="' in shown
    assert f"segflow report: {latest['run_id']}" in html.unescape(shown)
