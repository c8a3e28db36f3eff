"""The layering rule: segflow/ is the library and never imports the orchestrator."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_segflow_library_never_imports_prefect():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "segflow").rglob("*.py")
        if any(name == "prefect" or name.startswith("prefect.") for name in _imported_modules(path))
    ]
    assert offenders == []


# The command line is the entry point on top of every layer: its demo/serve/deploy commands start
# the flows (inside the command, so `segflow --help` stays light). No other library module may.
ENTRY_POINT = ROOT / "segflow" / "cli.py"


def test_segflow_library_never_imports_the_orchestrator():
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "segflow").rglob("*.py")
        for name in _imported_modules(path)
        if name.split(".")[0] == "segflow_prefect" and path != ENTRY_POINT or name.split(".")[0] == "prefect"
    ]
    assert offenders == []


def test_the_orchestrator_and_the_cli_help_load_no_tensorflow_keras_jax_or_matplotlib():
    """The flow modules and `segflow --help` run in a fresh interpreter, which then reports what it loaded."""
    import json
    import subprocess
    import sys

    heavy = ("tensorflow", "keras", "jax", "matplotlib")
    probe = (
        "import sys, json, runpy\n"
        "if sys.argv[1] == 'flows':\n"
        "    import segflow_prefect.flows.pipeline, segflow_prefect.flows.deploy, segflow_prefect.flows.train_architecture\n"
        "else:\n"
        "    sys.argv = ['segflow', '--help']\n"
        "    try:\n"
        "        runpy.run_module('segflow', run_name='__main__')\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
    )
    for what in ("flows", "cli"):
        done = subprocess.run([sys.executable, "-c", probe, what], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1]) == [], what
