"""`segflow clean --keep N`: the oldest runs go, latest.json's run and champions' runs stay, a dry
run deletes nothing; on a local folder and on S3 (moto's server)."""

import pytest
from click.testing import CliRunner

from segflow import champion, storage
from segflow.cli import cli

RUNS = ["20261101T020000Z-aaaa", "20261102T020000Z-bbbb", "20261103T020000Z-cccc", "20261104T020000Z-dddd",
        "20261105T020000Z-eeee"]  # fmt: skip


def _store(results_uri, tmp_path):
    for run_id in RUNS:
        folder = tmp_path / "run" / run_id
        (folder / "unet").mkdir(parents=True)
        (folder / "unet" / "model.keras").write_bytes(b"weights")
        storage.publish(folder, results_uri, run_id)
    # latest.json points at the newest; make an old run the unet champion.
    decision = {"architecture": "unet", "run_id": RUNS[1], "val_miou": 0.5, "promote": True}
    champion.promote(results_uri, decision, storage.join(results_uri, "runs", RUNS[1], "unet", "model.keras"))
    return results_uri


def test_keep_two_deletes_the_oldest_unprotected_runs(results_uri, tmp_path):
    _store(results_uri, tmp_path)
    result = CliRunner().invoke(cli, ["clean", results_uri, "--keep", "2"])
    assert result.exit_code == 0, result.output
    remaining = {name.split("/")[0] for name in storage.list_files(storage.join(results_uri, "runs"))}
    # The two newest (latest.json's is one of them) and the champion's run stay.
    assert remaining == {RUNS[1], RUNS[3], RUNS[4]}
    assert f"deleted runs/{RUNS[0]}" in result.output and f"deleted runs/{RUNS[2]}" in result.output
    assert f"kept runs/{RUNS[1]}: champion of unet" in result.output
    assert f"kept runs/{RUNS[4]}: latest.json points at it" in result.output
    assert "deleted 2 of 5 runs" in result.output
    assert storage.read_json(storage.join(results_uri, "latest.json"))["run_id"] == RUNS[4]


def test_dry_run_lists_and_deletes_nothing(results_uri, tmp_path):
    _store(results_uri, tmp_path)
    result = CliRunner().invoke(cli, ["clean", results_uri, "--keep", "0", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("would delete runs/")] == [
        f"would delete runs/{RUNS[0]}", f"would delete runs/{RUNS[2]}", f"would delete runs/{RUNS[3]}"]  # fmt: skip
    remaining = {name.split("/")[0] for name in storage.list_files(storage.join(results_uri, "runs"))}
    assert remaining == set(RUNS)


def test_a_run_whose_manifest_a_killed_clean_already_removed_is_deleted_by_the_next(tmp_path):
    results_uri = _store(str(tmp_path / "results"), tmp_path)
    run_folder = tmp_path / "results" / "runs" / RUNS[0]
    (run_folder / storage.MANIFEST).unlink()  # the first step of deleting a run; the kill came after it

    result = CliRunner().invoke(cli, ["clean", results_uri, "--keep", "2"])

    assert result.exit_code == 0, result.output
    assert not run_folder.exists() and f"deleted runs/{RUNS[0]}" in result.output

def test_negative_keep_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["clean", str(tmp_path), "--keep", "-1"])
    assert result.exit_code == 1 and "--keep must be 0 or more; got -1" in result.output


def test_a_store_without_bucket_is_refused_before_anything(tmp_path):
    result = CliRunner().invoke(cli, ["clean", "s3://", "--keep", "1"])
    assert result.exit_code == 2 and "RESULTS" in result.output and "bucket" in result.output
