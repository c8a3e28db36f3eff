"""The run report, rendered from a small real run: synthetic data → records → two tiny trained
and evaluated architectures, plus one marked failed in run.json as the flow would."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segflow import report
from segflow.cityscapes import CLASS_NAMES
from segflow.errors import SegflowError

ARCHITECTURES = ("unet", "segnet")
FAILED = "icnet"
# Markup in the error checks that run text is escaped, not interpreted.
FAILED_ERROR = "training failed: ResourceExhaustedError: OOM <script>alert('x')</script> & more\nTraceback (most recent call last): ..."
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,900", "--virtual-time-budget=10000",
)  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A pipeline-shaped run folder: run.json, unet/ and segnet/ trained for 2×3 steps, icnet failed."""
    from segflow import runinfo, synthetic
    from segflow.config import TrainConfig
    from segflow.convert import convert, read_manifest
    from segflow.evaluate import evaluate_model
    from segflow.train import train

    root = tmp_path_factory.mktemp("report-run")
    data_root = synthetic.write_dataset(root / "data", train=4, val=2, test=0, height=64, width=128)
    records_dir = root / "records"
    convert(data_root, records_dir, splits=("train", "val"), workers=1, progress=False)
    run = root / "run"
    for architecture in ARCHITECTURES:
        config = TrainConfig(
            architecture=architecture, width=0.0625, image_size=(64, 128), epochs=2, steps_per_epoch=3, batch_size=2
        )
        result = train(config, records_dir, run / architecture, verbose=0)
        evaluate_model(result.model_path, records_dir, run / architecture, samples=3)  # as `segflow train --evaluate`
    (run / FAILED).mkdir()
    # A failed run's partial history: one short epoch, which must not win "shortest training".
    partial_epoch = {"epoch": 1, "step": 3, "loss": 3.1, "val_miou": 0.01, "images_per_second": 5.0, "wall_time_s": 0.5}
    (run / FAILED / "history.json").write_text(json.dumps([partial_epoch]))
    record = {
        "run_id": "20260101T020000Z-test",
        "flow_run_id": None,
        "parameters": {"architectures": [*ARCHITECTURES, FAILED], "source": "synthetic", "image_size": [64, 128],
                       "width": 0.0625, "epochs": 2, "steps_per_epoch": 3, "batch_size": 2},  # fmt: skip
        "data": {
            "source": "synthetic",
            "synthetic": True,
            "data_root": str(data_root),
            "records_dir": str(records_dir),
            "fingerprint": read_manifest(records_dir)["fingerprint"],
        },
        "code_version": runinfo.code_version(),
        "hardware": runinfo.hardware(),
        "started_at": "2026-01-01T02:00:00+00:00",
        "ended_at": "2026-01-01T02:04:05+00:00",
        "architectures": {
            **{name: {"status": "completed", "error": None} for name in ARCHITECTURES},
            FAILED: {"status": "failed", "error": FAILED_ERROR},
        },
        "champions": [
            {"architecture": "unet", "run_id": "20260101T020000Z-test", "val_miou": 0.25, "previous_champion": None,
             "previous_val_miou": None, "promote": True, "reason": "first champion"},
            {"architecture": "segnet", "run_id": "20260101T020000Z-test", "val_miou": 0.1, "previous_champion": "r0",
             "previous_val_miou": 0.3, "promote": False, "reason": "0.1 is below the champion's 0.3"},
        ],  # fmt: skip
    }
    (run / "run.json").write_text(json.dumps(record))
    return run


@pytest.fixture(scope="module")
def rendered(run_dir, tmp_path_factory):
    """(paths, report.json, report.html text, report.md text) of the run's report."""
    paths = report.write_report(run_dir, tmp_path_factory.mktemp("report") / "out")
    return paths, json.loads(paths["json"].read_text()), paths["html"].read_text(), paths["md"].read_text()


def metrics_of(run_dir, architecture):
    return json.loads((run_dir / architecture / "metrics.json").read_text())


# === Numbers ===


