"""The `segflow` command: one sub-command per pipeline step, each a thin call into the library.

Commands import their library module inside the function, so `segflow --help` and the light
steps start without loading TensorFlow.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path

import click

from segflow.errors import SegflowError


class _Group(click.Group):
    """Shows a SegflowError as one `Error: ...` line and exit code 1, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SegflowError as error:
            from segflow.uris import redact

            raise click.ClickException(redact(error)) from None


def _location(what: str, kinds: tuple[str, ...] = ("local", "s3")):
    """A click callback checking a location option (segflow/uris.py) before the command runs."""

    def check(ctx, param, value):
        if value is None:
            return None
        from segflow.uris import check as check_uri

        try:
            checked = check_uri(value, what, kinds=kinds)
        except SegflowError as error:
            raise click.BadParameter(str(error)) from None
        return type(value)(checked) if isinstance(value, Path) else checked

    return check


def _source(ctx, param, value):
    from segflow.uris import check_source, reveal

    try:
        return reveal(check_source(value, "--source"))
    except SegflowError as error:
        raise click.BadParameter(str(error)) from None


@click.group(cls=_Group)
@click.version_option(package_name="segflow")
def cli():
    """Semantic segmentation on Cityscapes: data, models, training, evaluation, report."""
    import os

    # TensorFlow's C++ logging reads its level once, when TensorFlow loads: set it before any command
    # (and every process it starts: convert workers, training children) imports TensorFlow, so its
    # start-up INFO/WARNING lines (absl's "All log messages before absl::InitializeLog()", the CPU
    # feature guard, oneDNN) are not printed. An explicit TF_CPP_MIN_LOG_LEVEL wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Commands are added below, one section per pipeline step, in pipeline order.


# --- download ------------------------------------------------------------------------------
@cli.command()
@click.option("--source", default="cityscapes", show_default=True, callback=_source,
              help="cityscapes (the website; CITYSCAPES_USERNAME/CITYSCAPES_PASSWORD), cityscapes+http://HOST,"
                   " s3://bucket/prefix/, https://host/folder/, file:///folder or a local folder.")
@click.option("--downloads", "downloads_dir", default="downloads", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder for the downloaded zips.")
@click.option("--package", "packages", multiple=True,
              help="Package to fetch (repeatable).  [default: gtFine_trainvaltest.zip, leftImg8bit_trainvaltest.zip]")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Also extract into this Cityscapes folder (checked, then moved into place).")
def download(source, downloads_dir, packages, data_root):
    """Download the Cityscapes packages (resumable, MD5-checked) and optionally extract them.

    Example: segflow download --source cityscapes --data-root data/cityscapes
    """
    from segflow.cityscapes import PACKAGES
    from segflow.download import fetch_packages

    zips = fetch_packages(source, downloads_dir, packages or PACKAGES)
    click.echo("\n".join(str(path) for path in zips))
    if data_root:
        from segflow.extract import extract

        click.echo(f"dataset ready at {extract(zips, data_root)}")


# --- convert -------------------------------------------------------------------------------
@cli.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Cityscapes folder holding leftImg8bit/ and gtFine/.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              callback=_location("--out", ("local",)), help="Folder for the TFRecords and manifest.json (replaced as a whole).")
@click.option("--splits", default="train,val,test", show_default=True, help="Comma-separated splits.")
@click.option("--shards", type=click.IntRange(min=1), help="Shards per split.  [default: about 128 MiB each]")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes.  [default: one per core]")
def convert(data_dir, out_dir, splits, shards, workers):
    """Check the dataset and write TFRecords of images and trainId labels; does nothing if up to date.

    Example: segflow convert --data data/cityscapes --out data/records
    """
    from segflow.convert import convert as convert_dataset
    from segflow.convert import summary

    split_names = tuple(name.strip() for name in splits.split(",") if name.strip())
    manifest = convert_dataset(data_dir, out_dir, splits=split_names, num_shards=shards, workers=workers)
    click.echo(summary(manifest, out_dir))


