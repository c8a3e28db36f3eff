"""Champion pointers: decided against the current champion, moved by compare-and-swap, so two
overlapping runs cannot leave the worse model as champion. Against moto's S3 server and a folder."""

import os
import threading

import pytest

from segflow import champion, storage


def _decide_and_promote_both(results_uri, order):
    """Two runs both decide before either promotes (the nightly and a manual run), then promote in `order`."""
    decisions = {
        "worse": champion.decide(results_uri, "unet", "worse", 0.40),
        "better": champion.decide(results_uri, "unet", "better", 0.55),
    }
    assert all(decision["promote"] for decision in decisions.values())
    return {name: champion.promote(results_uri, decisions[name], f"s3://b/runs/{name}/unet/model.keras") for name in order}


@pytest.mark.parametrize("order", [("better", "worse"), ("worse", "better")])
def test_overlapping_runs_leave_the_better_model_as_champion(results_uri, order):
    results = _decide_and_promote_both(results_uri, order)

    final = champion.current_champion(results_uri, "unet")
    assert (final["run_id"], final["val_miou"]) == ("better", 0.55)
    assert results["better"] is not None
    assert (results["worse"] is None) == (order == ("better", "worse"))  # the later worse run re-decided


def test_a_decision_against_a_champion_records_it_and_says_why_in_percent(tmp_path):
    results = str(tmp_path / "results")
    champion.promote(results, champion.decide(results, "unet", "r1", 0.5), str(tmp_path / "r1.keras"))

    assert champion.decide(results, "unet", "r2", 0.4) == {
        "architecture": "unet", "run_id": "r2", "val_miou": 0.4, "previous_champion": "r1",
        "previous_val_miou": 0.5, "promote": False, "reason": "val mIoU 40.00 % does not beat champion r1 (50.00 %)",
    }  # fmt: skip
    better = champion.decide(results, "unet", "r3", 0.6)
    assert (better["promote"], better["reason"]) == (True, "val mIoU 60.00 % beats champion r1 (50.00 %)")

def test_concurrent_promotions_that_both_read_no_champion(results_uri, monkeypatch):
    """Both threads read "no champion" before either writes (a barrier holds them there), then the
    better run writes first: the worse run's conditional write must fail, and on reading again it
    finds the better champion and does not promote."""
    barrier, better_wrote = threading.Barrier(2, timeout=30), threading.Event()
    real_read, real_write = storage.read_json_tagged, storage.write_json_if
    first_read = threading.local()

    def read_then_wait(uri, **kwargs):
        found = real_read(uri, **kwargs)
        if not getattr(first_read, "done", False):
            first_read.done = True
            barrier.wait()
            if threading.current_thread().name == "worse":
                better_wrote.wait(5)
        return found

    def write_then_tell(*args, **kwargs):
        written = real_write(*args, **kwargs)
        if threading.current_thread().name == "better":
            better_wrote.set()
        return written

    monkeypatch.setattr(storage, "read_json_tagged", read_then_wait)
    monkeypatch.setattr(storage, "write_json_if", write_then_tell)
    decisions = {name: champion._judge(None, "unet", name, miou) for name, miou in (("worse", 0.40), ("better", 0.55))}
    results = {}

    def promote(name):
        results[name] = champion.promote(results_uri, decisions[name], f"s3://b/runs/{name}/unet/model.keras")

    threads = [threading.Thread(target=promote, args=(name,), name=name) for name in decisions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    monkeypatch.setattr(storage, "read_json_tagged", real_read)

    final = champion.current_champion(results_uri, "unet")
    assert (final["run_id"], final["val_miou"]) == ("better", 0.55)
    assert results == {"better": final, "worse": None}


def test_a_retried_promotion_returns_the_pointer_it_wrote(results_uri):
    decision = champion.decide(results_uri, "unet", "r1", 0.5)
    first = champion.promote(results_uri, decision, "s3://b/runs/r1/unet/model.keras")
    assert champion.promote(results_uri, decision, "s3://b/runs/r1/unet/model.keras") == first


def test_local_model_uri_is_stored_absolute_in_a_file_of_normal_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    decision = champion.decide("results", "unet", "r1", 0.5)
    old_umask = os.umask(0o022)
    try:
        pointer = champion.promote("results", decision, "results/runs/r1/unet/model.keras")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "results/champions/unet.json").stat().st_mode & 0o777 == 0o644
    assert pointer["model_uri"] == str(tmp_path.resolve() / "results/runs/r1/unet/model.keras")
    assert os.path.isabs(storage.read_json(str(tmp_path / "results/champions/unet.json"))["model_uri"])


@pytest.mark.parametrize("val_miou", [None, float("nan"), float("inf"), 1.5])
def test_a_missing_or_non_finite_metric_is_never_promoted(tmp_path, val_miou):
    results = str(tmp_path / "results")
    decision = champion.decide(results, "unet", "r1", val_miou)
    assert decision["promote"] is False
    assert champion.promote(results, {**decision, "promote": True}, str(tmp_path / "model.keras")) is None
    assert champion.current_champion(results, "unet") is None