@pytest.mark.slow
def test_report_json_numbers_equal_each_architectures_metrics(run_dir, rendered):
    _, summary, _, _ = rendered
    rows = {row["architecture"]: row for row in summary["comparison"]}
    for architecture in ARCHITECTURES:
        metrics = metrics_of(run_dir, architecture)
        assert summary["architectures"][architecture]["metrics"] == metrics
        row = rows[architecture]
        assert row["status"] == "completed"
        assert row["val_miou"] == metrics["miou"]
        assert row["category_miou"] == metrics["category_miou"]
        assert row["pixel_accuracy"] == metrics["pixel_accuracy"]
        assert row["params"] == metrics["params"]
        assert row["gflops"] == metrics["gflops"]
        assert row["inference_images_per_second"] == metrics["speed"]["images_per_second"]
        assert row["latency_ms_p50"] == metrics["speed"]["latency_ms_p50"]
        history = json.loads((run_dir / architecture / "history.json").read_text())
        assert row["epochs"] == len(history) == 2
        assert row["train_time_s"] == pytest.approx(sum(entry["wall_time_s"] for entry in history))
        assert row["image_size"] == "64x128"
    best = max(ARCHITECTURES, key=lambda name: metrics_of(run_dir, name)["miou"])
    assert summary["best_architecture"] == best
    assert "mean_iiou" not in rows["unet"]  # no iIoU without instance ids: the column is left out


@pytest.mark.slow
def test_html_tables_show_the_metrics(run_dir, rendered):
    _, _, page, _ = rendered
    tables = read_tables(page)
    comparison = table_with_header(tables, "val mIoU (%)")
    header = comparison[0]
    for architecture in ARCHITECTURES:
        metrics = metrics_of(run_dir, architecture)
        row = next(row for row in comparison if row[0] == architecture)
        assert row[header.index("val mIoU (%)")] == f"{100 * metrics['miou']:.2f}"
        assert row[header.index("category mIoU (%)")] == f"{100 * metrics['category_miou']:.2f}"
        assert row[header.index("pixel accuracy (%)")] == f"{100 * metrics['pixel_accuracy']:.2f}"
        assert row[header.index("params (M)")] == f"{metrics['params'] / 1e6:.3f}"
        assert row[header.index("latency p50 (ms)")] == f"{metrics['speed']['latency_ms_p50']:,.2f}"

    per_class = table_with_header(tables, "class")
    assert [row[0] for row in per_class[1:]] == [*CLASS_NAMES, "mean"]
    for column, architecture in enumerate(per_class[0][1:], start=1):
        class_iou = metrics_of(run_dir, architecture)["class_iou"]
        for row in per_class[1:-1]:
            value = class_iou[row[0]]
            assert row[column] == ("—" if value is None else f"{100 * value:.2f}")


@pytest.mark.slow
def test_best_value_of_each_column_is_marked(run_dir, rendered):
    _, summary, page, _ = rendered
    mious = {name: metrics_of(run_dir, name)["miou"] for name in ARCHITECTURES}
    best = max(mious, key=mious.get)
    assert summary["best"]["val_miou"] == [best]
    fewest = min(ARCHITECTURES, key=lambda name: metrics_of(run_dir, name)["params"])
    assert summary["best"]["params"] == [fewest]
    assert page.count('<td class="best">') == sum(len(names) for names in summary["best"].values())
    assert all(FAILED not in names for names in summary["best"].values())  # its partial training is not ranked
    assert summary["best"]["train_time_s"]  # although its one epoch took the least time


# === Content ===


@pytest.mark.slow
def test_every_architecture_appears_in_each_file(rendered):
    _, summary, page, markdown = rendered
    assert [row["architecture"] for row in summary["comparison"]] == [*ARCHITECTURES, FAILED]
    comparison = table_with_header(read_tables(page), "val mIoU (%)")
    assert [row[0] for row in comparison[1:]] == [*ARCHITECTURES, FAILED]
    for architecture in (*ARCHITECTURES, FAILED):
        assert re.search(rf"^\| {architecture} \|", markdown, re.MULTILINE)


