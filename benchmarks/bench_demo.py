"""Where the wall time of `segflow demo` goes: runs the demo in a subprocess and splits its wall
time into Prefect start, data, per-architecture process start and imports, model build and
tracing, training steps, validation, checkpoints, export, process exit, evaluation and report.

Overhead is everything but the steady-state training and validation steps (issue 15's
definition); the goal is at most 35 % of the demo's time, and at most 6 minutes of wall time in
all on an idle 2-core machine. The demo trains two architectures at a time, so the stages are
process-seconds: a training's stages count once per training process, and the rows add up to
more than the wall time. The overhead share is of that total (the share of the processes' time
that was not steady training or validation); "other" is what the wall time holds beyond them.

Sources, per architecture folder of the run (`OUT/work/runs/<run id>/<arch>/`):
- the process start: the `=== YYYY-MM-DD HH:MM:SS` line `train_process` writes into `train.log`
  before it spawns the child (1 s resolution), or `requested-config.json`'s mtime;
- imports done: `config.json`'s mtime (`segflow.train.train` writes it after TensorFlow and Keras
  are imported, before the model is built);
- `history.json`: per epoch its wall time, images/s over steps 2..n (so the first step, which
  traces the graph, is not in it) and `val_seconds` when present; its mtime is the last epoch's end;
- export done: the newest mtime under `saved_model/` (or `model.keras`'s when the SavedModel is
  off, as in the demo);
- evaluation done: `metrics.json`'s mtime (the child evaluates after exporting, in the same process);
- task ends: Prefect's `Task run 'train and evaluate unet' - Finished in state ...` lines,
  timestamped by this script as they arrive and kept in `OUT/bench-lines.json`, so that `--runs OUT`
  can analyse the run again.
Steady training time = steps × batch ÷ images/s of each epoch; "model build and tracing" = from
imports done to the first epoch's start, plus the first epoch's wall time that is neither steady
steps nor validation. What no source explains is shown as "other".

    .venv/bin/python benchmarks/bench_demo.py                 # all five architectures
    .venv/bin/python benchmarks/bench_demo.py --arch unet     # one (quicker)
    .venv/bin/python benchmarks/bench_demo.py --runs DIR      # only analyse a finished demo's folder
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASK_FINISHED = re.compile(r"Task run '(?P<name>[^']+)' - Finished in state")
FLOW_STARTED = re.compile(r"Beginning flow run|Flow run '[^']+' - ")
LOG_HEADER = re.compile(r"^=== (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ", re.MULTILINE)
LINES_FILE = "bench-lines.json"
OVERHEAD_GOAL = 0.35
WALL_GOAL_S = 360


def run_demo(out_dir: Path, architectures: list[str], echo: bool) -> dict:
    """Run `segflow demo` and return its start/end times, child CPU seconds and the arrival time
    of each output line."""
    command = [sys.executable, "-m", "segflow", "demo", "--out", str(out_dir)]
    for arch in architectures:
        command += ["--arch", arch]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TF_CPP_MIN_LOG_LEVEL": "2"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
        for line in process.stdout:
            lines.append((time.time(), line.rstrip("\n")))
            if echo:
                print(line, end="", flush=True)
    ended = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    demo = {"started": started, "ended": ended, "cpu_s": cpu, "lines": lines, "returncode": process.returncode,
            "load_average": os.getloadavg()}  # fmt: skip
    (out_dir / LINES_FILE).write_text(json.dumps(demo))
    return demo


def latest_run_dir(out_dir: Path) -> Path:
    runs = sorted(path for path in (out_dir / "work" / "runs").glob("*") if path.is_dir())
    if not runs:
        raise SystemExit(f"no run folder under {out_dir / 'work' / 'runs'}")
    return runs[-1]


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def _newest_mtime(folder: Path) -> float | None:
    times = [path.stat().st_mtime for path in folder.rglob("*") if path.is_file()] if folder.is_dir() else []
    return max(times) if times else None


def _spawn_time(arch_dir: Path) -> float | None:
    request = _mtime(arch_dir / "requested-config.json")
    if request is not None:
        return request
    log = arch_dir / "train.log"
    headers = LOG_HEADER.findall(log.read_text(errors="replace")) if log.is_file() else []
    return datetime.datetime.strptime(headers[-1], "%Y-%m-%d %H:%M:%S").timestamp() if headers else None


def architecture_times(arch_dir: Path) -> dict:
    """Seconds per stage of one architecture's training process, from its run folder."""
    history = json.loads((arch_dir / "history.json").read_text())
    config = json.loads((arch_dir / "config.json").read_text())
    batch = config.get("batch_size") or config.get("training", {}).get("batch_size")
    spawned, imported = _spawn_time(arch_dir), _mtime(arch_dir / "config.json")
    last_epoch_end = _mtime(arch_dir / "history.json")
    first_epoch_start = last_epoch_end - sum(entry["wall_time_s"] for entry in history)
    exported = _newest_mtime(arch_dir / "saved_model") or _mtime(arch_dir / "model.keras")

    steps = [entry.get("steps_this_session", 0) for entry in history]
    steady = [n * batch / entry["images_per_second"] for n, entry in zip(steps, history)]
    validation = [entry.get("val_seconds") or 0.0 for entry in history]
    # The first validation also traces the predictor: count only the steady part as validation.
    steady_validation = [min(validation[1:], default=validation[0])] + validation[1:] if validation else []
    first_epoch_rest = history[0]["wall_time_s"] - steady[0] - steady_validation[0]
    times = {
        "process start and imports": imported - spawned if spawned else None,
        "model build and tracing": (first_epoch_start - imported) + first_epoch_rest,
        "training steps": sum(steady),
        "validation": sum(steady_validation),
        # Between epochs (checkpoints, TensorBoard), then build, save and export the final model.
        "checkpoints and export": exported - last_epoch_end if exported else None,
    }
    other_epochs = sum(entry["wall_time_s"] for entry in history[1:]) - sum(steady[1:]) - sum(steady_validation[1:])
    times["checkpoints and export"] = (times["checkpoints and export"] or 0.0) + max(other_epochs, 0.0)
    return {
        "times": times,
        "spawned": spawned,
        "exported": exported,
        "evaluated": _mtime(arch_dir / "metrics.json"),
        "steps": sum(steps),
        "batch_size": batch,
        "val_miou": history[-1].get("val_miou"),
    }