# --- evaluate ------------------------------------------------------------------------------
@cli.command()
@click.option("--predictions", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of labelIds PNGs in the Cityscapes submission format (searched recursively).")
@click.option("--ground-truth", type=click.Path(file_okay=False, path_type=Path),
              help="Cityscapes root holding gtFine/.")
@click.option("--split", default="val", show_default=True, help="Ground-truth split to score.")
@click.option("--workers", default=1, show_default=True, help="Threads reading and counting images.")
@click.option("--model", type=click.Path(path_type=Path), help="Exported model to evaluate (with --records).")
@click.option("--records", type=click.Path(file_okay=False, path_type=Path), callback=_location("--records", ("local",)),
              help="TFRecords folder (with --model).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="metrics.json to write (with --predictions); output folder (with --model).")
@click.option("--force", is_flag=True, help="Score predictions even if they look like trainIds.")
def evaluate(predictions, ground_truth, split, workers, model, records, out, force):
    """Score predictions with the official Cityscapes metrics (IoU, iIoU, categories).

    Either --predictions with --ground-truth, or --model with --records.

    Example: segflow evaluate --predictions preds/ --ground-truth data/cityscapes --split val --out metrics.json
    """
    if (predictions or ground_truth) and (model or records):
        raise click.UsageError("use either --predictions/--ground-truth or --model/--records, not both")
    if model or records:
        if not (model and records):
            raise click.UsageError("--model and --records are both required (or --predictions with --ground-truth)")
        _not_into(out, records, "--out", "--records")
        from segflow.evaluate import evaluate_model

        metrics = evaluate_model(model, records, out, split=split)
        click.echo(f"{out / 'metrics.json'}: mIoU {metrics['miou']} over {metrics['num_images']} {split} images")
        return
    if not (predictions and ground_truth):
        raise click.UsageError("--predictions and --ground-truth are both required (or --model with --records)")
    for folder, name in ((predictions, "--predictions"), (ground_truth, "--ground-truth")):
        if out.suffix.lower() == ".png" and out.resolve().is_relative_to(folder.resolve()):
            raise SegflowError(f"--out {out} is a PNG inside {name} {folder}: scoring reads it; write metrics.json elsewhere")
    from segflow.metrics import write_metrics
    from segflow.scoring import score_folder

    metrics = score_folder(predictions, ground_truth, split=split, workers=workers, force=force)
    write_metrics(metrics, out)
    click.echo(f"{out}: mIoU {metrics['miou']}, iIoU {metrics['mean_iiou']} over {metrics['num_images']} images")


# --- train ---------------------------------------------------------------------------------
from segflow.config import Architecture, TrainSettings, train_config  # noqa: E402  (pydantic only, no TensorFlow)
from segflow.recipes import RecipeName  # noqa: E402
from segflow.run_files import METRICS_FILE, SAMPLES_DIR  # noqa: E402

# Short spellings kept beside the options named after the settings.
OPTION_ALIASES = {"learning_rate": ["--lr"], "checkpoint_every_steps": ["--checkpoint-every"]}


def settings_options(command):
    """One option per TrainSettings field, named after it (`--batch-size`), typed from its
    annotation, with its description and default as help. Every option defaults to None (not
    given), so the recipe and the --config file apply underneath."""
    for name, field in reversed(TrainSettings.model_fields.items()):
        flag = "--" + name.replace("_", "-")
        annotation = _unwrap_optional(field.annotation)
        default = field.default if field.default is not None else "empty"
        help_text = f"{field.description}  [default: {_default_text(default)}]"
        if annotation is bool:
            decls, kwargs = [f"{flag}/--no-{flag[2:]}"], {"default": None}
        elif typing.get_origin(annotation) is typing.Literal:
            decls, kwargs = [flag], {"type": click.Choice([str(choice) for choice in typing.get_args(annotation)])}
        elif typing.get_origin(annotation) is tuple and typing.get_args(annotation) == (int, int):
            decls, kwargs = [flag], {"type": str, "metavar": "HxW"}
        elif typing.get_origin(annotation) is tuple:
            decls, kwargs = [flag], {"type": typing.get_args(annotation)}
        else:
            decls, kwargs = [flag], {"type": annotation}
        command = click.option(*decls, *OPTION_ALIASES.get(name, []), name, help=help_text, **kwargs)(command)
    return command


def _unwrap_optional(annotation):
    arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
    return arguments[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) else annotation


def _default_text(value) -> str:
    if isinstance(value, tuple) and all(isinstance(item, int) for item in value):
        return "x".join(str(item) for item in value)
    if isinstance(value, tuple):
        return " ".join(str(item) for item in value)
    return str(value)


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON file of training settings (e.g. a run's config.json); options below override it.")
@click.option("--recipe", type=click.Choice(typing.get_args(RecipeName)),
              help="Named settings for the architecture (see `segflow recipes`); --config and options override it.")
@click.option("--arch", "architecture", type=click.Choice(typing.get_args(Architecture)),
              help="Architecture (required unless --config gives it).")
@click.option("--records", required=True, type=click.Path(file_okay=False, path_type=Path),
              callback=_location("--records", ("local",)), help="TFRecords folder from `segflow convert`.")
@click.option("--out", required=True, callback=_location("--out"),
              help="Run folder or s3:// URI: checkpoints, logs, exported model. Reuse it to resume.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Local working folder of an s3:// --out.  [default: $SEGFLOW_CACHE/runs/<hash of the URI>]")
@settings_options
@click.option("--quiet", is_flag=True, help="No per-epoch progress lines.")
@click.option("--evaluate", is_flag=True, help="Then score the exported model on val into OUT/metrics.json (same process).")
def train(config_file, recipe, records, out, work_dir, quiet, evaluate, **settings):
    """Train a model on the records; rerun with the same --out to resume after an interruption.

    With an s3:// --out, each checkpoint is uploaded as soon as it is written, and the same command
    on another machine resumes from the newest complete checkpoint in the store.

    Example: segflow train --recipe cityscapes --arch icnet --records records/ --out runs/icnet --batch-size 4
    """
    from segflow import storage

    config = train_config(config_file, recipe=recipe, **settings)  # checked before TensorFlow loads
    _check_records(records, ("train", "val"))  # and before anything is written
    if not storage.is_s3(out):
        if work_dir is not None:
            raise SegflowError("--work-dir is for an s3:// --out only")
        _not_into(Path(out), records, "--out", "--records")
    from segflow.train import train as train_model

    result = train_model(config, records, out, work_dir=work_dir, verbose=0 if quiet else 2)
    resumed = f", resumed from step {result.resumed_from_step}" if result.resumed_from_step else ""
    skipped = "".join(f" (skipped damaged checkpoint {path})" for path, _ in result.skipped_checkpoints)
    location = storage.join(result.out_uri, "model.keras") if result.out_uri else result.model_path
    best = (f"; best epoch {result.best_epoch}: val mIoU {result.best_val_miou} (selected on val, kept in "
            f"checkpoints/best/, not exported)" if result.best_val_miou is not None else "")
    val_size = "x".join(str(side) for side in config.val_image_size or config.image_size)
    subset = f", first {config.val_max_examples} val images" if config.val_max_examples else ""
    click.echo(f"{location}: {result.steps} steps{resumed}{skipped}{best}")
    if result.loss_scale is not None:
        click.echo(
            f"mixed precision: {result.optimizer_updates} of {result.steps} optimizer updates applied "
            f"(the others were skipped by dynamic loss scaling), final loss scale {result.loss_scale:g}"
        )
    click.echo(f"exported model (final weights): val mIoU {result.val_miou} (at {val_size}{subset})")
    if evaluate:
        from segflow.evaluate import evaluate_model

        from segflow.report.samples import NUM_SAMPLES

        metrics = evaluate_model(result.model_path, records, Path(result.model_path).parent,
                                 model=result.model, predictor=result.predictor, samples=NUM_SAMPLES)  # fmt: skip
        metrics_path = Path(result.model_path).parent / METRICS_FILE
        if result.out_uri:  # the run lives in the store: its metrics and sample tiles go there too
            metrics_path = storage.upload_file(metrics_path, storage.join(result.out_uri, METRICS_FILE))
            samples = Path(result.model_path).parent / SAMPLES_DIR
            if samples.is_dir():  # sorted: samples.json, the index the report reads, goes last
                storage.upload_dir(samples, storage.join(result.out_uri, SAMPLES_DIR))
        click.echo(f"{metrics_path}: val mIoU {metrics['miou']}")


@cli.command()
@click.argument("name", default="cityscapes", type=click.Choice(typing.get_args(RecipeName)))
@click.option("--markdown", is_flag=True, help="As a markdown table (the README's).")
def recipes(name, markdown):
    """Print a recipe's settings per architecture, each with its source (paper or reference config).

    Example: segflow recipes cityscapes
    """
    from segflow import recipes as recipe_data

    if markdown:
        click.echo(recipe_data.markdown_table(name))
        return
    rows = recipe_data.table_rows(name)
    if not rows:
        click.echo(f"recipe {name!r} sets nothing: every architecture uses the given settings")
        return
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])


def _not_into(out: Path, folder: Path, out_name: str, folder_name: str) -> None:
    """An output folder may not be, or hold, a folder the command reads (nor lie inside it)."""
    out_path, read_path = out.resolve(), folder.resolve()
    if out_path.is_relative_to(read_path) or read_path.is_relative_to(out_path):
        raise SegflowError(
            f"{out_name} {out} and {folder_name} {folder} overlap: the command would write among the files it reads;"
            " choose a separate output folder"
        )


def _check_records(records: Path, splits: tuple[str, ...]) -> None:
    """A records folder holding `splits`, each matching its manifest.json (segflow.convert)."""
    if not records.is_dir():
        raise SegflowError(f"records folder {records} does not exist")
    if (records / "manifest.json").is_file():
        from segflow.convert import verify_records

        verify_records(records, splits)
        return
    missing = [split for split in splits if not any(records.glob(f"{split}-*-of-*.tfrecord"))]
    if missing:
        raise SegflowError(f"records folder {records} has no {' or '.join(missing)} shards: run `segflow convert`")


# --- predict -------------------------------------------------------------------------------
@cli.command()
@click.option("--model", required=True, type=click.Path(path_type=Path), help="model.keras (or its run folder), or an exported saved_model/ folder.")
@click.option("--images", required=True, help="Folder of images (searched recursively) or a glob pattern.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--format", "output_format", default="labelIds", show_default=True,
              type=click.Choice(["labelIds", "trainIds", "color", "overlay"]),
              help="labelIds: Cityscapes test-server PNGs; trainIds; color; overlay on the image.")
@click.option("--batch-size", default=4, show_default=True, help="Images per inference batch.")
def predict(model, images, out, output_format, batch_size):
    """Predict every image at full resolution; one PNG per image, named like its input.

    Example: segflow predict --model runs/unet/model.keras --images 'leftImg8bit/test/*/*.png' --out submission/
    """
    from segflow.predict import predict_images

    written = predict_images(model, images, out, format=output_format, batch_size=batch_size)
    click.echo(f"{out}: {len(written)} {output_format} PNGs")


# --- synth ---------------------------------------------------------------------------------
@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--train", default=2, show_default=True, help="Training images.")
@click.option("--val", default=1, show_default=True, help="Validation images.")
@click.option("--test", default=1, show_default=True, help="Test images (void labels only, as the real ones).")
@click.option("--height", default=64, show_default=True, help="Image height (Cityscapes: 1024).")
@click.option("--width", default=128, show_default=True, help="Image width (Cityscapes: 2048).")
@click.option("--seed", default=0, show_default=True, help="Same seed, byte-identical files.")
@click.option("--zips", is_flag=True, help="Also write gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip.")
def synth(out, train, val, test, height, width, seed, zips):
    """Write a synthetic street-scene dataset in the exact Cityscapes layout and formats into OUT.

    Example: segflow synth data/synthetic --train 8 --val 4 --test 2 --height 256 --width 512 --zips
    """
    from segflow.synthetic import write_dataset

    out_dir = write_dataset(out, train=train, val=val, test=test, height=height, width=width, seed=seed, zips=zips)
    click.echo(f"{out_dir}: {train} train, {val} val, {test} test images of {height}x{width}")


# --- report --------------------------------------------------------------------------------
@cli.command()
@click.option("--runs", required=True, callback=_location("--runs"),
              help="Run folder or s3:// URI (run.json + one folder per architecture), or `segflow train` output folder(s).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for report.html, report.json and report.md.")
@click.option("--records", type=click.Path(file_okay=False, path_type=Path), callback=_location("--records", ("local",)),
              help="TFRecords folder to take the sample images from, running each model on them.  [default: the tiles "
                   "evaluation wrote in each architecture's samples/, else the run's own data, if on this machine]")
@click.option("--samples", "num_samples", default=3, show_default=True, type=click.IntRange(min=0),
              help="Val images shown with each architecture's prediction.")
def report(runs, out_dir, records, num_samples):
    """Write a self-contained HTML report comparing the architectures of a run, plus JSON and markdown.

    Example: segflow report --runs segflow-results/runs/20260101T020000Z-1a2b3c4d --out report/
    """
    from segflow.report import write_report

    paths = write_report(runs, out_dir, records_dir=records, num_samples=num_samples)
    click.echo("\n".join(str(path) for path in paths.values()))


# --- clean ---------------------------------------------------------------------------------
@cli.command()
@click.argument("results_uri", callback=_location("RESULTS"))
@click.option("--keep", required=True, type=int, help="Newest runs to keep (latest.json's run and champions are always kept).")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
def clean(results_uri, keep, dry_run):
    """Delete all but the newest published runs of a results store (a folder or s3://bucket/prefix).

    Example: segflow clean segflow-results --keep 5 --dry-run
    """
    from segflow.clean import clean as clean_runs

    chosen = clean_runs(results_uri, keep, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    for run_id in chosen.delete:
        click.echo(f"{verb} runs/{run_id}")
    for run_id, reason in sorted(chosen.protected.items()):
        click.echo(f"kept runs/{run_id}: {reason}")
    click.echo(f"{verb} {len(chosen.delete)} of {len(chosen.delete) + len(chosen.keep)} runs")


# --- pipeline: demo, serve -----------------------------------------------------------------
@cli.command()
@click.option("--out", "out_dir", default="demo-output", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the work files (work/) and the published results (results/).")
@click.option("--arch", "architectures", multiple=True, type=click.Choice(typing.get_args(Architecture)),
              help="Architecture to train (repeat for several).  [default: all five]")
@click.option("--results", "results_uri", callback=_location("--results"), help="Results store: a folder or s3://bucket/prefix.  [default: OUT/results]")
def demo(out_dir, architectures, results_uri):
    """Run the whole pipeline flow on synthetic data with tiny models, on Prefect's embedded API.

    Run the same command again after an interruption to resume the unfinished run (same run id,
    trainings continue from their checkpoints). Killing this command stops everything it started.

    Example: segflow demo --out demo-output
    """
    from segflow import storage
    from segflow.config import demo_params
    from segflow.lifeline import watch_this_process

    watch_this_process()
    _prefect_defaults()
    # The temporary server tells a training waiting for the slot to retry after the average time
    # a slot was held (capped at 30 s): minutes here, so each training after the first would
    # start up to 30 s late. Retry after about a second instead (Prefect's
    # server.concurrency.maximum_concurrency_slot_wait_seconds).
    os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS", "1")
    overrides = {"work_dir": str(out_dir / "work"), "results_uri": results_uri or str(out_dir / "results")}
    if architectures:
        overrides["architectures"] = list(architectures)
    params = demo_params(**overrides)
    from segflow_prefect.flows.pipeline import cityscapes_pipeline

    if not os.environ.get("PREFECT_API_URL"):
        click.echo("starting a temporary Prefect server for this run (the first start creates its database: ~20-30 s)")
    state = cityscapes_pipeline(params, return_state=True)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):
        raise SegflowError(f"the pipeline ended {state.name}: {state.message}")
    for arch, miou in summary["miou"].items():
        click.echo(f"{arch:>14}: " + (f"val mIoU {miou:.3f}" if miou is not None else f"FAILED {summary['failed'][arch]}"))
    click.echo(f"{state.name}: {state.message}")
    report = summary["report"]
    click.echo(f"report: {report if storage.is_s3(report) else Path(report).resolve()}")
    if state.is_failed():
        raise SystemExit(1)


def _prefect_defaults() -> None:
    """No telemetry (the machine may have no internet), and time for the embedded API server to
    start on a busy machine (Prefect's default of 20 s is short on 2 cores)."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@cli.command()
@click.option("--no-schedule", is_flag=True, help="Register the nightly deployment without its schedule.")
@click.option("--limit", type=int, help="Flow runs at most at once in this process.")
def serve(no_schedule, limit):
    """Register the `pipeline` and `nightly` deployments and run their flow runs until stopped.

    Uses the Prefect server at PREFECT_API_URL (e.g. http://127.0.0.1:4200/api); the nightly
    schedule is SEGFLOW_NIGHTLY_CRON in SEGFLOW_TIMEZONE; SEGFLOW_RESULTS_URI, SEGFLOW_WORK_DIR and
    SEGFLOW_SOURCE set the deployments' default parameters; SEGFLOW_DEMO=1 starts them from the
    demo's tiny settings (synthetic data, CPU-sized models) for trying the UI.

    Example: PREFECT_API_URL=http://127.0.0.1:4200/api segflow serve
    """
    _prefect_defaults()
    from segflow_prefect.flows.deploy import serve_deployments

    serve_deployments(schedule=not no_schedule, limit=limit)


# --- models --------------------------------------------------------------------------------
@cli.command()
def models():
    """List the architectures with their parameters and GFLOPs per 1024×2048 image.

    GFLOPs are 2 × the multiply-adds of the convolution and dense layers, counted from layer
    shapes (nothing runs).

    Example: segflow models
    """
    from segflow.models.complexity import summarize_architectures

    click.echo("architecture   params (M)   GFLOPs at 1024×2048 (2 × conv/dense multiply-adds)")
    click.echo("-" * 80)
    for row in summarize_architectures(input_shape=(1024, 2048, 3)):
        click.echo(f"{row['name']:<14} {row['params'] / 1e6:>10.2f}   {row['gflops']:>8.1f}")


@cli.command()
@click.option("--pool-type", type=click.Choice(["process", "docker", "kubernetes"]), default="docker", show_default=True,
              help="process: run the flows from this project's folder (a one-machine trial); docker/kubernetes: run --image.")  # fmt: skip
@click.option("--image", help="Worker image built from docker/Dockerfile, pullable by the workers (docker/kubernetes pools).")
@click.option("--cpu-pool", help="The pipeline's work pool (default: infra/scale-out.yaml's).")
@click.option("--gpu-pool", help="The trainings' work pool (default: infra/scale-out.yaml's for the pool type).")
def deploy(pool_type, image, cpu_pool, gpu_pool):
    """Register the scale-out deployments of infra/scale-out.yaml on the Prefect server: the pipeline
    (nightly) on the CPU pool and one training deployment per architecture on the GPU pool. The
    pools must exist with the pool type; see infra/README.md.

    Example: PREFECT_API_URL=http://prefect:4200/api segflow deploy --image registry.example.com/segflow:0.1.0

    Example (one machine): PREFECT_API_URL=http://127.0.0.1:4200/api segflow deploy --pool-type process
    """
    _prefect_defaults()
    from segflow_prefect.flows.deploy import deploy_to_work_pools

    for deployment_id in deploy_to_work_pools(image, pool_type=pool_type, cpu_pool=cpu_pool, gpu_pool=gpu_pool):
        click.echo(str(deployment_id))