@pytest.mark.slow
def test_failed_architecture_is_shown_with_its_error(rendered):
    _, summary, page, markdown = rendered
    row = next(row for row in summary["comparison"] if row["architecture"] == FAILED)
    assert row["status"] == "failed" and row["val_miou"] is None
    assert summary["failed"] == {FAILED: FAILED_ERROR}
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<script" not in page
    assert "Traceback (most recent call last)" in page  # the whole error, in the run section
    assert f"**{FAILED}** (failed): training failed: ResourceExhaustedError: OOM" in markdown
    assert "Traceback" not in markdown  # the markdown summary keeps the first line only


@pytest.mark.slow
def test_synthetic_low_resolution_run_carries_the_not_comparable_note(rendered):
    _, summary, page, markdown = rendered
    assert summary["comparable"] is False
    assert "synthetic" in summary["note"] and "64x128" in summary["note"]
    assert "not comparable with published Cityscapes results" in page
    assert "> **Note.** These numbers are not comparable with published Cityscapes results" in markdown


@pytest.mark.slow
def test_run_section_and_champion_decisions(run_dir, rendered):
    _, summary, page, markdown = rendered
    record = json.loads((run_dir / "run.json").read_text())
    assert record["data"]["fingerprint"] in page and record["data"]["fingerprint"] in markdown
    assert record["code_version"] in page
    assert "4 min 05 s" in page  # ended - started
    decisions = table_with_header(read_tables(page), "promoted")
    assert [row[0] for row in decisions[1:]] == ["unet", "segnet"]
    assert [row[decisions[0].index("promoted")] for row in decisions[1:]] == ["yes", "no"]
    assert "0.1 is below the champion's 0.3" in markdown
    assert summary["champions"] == record["champions"]


@pytest.mark.slow
def test_embedded_images_all_decode(rendered):
    _, summary, page, _ = rendered
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    # curves + confusion matrix + 2 val images × (image, ground truth, 2 predictions)
    assert len(sources) == 2 + 2 * (2 + len(ARCHITECTURES))
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1], validate=True)))
        image.load()
        assert image.width > 0 and image.height > 0
    assert len(summary["samples"]["images"]) == 2


@pytest.mark.slow
def test_sample_tiles_show_each_models_own_prediction(run_dir, rendered):
    """Each prediction tile is the colours of that model's argmax on the sample image, computed here
    with keras.ops from the image tile itself, and not the ground truth."""
    import keras

    from segflow.augment import normalize_image
    from segflow.cityscapes import colorize
    from segflow.evaluate import load_model

    _, _, page, _ = rendered
    figures = re.findall(r'<figure><img alt="([^"]*)" src="data:image/png;base64,([^"]*)">', page)
    tiles = [(alt, np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))) for alt, data in figures]
    per_row = 2 + len(ARCHITECTURES)
    assert len(tiles) == 2 * per_row
    models = {name: load_model(run_dir / name / "model.keras") for name in ARCHITECTURES}
    for start in range(0, len(tiles), per_row):
        (_, image), (ground_truth_caption, ground_truth), *predictions = tiles[start : start + per_row]
        assert ground_truth_caption == "ground truth"
        inputs = normalize_image(image[np.newaxis].astype(np.float32) / 255.0)
        for (name, tile), expected_name in zip(predictions, ARCHITECTURES, strict=True):
            assert name == expected_name
            logits = models[name](keras.ops.image.resize(inputs, (64, 128)), training=False)
            own = colorize(keras.ops.convert_to_numpy(keras.ops.argmax(logits, axis=-1))[0])
            assert (tile == own).all(axis=-1).mean() > 0.99  # its own prediction, pixel for pixel
            assert (tile == ground_truth).all(axis=-1).mean() < 0.9  # 6 training steps: far from the truth