def breakdown(run_dir: Path, demo: dict | None) -> tuple[list[tuple[str, float]], float, dict]:
    """(stage, seconds) rows, the wall time, and the per-architecture details."""
    finished = {}
    for stamp, line in (demo or {}).get("lines", []):
        match = TASK_FINISHED.search(line)
        if match:
            finished[match["name"]] = stamp
    archs = {path.name: architecture_times(path) for path in sorted(run_dir.iterdir()) if (path / "history.json").is_file()}
    rows: dict[str, float] = {}

    def add(name, seconds):
        if seconds is not None:
            rows[name] = rows.get(name, 0.0) + max(seconds, 0.0)

    if demo:
        started, ended = demo["started"], demo["ended"]
        flow_line = next((stamp for stamp, line in demo["lines"] if FLOW_STARTED.search(line)), None)
        add("Prefect start (API server, imports)", (flow_line or started) - started)
        first_spawn = min((a["spawned"] for a in archs.values() if a["spawned"]), default=None)
        add("data (synthesize, convert)", (first_spawn - flow_line) if first_spawn and flow_line else None)
    else:
        started = min(a["spawned"] for a in archs.values())
        ended = max(a["evaluated"] or a["exported"] for a in archs.values())
    for arch, details in archs.items():
        for name, seconds in details["times"].items():
            add(name, seconds)
        if details["evaluated"]:
            add("evaluation", details["evaluated"] - details["exported"])
        train_end = finished.get(f"train and evaluate {arch}")
        if train_end:
            add("process exit and polling", train_end - (details["evaluated"] or details["exported"]))
    last_evaluated = max((a["evaluated"] or 0 for a in archs.values()), default=0)
    if demo and last_evaluated:
        add("report, publish, champions, exit", ended - last_evaluated)
    wall = ended - started
    add("other", wall - sum(rows.values()))
    return list(rows.items()), wall, archs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="Demo folder (default: a temporary one, removed after).")
    parser.add_argument("--arch", action="append", default=[], help="Architecture (repeat); default: the demo's.")
    parser.add_argument("--runs", type=Path, help="Analyse this finished demo folder (OUT) instead of running one.")
    parser.add_argument("--quiet", action="store_true", help="Do not echo the demo's output.")
    args = parser.parse_args()

    demo = None
    if args.runs:
        out_dir = args.runs
        if (out_dir / LINES_FILE).is_file():  # the run's output lines, as bench_demo recorded them
            demo = json.loads((out_dir / LINES_FILE).read_text())
    else:
        out_dir = args.out or Path(tempfile.mkdtemp(prefix="segflow-bench-demo-"))
        demo = run_demo(out_dir, args.arch, echo=not args.quiet)
        if demo["returncode"] != 0:
            raise SystemExit(f"segflow demo exited with code {demo['returncode']}")
    rows, wall, archs = breakdown(latest_run_dir(out_dir), demo)

    steady = sum(seconds for name, seconds in rows if name in ("training steps", "validation"))
    print(f"\nsegflow demo: {wall:.0f} s wall" + (f", {demo['cpu_s']:.0f} CPU-s in its processes" if demo else "")
          + (f", load average at the end {demo['load_average'][0]:.1f}" if demo and "load_average" in demo else ""))
    print(f"| stage | process-seconds | share |\n| --- | --- | --- |")
    process_seconds = sum(seconds for _, seconds in rows)
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {seconds / process_seconds:.0%} |")
    overhead = 1 - steady / process_seconds
    print(f"{process_seconds:.0f} process-seconds in {wall:.0f} s: {process_seconds / wall:.2f} processes at a time on average")
    print(f"overhead (all but steady training and validation steps, share of the process-seconds): {overhead:.0%} "
          f"(goal ≤ {OVERHEAD_GOAL:.0%}); wall {wall:.0f} s (goal ≤ {WALL_GOAL_S} s on an idle 2-core machine)")
    print("\n| architecture | steps | batch | val mIoU (last epoch) | " + " | ".join(next(iter(archs.values()))["times"]) + " |")
    print("| --- " * (4 + len(next(iter(archs.values()))["times"])) + "|")
    for arch, details in archs.items():
        cells = " | ".join(f"{seconds:.1f}" if seconds is not None else "?" for seconds in details["times"].values())
        miou = details["val_miou"]
        print(f"| {arch} | {details['steps']} | {details['batch_size']} | {miou:.3f} | {cells} |" if miou is not None
              else f"| {arch} | {details['steps']} | {details['batch_size']} | ? | {cells} |")


if __name__ == "__main__":
    main()