@pytest.mark.slow
def test_samples_are_the_tiles_evaluation_wrote_without_tensorflow(run_dir, tmp_path):
    """The report embeds each architecture's `samples/` tiles as written, in a process that never
    imports TensorFlow (no model is loaded)."""
    script = (
        "import sys; from segflow.report import write_report; "
        f"write_report({str(run_dir)!r}, {str(tmp_path)!r}); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    page = (tmp_path / "report.html").read_text()
    for architecture in ARCHITECTURES:
        index = json.loads((run_dir / architecture / "samples" / "samples.json").read_text())
        assert len(index["images"]) == 2  # the split's two val images (three asked)
        for entry in index["images"]:
            tile = (run_dir / architecture / "samples" / entry["prediction"]).read_bytes()
            assert f'alt="{architecture}" src="data:image/png;base64,{base64.b64encode(tile).decode()}"' in page
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["samples"]["source"] == json.loads(run_dir.joinpath("run.json").read_text())["data"]["records_dir"]


@pytest.mark.slow
def test_the_models_run_when_tiles_are_missing_or_other_images_are_asked(run_dir, tmp_path):
    """A run without an architecture's tiles (or with --records) runs every model, which gives the
    tiles evaluation wrote; a blanked stored tile shows only while the stored tiles are used."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "saved_model", "tensorboard"))
    written = np.asarray(Image.open(run / "unet" / "samples" / "prediction-0.png").convert("RGB"))
    blank = io.BytesIO()
    Image.new("RGB", written.shape[1::-1]).save(blank, format="PNG")
    (run / "unet" / "samples" / "prediction-0.png").write_bytes(blank.getvalue())

    def first_unet_tile(**options) -> np.ndarray:
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        page = report.write_report(run, out, **options)["html"].read_text()
        data = re.search(r'<figure><img alt="unet" src="data:image/png;base64,([^"]*)">', page).group(1)
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    assert not first_unet_tile().any()  # the stored (blanked) tile
    # Tiles of another model than the one metrics.json scored (retrained since) are not shown.
    index_path = run / "unet" / "samples" / "samples.json"
    written_index = index_path.read_text()
    index_path.write_text(json.dumps({**json.loads(written_index), "model_sha256": "0" * 64}))
    assert (first_unet_tile() == written).all(axis=-1).mean() > 0.99
    index_path.write_text(written_index)
    # Nor next to another dataset's image of the same name.
    segnet_image = run / "segnet" / "samples" / "image-0.png"
    written_image = segnet_image.read_bytes()
    segnet_image.write_bytes(blank.getvalue())
    assert (first_unet_tile() == written).all(axis=-1).mean() > 0.99
    segnet_image.write_bytes(written_image)
    assert not first_unet_tile().any()
    records = json.loads((run / "run.json").read_text())["data"]["records_dir"]
    assert (first_unet_tile(records_dir=records) == written).all(axis=-1).mean() > 0.99
    shutil.rmtree(run / "segnet" / "samples")
    assert (first_unet_tile() == written).all(axis=-1).mean() > 0.99


@pytest.mark.slow
def test_page_is_self_contained(rendered):
    _, _, page, _ = rendered
    links = re.findall(r"""\b(?:src|href)\s*=\s*(["']?)([^"'\s>]*)""", page, re.IGNORECASE)
    assert links and all(quote and value.startswith(("data:image/png;base64,", "#")) for quote, value in links)
    assert not re.search(r"https?://|url\(|@import|<link|<script", page, re.IGNORECASE)


# === Other inputs ===


@pytest.mark.slow
def test_folder_of_train_outputs_without_run_json(run_dir, tmp_path):
    for architecture in ARCHITECTURES:
        shutil.copytree(run_dir / architecture, tmp_path / "runs" / architecture,
                        ignore=shutil.ignore_patterns("checkpoints", "saved_model", "tensorboard"))  # fmt: skip
    paths = report.write_report(tmp_path / "runs", tmp_path / "out")
    summary = json.loads(paths["json"].read_text())
    rows = {row["architecture"]: row for row in summary["comparison"]}
    assert {name: rows[name]["val_miou"] for name in ARCHITECTURES} == {name: metrics_of(run_dir, name)["miou"] for name in ARCHITECTURES}
    assert "no run.json" in summary["note"]
    assert len(summary["samples"]["images"]) == 2  # the tiles each folder holds

    single = report.write_report(tmp_path / "runs" / "unet", tmp_path / "single")
    summary = json.loads(single["json"].read_text())
    rows = summary["comparison"]
    assert [(row["architecture"], row["val_miou"]) for row in rows] == [("unet", metrics_of(run_dir, "unet")["miou"])]
    assert len(summary["samples"]["images"]) == 2

    # Without tiles and without run.json, nothing says where the val images are.
    shutil.rmtree(tmp_path / "runs" / "segnet" / "samples")
    summary = json.loads(report.write_report(tmp_path / "runs", tmp_path / "bare")["json"].read_text())
    assert "val images are not on this machine" in summary["samples"]["note"]


@pytest.mark.slow
def test_published_run_on_s3(run_dir, s3_bucket, tmp_path):
    from segflow import storage

    run_uri = f"{s3_bucket}/runs/r1"
    for name in storage.list_files(str(run_dir)):
        if not re.search(r"checkpoints/|saved_model/|tensorboard/", name):
            storage.upload_file(run_dir / name, storage.join(run_uri, name))
    paths = report.write_report(run_uri, tmp_path)
    summary = json.loads(paths["json"].read_text())
    assert summary["source"] == run_uri
    assert [row["val_miou"] for row in summary["comparison"][:2]] == [metrics_of(run_dir, name)["miou"] for name in ARCHITECTURES]
    assert summary["failed"] == {FAILED: FAILED_ERROR}
    # The sample tiles came with the run's small files.
    assert len(summary["samples"]["images"]) == 2 and summary["samples"]["note"] is None
    assert summary["samples"]["source"] == json.loads((run_dir / "run.json").read_text())["data"]["records_dir"]

    # Without one architecture's tiles, the models are fetched from S3 and run on the local records.
    bare_uri = f"{s3_bucket}/runs/r2"
    for name in storage.list_files(str(run_dir)):
        if not re.search(r"checkpoints/|saved_model/|tensorboard/|segnet/samples/", name):
            storage.upload_file(run_dir / name, storage.join(bare_uri, name))
    paths = report.write_report(bare_uri, tmp_path / "bare")
    summary = json.loads(paths["json"].read_text())
    assert len(summary["samples"]["images"]) == 2 and summary["samples"]["note"] is None
    # curves + confusion matrix + 2 images × (image, ground truth, 2 predictions): no model failed
    assert paths["html"].read_text().count("<img") == 2 + 2 * (2 + len(ARCHITECTURES))


def test_iiou_column_and_confusion_matrix_from_written_metrics(tmp_path):
    """Metrics with iIoU (as `segflow evaluate --predictions` gives) get iIoU columns; the best
    model's confusion matrix is normalised per ground-truth row."""
    from segflow.metrics import summarize

    rng = np.random.default_rng(0)
    counts = {}
    for name, iiou in (("unet", 0.4), ("resnet", 0.5)):
        counts[name] = rng.integers(0, 1000, size=(19, 19))
        counts[name][3] = 0  # a class absent from the ground truth
        metrics = {**summarize(counts[name]), "mean_iiou": iiou, "mean_category_iiou": iiou / 2,
                   "confusion_matrix": counts[name].tolist(), "num_images": 500}  # fmt: skip
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "metrics.json").write_text(json.dumps(metrics))
    paths = report.write_report(tmp_path / "runs", tmp_path / "out")
    summary = json.loads(paths["json"].read_text())
    rows = {row["architecture"]: row for row in summary["comparison"]}
    assert rows["resnet"]["mean_iiou"] == 0.5 and rows["unet"]["mean_category_iiou"] == 0.2
    assert summary["best"]["mean_iiou"] == ["resnet"]
    best = summary["best_architecture"]
    expected = counts[best] / counts[best].sum(axis=1, keepdims=True).clip(min=1)
    matrix = summary["best_confusion_matrix_normalized"]
    assert matrix[3] == [None] * 19
    np.testing.assert_allclose([row for index, row in enumerate(matrix) if index != 3], np.delete(expected, 3, axis=0))
    header = table_with_header(read_tables(paths["html"].read_text()), "val mIoU (%)")[0]
    assert "iIoU (%)" in header and "category iIoU (%)" in header
    assert "| iIoU (%) |" in paths["md"].read_text()
    # Full-size Cityscapes val, but no run.json: the data source is unknown, so the note stays.
    assert summary["note_reasons"] == ["the run has no run.json, so its data source is unknown"]


def test_empty_folder_is_one_clear_error(tmp_path):
    with pytest.raises(SegflowError, match=re.escape(f"{tmp_path} holds no run")):
        report.write_report(tmp_path, tmp_path / "out")
    with pytest.raises(SegflowError, match="does not exist"):
        report.write_report(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_metrics_names_the_file(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "metrics.json").write_text("{not json")
    with pytest.raises(SegflowError, match=re.escape(str(tmp_path / "unet" / "metrics.json"))):
        report.write_report(tmp_path, tmp_path / "out")


# === The report tells the truth about the run (issue 15.4) ===


def write_fake_architecture(folder, *, seed=0, steps=16, batch_size=2, speed=None, epochs_speed=(10.0, 11.0)):
    """An architecture folder with metrics.json (random confusion counts), history.json and
    config.json, as `segflow train` + `segflow evaluate` write them."""
    from segflow.metrics import summarize

    counts = np.random.default_rng(seed).integers(0, 1000, size=(19, 19))
    speed = speed or {"images_per_second": 50.0, "latency_ms_p50": 20.0, "latency_ms_p95": 25.0}
    metrics = {**summarize(counts), "confusion_matrix": counts.tolist(), "num_images": 500, "params": 1000 + seed,
               "gflops": 1.0 + seed, "speed": speed}  # fmt: skip
    history = [
        {"epoch": index + 1, "step": steps * (index + 1) // len(epochs_speed), "loss": 2.0 - index,
         "val_miou": 0.1 * (index + 1), "images_per_second": rate, "wall_time_s": 3.0}
        for index, rate in enumerate(epochs_speed)
    ]  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.json").write_text(json.dumps(history))
    (folder / "config.json").write_text(json.dumps({"architecture": folder.name, "batch_size": batch_size}))


def test_steps_and_images_seen_with_a_sentence_when_far_below_a_recipe(tmp_path):
    write_fake_architecture(tmp_path / "runs" / "unet", steps=16, batch_size=2)
    write_fake_architecture(tmp_path / "runs" / "segnet", seed=1, steps=40, batch_size=4)
    paths = report.write_report(tmp_path / "runs", tmp_path / "out", num_samples=0)
    summary = json.loads(paths["json"].read_text())
    rows = {row["architecture"]: row for row in summary["comparison"]}
    assert (rows["unet"]["steps"], rows["unet"]["images_seen"]) == (16, 32)
    assert (rows["segnet"]["steps"], rows["segnet"]["images_seen"]) == (40, 160)
    note = summary["training_note"]
    assert "unet 16 optimizer steps, 32 images seen" in note and "segnet 40 optimizer steps, 160 images seen" in note
    assert "a Cityscapes recipe runs 80,000 steps" in note
    comparison = table_with_header(read_tables(paths["html"].read_text()), "optimizer steps")
    header = comparison[0]
    assert [row[header.index("images seen")] for row in comparison[1:]] == ["160", "32"]  # folders sorted by name
    assert "a Cityscapes recipe runs 80,000 steps" in html_text(paths["html"].read_text())
    assert "**Training length.** Short training: " in paths["md"].read_text()


def test_no_short_training_sentence_for_a_recipe_length_run(tmp_path):
    write_fake_architecture(tmp_path / "runs" / "unet", steps=80_000, batch_size=8)
    summary = json.loads(report.write_report(tmp_path / "runs", tmp_path / "out", num_samples=0)["json"].read_text())
    assert summary["comparison"][0]["images_seen"] == 640_000
    assert summary["training_note"] is None


@pytest.mark.parametrize(
    ("fast_spread", "starred"),
    [([90.0, 110.0], ["fast"]),  # clear of the slow one's 40–60: a real difference
     ([55.0, 110.0], [])],  # overlaps 40–60: machine-load noise, no ★
)  # fmt: skip
def test_speed_spread_shown_and_no_star_where_spreads_overlap(tmp_path, fast_spread, starred):
    speeds = {
        "fast": {"images_per_second": 100.0, "images_per_second_p25_p75": fast_spread, "latency_ms_p50": 10.0,
                 "latency_ms_p25_p75": [9.0, 11.0], "latency_ms_p95": 12.0},
        "slow": {"images_per_second": 50.0, "images_per_second_p25_p75": [40.0, 60.0], "latency_ms_p50": 10.5,
                 "latency_ms_p25_p75": [10.0, 12.0], "latency_ms_p95": 13.0},
    }  # fmt: skip
    for seed, (name, speed) in enumerate(speeds.items()):
        write_fake_architecture(tmp_path / "runs" / name, seed=seed, speed=speed, epochs_speed=(10.0 + seed, 12.0 + seed))
    paths = report.write_report(tmp_path / "runs", tmp_path / "out", num_samples=0)
    summary = json.loads(paths["json"].read_text())
    assert summary["best"]["inference_images_per_second"] == starred
    assert summary["best"]["latency_ms_p50"] == []  # 10.0 (9–11) vs 10.5 (10–12) overlap
    assert summary["best"]["train_images_per_second"] == []  # epochs 10–12 vs 11–13 overlap
    assert summary["best"]["params"] == ["fast"]  # exact numbers still get their ★
    page = paths["html"].read_text()
    comparison = table_with_header(read_tables(page), "inference images/s")
    header, fast = comparison[0], comparison[1]
    assert fast[header.index("inference images/s")] == "100.0"
    assert fast[header.index("inference images/s range")] == f"{fast_spread[0]:.1f}–{fast_spread[1]:.1f}"
    assert fast[header.index("latency p50 (ms) range")] == "9.00–11.00"
    assert fast[header.index("training images/s")] == "11.0"  # median of the two epochs
    assert fast[header.index("training images/s range")] == "10.0–12.0"
    assert "Speeds depend on the machine's load" in html_text(page)
    assert page.count('<td class="best">') == sum(len(names) for names in summary["best"].values())


def test_champion_reasons_in_the_tables_units(tmp_path):
    from segflow import champion

    results = str(tmp_path / "results")
    first = champion.decide(results, "unet", "r1", 0.2)
    assert first["reason"] == "first champion (val mIoU 20.00 %)"
    champion.promote(results, first, "model-uri")
    assert champion.decide(results, "unet", "r2", 0.25)["reason"] == "val mIoU 25.00 % beats champion r1 (20.00 %)"
    worse = champion.decide(results, "unet", "r2", 0.1234)
    assert worse["reason"] == "val mIoU 12.34 % does not beat champion r1 (20.00 %)"

    write_fake_architecture(tmp_path / "run" / "unet")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"run_id": "r2", "champions": [worse]}))
    page = report.write_report(tmp_path / "run", tmp_path / "out", num_samples=0)["html"].read_text()
    decisions = table_with_header(read_tables(page), "promoted")
    header, row = decisions
    assert row[header.index("this run's val mIoU (%)")] == "12.34" and "12.34 %" in row[header.index("reason")]


def test_curve_legend_covers_no_line():
    from segflow import plots

    histories = {name: [{"epoch": epoch, "loss": 3.0 - epoch + index, "val_miou": 0.1 * epoch} for epoch in (1, 2, 3)]
                 for index, name in enumerate(("unet", "segnet", "icnet", "resnet", "deeplabv3plus"))}  # fmt: skip
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = plots.training_curves_figure(histories)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == list(histories)
    box = legend.get_window_extent(renderer)
    for axes in figure.axes:
        assert axes.get_legend() is None
        assert not box.overlaps(axes.get_window_extent(renderer))


def test_confusion_matrix_numbers_are_readable():
    from segflow import plots
    from segflow.report.render import TEMPLATES

    matrix = np.full((19, 19), 0.01)
    np.fill_diagonal(matrix, 0.81)
    figure = plots.confusion_matrix_figure(matrix, CLASS_NAMES, "t")
    numbers = [text for text in figure.axes[0].texts]
    assert len(numbers) == 19 * 19 and {text.get_text() for text in numbers} == {".81", ".01"}
    assert min(text.get_fontsize() for text in numbers) >= 8  # points: ≥ 11 px at 100 dpi
    png = Image.open(io.BytesIO(plots.confusion_matrix(matrix, CLASS_NAMES, "t")))
    css = (TEMPLATES / "report.css").read_text()
    shown = int(re.search(r"img\.matrix \{ max-width: min\(100%, (\d+)px\)", css).group(1))
    assert png.width == plots.CONFUSION_WIDTH_PX <= shown  # shown at its own size, not shrunk


def test_report_of_a_results_store_follows_latest_json(tmp_path):
    from segflow import storage
    from segflow.cli import cli

    results = tmp_path / "results"
    for run_id, seed in (("r1", 0), ("r2", 1)):
        write_fake_architecture(tmp_path / run_id / "unet", seed=seed)
        (tmp_path / run_id / "run.json").write_text(json.dumps({"run_id": run_id}))
        storage.publish(tmp_path / run_id, str(results), run_id)
    result = CliRunner().invoke(cli, ["report", "--runs", str(results), "--out", str(tmp_path / "out"), "--samples", "0"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    assert summary["run_id"] == "r2" and summary["source"] == str(results / "runs" / "r2")
    assert summary["comparison"][0]["val_miou"] == metrics_of(results / "runs" / "r2", "unet")["miou"]


def test_a_report_without_samples_never_imports_tensorflow(tmp_path):
    """Only the samples need TensorFlow: loading, summarising and rendering run without it."""
    write_fake_architecture(tmp_path / "runs" / "unet")
    script = (
        "import sys; from segflow.report import write_report; "
        f"write_report({str(tmp_path / 'runs')!r}, {str(tmp_path / 'out')!r}, num_samples=0); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert (tmp_path / "out" / "report.html").is_file()


def test_templates_are_package_data():
    import tomllib

    from segflow.report.render import TEMPLATES

    patterns = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path.name for pattern in patterns["segflow.report"] for path in TEMPLATES.parent.glob(pattern)}
    assert shipped == {path.name for path in TEMPLATES.iterdir()} >= {"report.html.j2", "report.md.j2", "report.css"}


# === CLI ===


@pytest.mark.slow
def test_cli_writes_the_three_files(run_dir, tmp_path):
    from segflow.cli import cli

    names = ["report.html", "report.json", "report.md"]
    for _ in range(2):  # the second run replaces the files, leaving no temporary ones
        result = CliRunner().invoke(cli, ["report", "--runs", str(run_dir), "--out", str(tmp_path), "--samples", "0"])
        assert result.exit_code == 0, result.output
        assert result.output.split() == [str(tmp_path / name) for name in names]
        assert sorted(path.name for path in tmp_path.iterdir()) == names
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["samples"]["note"] == "Sample predictions were not asked for."


def test_cli_reports_a_missing_run_as_one_error_line(tmp_path):
    from segflow.cli import cli

    result = CliRunner().invoke(cli, ["report", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output == f"Error: run folder {tmp_path / 'nope'} does not exist\n"


# === Screenshot ===


@pytest.mark.slow
def test_page_renders_in_headless_chromium(rendered, tmp_path):
    paths, _, _, _ = rendered
    chromium = shutil.which("chromium")
    assert chromium, "headless Chromium is needed for this test: apt-get install -y chromium"
    screenshot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot}", paths["html"].resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    if os.environ.get("SEGFLOW_TEST_ARTIFACTS"):
        artifacts = Path(__file__).parent / "artifacts"
        artifacts.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, artifacts / "report.png")
    with Image.open(screenshot) as image:
        assert image.size == (1400, 900)
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 20  # a blank or single-colour page is near 0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # text, tables, heat-map colours
    # The note's yellow box is at the top of the first screen.
    assert (np.abs(pixels.astype(int) - (255, 248, 197)).sum(axis=2) < 6).sum() > 10_000


# === Helpers ===


class _TableReader(HTMLParser):
    """Every <table> of a page as rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables, self._row, self._cell = [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def read_tables(page: str) -> list[list[list[str]]]:
    reader = _TableReader()
    reader.feed(page)
    return reader.tables


def html_text(page: str) -> str:
    """The page's text as a reader sees it: tags dropped, entities decoded, spaces collapsed."""
    import html

    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def table_with_header(tables, heading: str) -> list[list[str]]:
    return next(table for table in tables if table and heading in table[0])
