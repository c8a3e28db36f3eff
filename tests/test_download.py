"""segflow.download and segflow.extract against real HTTP servers on 127.0.0.1: a server that
answers like www.cityscapes-dataset.com, a plain web folder, and the S3 server from conftest."""

import functools
import hashlib
import logging
import os
import shutil
import signal
import threading
import time
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from segflow import layout, storage, synthetic
from segflow.cli import cli
from segflow.download import Credentials, RetryPolicy, fetch_packages, package_fingerprints
from segflow.errors import SegflowError
from segflow.extract import extract
from segflow.testing.cityscapes_site import CityscapesSiteServer

LABELS_ZIP, IMAGES_ZIP = "gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"
BIG_ZIP = "camera_trainvaltest.zip"  # 3 MiB of random bytes, so a download can be cut in the middle
BIG_SIZE = 3 * 1024 * 1024
PASSWORD = "pa55-Word-that-must-not-leak"
FAST = RetryPolicy(attempts=3, first_wait_s=0.01, connect_timeout_s=2, read_timeout_s=2)


@pytest.fixture(scope="module")
def packages_dir(tmp_path_factory):
    """The two real trainvaltest packages (synthetic content, real layout) and one big zip."""
    root = tmp_path_factory.mktemp("packages")
    synthetic.write_dataset(root / "synthetic", train=2, val=1, test=1, height=32, width=64, zips=True)
    folder = root / "site"
    folder.mkdir()
    for name in (LABELS_ZIP, IMAGES_ZIP):
        shutil.copy(root / "synthetic" / name, folder / name)
    with zipfile.ZipFile(folder / BIG_ZIP, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("camera/random.bin", os.urandom(BIG_SIZE))
    return folder


@pytest.fixture
def site(packages_dir):
    with CityscapesSiteServer(packages_dir, username="alice", password=PASSWORD) as site:
        yield site


@pytest.fixture
def credentials():
    return Credentials("alice", PASSWORD)


def fetch_from_site(site, dest, packages, credentials=None, retry=FAST):
    return fetch_packages(f"cityscapes+{site.url}", dest, packages, credentials, retry=retry)


def md5_of(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


# === The website ===


def test_login_and_download_verified_packages(site, credentials, packages_dir, tmp_path):
    zips = fetch_from_site(site, tmp_path, [LABELS_ZIP, IMAGES_ZIP], credentials)

    assert zips == [tmp_path / LABELS_ZIP, tmp_path / IMAGES_ZIP]
    assert [md5_of(path) for path in zips] == [md5_of(packages_dir / path.name) for path in zips]
    assert sorted(os.listdir(tmp_path)) == [LABELS_ZIP, IMAGES_ZIP]  # no .part left behind
    paths = [(request.method, request.path, request.status) for request in site.requests]
    assert paths[:2] == [("GET", "/login", 200), ("POST", "/login", 302)]
    assert ("GET", "/md5-sum/", 200) in paths


def test_wrong_password_is_a_clear_error(site, tmp_path):
    with pytest.raises(SegflowError, match="login as 'alice' .* failed: wrong username or password") as raised:
        fetch_from_site(site, tmp_path, [LABELS_ZIP], Credentials("alice", "not-" + PASSWORD))

    assert PASSWORD not in str(raised.value)
    assert site.file_requests() == [] and os.listdir(tmp_path) == []


def test_unknown_package_is_named_with_the_available_ones(site, credentials, tmp_path):
    with pytest.raises(SegflowError, match=r"'gtFoo\.zip' is not offered .* available: camera_trainvaltest\.zip"):
        fetch_from_site(site, tmp_path, [LABELS_ZIP, "gtFoo.zip"], credentials)
    assert site.file_requests() == []  # every name is checked before downloading


def test_already_downloaded_package_is_kept_when_its_md5_matches(site, credentials, packages_dir, tmp_path):
    shutil.copy(packages_dir / BIG_ZIP, tmp_path / BIG_ZIP)

    fetch_from_site(site, tmp_path, [BIG_ZIP], credentials)

    assert site.file_requests() == []


def test_corrupt_download_is_an_error_and_not_kept(site, credentials, tmp_path):
    site.corrupt = {BIG_ZIP}
    (tmp_path / BIG_ZIP).write_bytes(b"an older copy the user had")

    with pytest.raises(SegflowError, match=f"{BIG_ZIP} from .* is corrupt: its MD5 is .*the download was deleted"):
        fetch_from_site(site, tmp_path, [BIG_ZIP], credentials)

    assert os.listdir(tmp_path) == [BIG_ZIP]  # no .part
    assert (tmp_path / BIG_ZIP).read_bytes() == b"an older copy the user had"


def test_partial_download_resumes_with_range(site, credentials, packages_dir, tmp_path):
    have = 1_000_000
    (tmp_path / (BIG_ZIP + ".part")).write_bytes((packages_dir / BIG_ZIP).read_bytes()[:have])

    fetch_from_site(site, tmp_path, [BIG_ZIP], credentials)

    [request] = site.file_requests(BIG_ZIP)
    size = (packages_dir / BIG_ZIP).stat().st_size
    assert (request.range, request.status, request.body_bytes) == (f"bytes={have}-", 206, size - have)
    assert md5_of(tmp_path / BIG_ZIP) == md5_of(packages_dir / BIG_ZIP)


def test_server_ignoring_range_restarts_the_file(site, credentials, packages_dir, tmp_path):
    site.honour_range = False
    (tmp_path / (BIG_ZIP + ".part")).write_bytes(b"x" * 1000)  # would corrupt the file if appended to

    fetch_from_site(site, tmp_path, [BIG_ZIP], credentials)

    [request] = site.file_requests(BIG_ZIP)
    assert (request.range, request.status) == ("bytes=1000-", 200)
    assert md5_of(tmp_path / BIG_ZIP) == md5_of(packages_dir / BIG_ZIP)


def test_dropped_connection_is_retried_from_where_it_stopped(site, credentials, packages_dir, tmp_path):
    site.drop_after_bytes = 1_500_000

    fetch_from_site(site, tmp_path, [BIG_ZIP], credentials)

    first, second = site.file_requests(BIG_ZIP)
    size = (packages_dir / BIG_ZIP).stat().st_size
    assert (first.range, first.status, first.body_bytes) == (None, 200, 1_500_000)
    assert (second.range, second.status, second.body_bytes) == ("bytes=1500000-", 206, size - 1_500_000)
    assert md5_of(tmp_path / BIG_ZIP) == md5_of(packages_dir / BIG_ZIP)


def test_server_errors_are_retried_then_reported(site, credentials, packages_dir, tmp_path):
    site.unavailable_times = 2
    fetch_from_site(site, tmp_path / "ok", [BIG_ZIP], credentials)  # third attempt of three succeeds
    assert [request.status for request in site.file_requests(BIG_ZIP)] == [503, 503, 200]

    site.unavailable_times = 3
    with pytest.raises(SegflowError, match=f"downloading {BIG_ZIP} failed after 3 attempts: HTTP 503"):
        fetch_from_site(site, tmp_path / "fails", [BIG_ZIP], credentials)


def test_stalled_server_times_out_instead_of_hanging(site, credentials, tmp_path):
    site.stall_seconds = 30
    patience = RetryPolicy(attempts=2, first_wait_s=0.01, connect_timeout_s=1, read_timeout_s=0.3)
    started = time.monotonic()

    with pytest.raises(SegflowError, match="failed after 2 attempts: timed out"):
        fetch_from_site(site, tmp_path, [BIG_ZIP], credentials, retry=patience)

    assert time.monotonic() - started < 5
    assert not (tmp_path / BIG_ZIP).exists()


def test_pages_need_the_session_cookie(site):
    import requests

    response = requests.get(f"{site.url}/file-handling/?packageID=1", allow_redirects=False, timeout=5)
    assert (response.status_code, response.headers["Location"]) == (302, "/login/")


def test_credentials_come_from_the_environment(site, monkeypatch, tmp_path):
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    with pytest.raises(SegflowError, match="set CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD"):
        fetch_from_site(site, tmp_path, [LABELS_ZIP])

    monkeypatch.setenv("CITYSCAPES_USERNAME", "alice")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", PASSWORD)
    assert fetch_from_site(site, tmp_path, [LABELS_ZIP]) == [tmp_path / LABELS_ZIP]


def test_password_appears_in_no_log_repr_or_error(site, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's request lines included
    credentials = Credentials("alice", PASSWORD)
    site.drop_after_bytes = 100_000  # a retry, so the warning path logs too
    fetch_from_site(site, tmp_path, [BIG_ZIP], credentials)
    with pytest.raises(SegflowError) as wrong_password:
        fetch_from_site(site, tmp_path, [LABELS_ZIP], Credentials("alice", "x" + PASSWORD))
    url = site.url
    site.stop()
    with pytest.raises(SegflowError, match="failed after 3 attempts") as server_gone:
        fetch_packages(f"cityscapes+{url}", tmp_path, [LABELS_ZIP], credentials, retry=FAST)

    assert "POST /login" in caplog.text and "attempt 2 of 3" in caplog.text
    for text in (caplog.text, repr(credentials), str(credentials), str(wrong_password.value), str(server_gone.value)):
        assert PASSWORD not in text


# === Other sources ===


def test_s3_mirror_source(s3_bucket, packages_dir, tmp_path):
    for name in (LABELS_ZIP, IMAGES_ZIP):
        storage.upload_file(packages_dir / name, f"{s3_bucket}/cityscapes/{name}")

    zips = fetch_packages(f"{s3_bucket}/cityscapes/", tmp_path)

    assert [md5_of(path) for path in zips] == [md5_of(packages_dir / name) for name in (LABELS_ZIP, IMAGES_ZIP)]
    assert zips[0].parent == tmp_path


def test_local_folder_source_uses_zips_in_place(packages_dir, tmp_path):
    assert fetch_packages(str(packages_dir), tmp_path) == [packages_dir / LABELS_ZIP, packages_dir / IMAGES_ZIP]
    assert fetch_packages(f"file://{packages_dir}/", tmp_path, [BIG_ZIP]) == [packages_dir / BIG_ZIP]
    assert fetch_packages(f"{packages_dir}/{BIG_ZIP}", tmp_path) == [packages_dir / BIG_ZIP]
    assert os.listdir(tmp_path) == []
    with pytest.raises(SegflowError, match=f"missing in {tmp_path}: {LABELS_ZIP}, {IMAGES_ZIP}"):
        fetch_packages(str(tmp_path), tmp_path / "dest")


@pytest.fixture
def web_folder(packages_dir):
    """A plain static web server (no login, no Range) over the packages folder."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(packages_dir))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_folder_and_zip_sources(web_folder, packages_dir, tmp_path):
    zips = fetch_packages(f"{web_folder}/", tmp_path)
    [big] = fetch_packages(f"{web_folder}/{BIG_ZIP}", tmp_path)

    assert [md5_of(path) for path in [*zips, big]] == [
        md5_of(packages_dir / name) for name in (LABELS_ZIP, IMAGES_ZIP, BIG_ZIP)
    ]
    with pytest.raises(SegflowError, match="HTTP 404 .* from http://127.0.0.1:.*/gtCoarse.zip"):
        fetch_packages(web_folder, tmp_path, ["gtCoarse.zip"], retry=FAST)


def test_fingerprints_name_each_package_without_downloading(site, credentials, s3_bucket, web_folder, packages_dir):
    storage.upload_file(packages_dir / BIG_ZIP, f"{s3_bucket}/mirror/{BIG_ZIP}")
    sources = [f"cityscapes+{site.url}", f"{s3_bucket}/mirror", web_folder, str(packages_dir)]

    fingerprints = [package_fingerprints(source, [BIG_ZIP], credentials, retry=FAST)[BIG_ZIP] for source in sources]

    assert fingerprints[:2] == [f"md5:{md5_of(packages_dir / BIG_ZIP)}"] * 2  # the site's and the stored MD5
    assert fingerprints[2] and fingerprints[3].startswith(f"size:{(packages_dir / BIG_ZIP).stat().st_size}:")
    assert site.file_requests() == []
    os.utime(packages_dir / BIG_ZIP, ns=(0, 0))
    assert package_fingerprints(str(packages_dir), [BIG_ZIP])[BIG_ZIP] != fingerprints[3]


def test_unsupported_source_is_named():
    with pytest.raises(SegflowError, match="unsupported data source 'ftp://host/x'"):
        fetch_packages("ftp://host/x", "unused")


# === Extraction ===


def test_extract_gives_a_valid_cityscapes_layout(packages_dir, tmp_path):
    root = extract([packages_dir / LABELS_ZIP, packages_dir / IMAGES_ZIP], tmp_path / "cityscapes")

    samples = layout.validate(root)
    assert {split: len(items) for split, items in samples.items()} == {"train": 2, "val": 1, "test": 1}
    assert sorted(os.listdir(root)) == ["README", "gtFine", "leftImg8bit", "license.txt"]
    assert os.listdir(tmp_path) == ["cityscapes"]  # no staging folder left


@pytest.mark.parametrize("problem", ["not a zip", "labels only"])
def test_failed_extraction_leaves_the_existing_dataset_untouched(packages_dir, tmp_path, problem):
    root = extract([packages_dir / LABELS_ZIP, packages_dir / IMAGES_ZIP], tmp_path / "cityscapes")
    (root / "my_notes.txt").write_text("mine")
    before = sorted(str(path.relative_to(root)) for path in root.rglob("*"))
    bad = tmp_path / "bad.zip"
    if problem == "not a zip":
        bad.write_bytes((packages_dir / IMAGES_ZIP).read_bytes()[:5000])  # a truncated download
        expected = "bad.zip is not a valid zip file"
    else:
        shutil.copy(packages_dir / LABELS_ZIP, bad)
        expected = "missing folder for split 'train'"

    with pytest.raises(SegflowError, match=expected):
        extract([bad], root)

    assert sorted(str(path.relative_to(root)) for path in root.rglob("*")) == before
    assert sorted(os.listdir(tmp_path)) == ["bad.zip", "cityscapes"]
    layout.validate(root)


def test_extract_replaces_the_packages_folders_and_keeps_other_files(packages_dir, tmp_path):
    root = tmp_path / "cityscapes"
    (root / "gtFine" / "stale").mkdir(parents=True)
    (root / "gtCoarse").mkdir()

    extract([packages_dir / LABELS_ZIP, packages_dir / IMAGES_ZIP], root)

    assert not (root / "gtFine" / "stale").exists() and (root / "gtCoarse").is_dir()


# === CLI ===


def test_cli_download_and_extract(site, monkeypatch, tmp_path):
    monkeypatch.setenv("CITYSCAPES_USERNAME", "alice")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", PASSWORD)
    arguments = ["download", "--source", f"cityscapes+{site.url}", "--downloads", str(tmp_path / "zips")]

    result = CliRunner().invoke(cli, [*arguments, "--data-root", str(tmp_path / "cityscapes")])

    assert result.exit_code == 0, result.output
    assert f"dataset ready at {tmp_path / 'cityscapes'}" in result.output
    layout.validate(tmp_path / "cityscapes")

    monkeypatch.setenv("CITYSCAPES_PASSWORD", "wrong-" + PASSWORD)
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 1
    assert result.output.startswith("Error: Cityscapes login as 'alice'") and PASSWORD not in result.output


# === Crashes during extraction ===


def _tree(root):
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def test_a_kill_before_or_after_the_one_switch_leaves_the_old_or_the_new_dataset(packages_dir, tmp_path):
    from crash import killed_after_renames

    root = tmp_path / "cityscapes"
    (root / "gtFine" / "stale").mkdir(parents=True)
    (root / "gtFine" / "stale" / "old.txt").write_text("old")
    (root / "gtCoarse").mkdir()
    (root / "gtCoarse" / "keep.txt").write_text("kept")
    old = _tree(root)
    zips = [packages_dir / LABELS_ZIP, packages_dir / IMAGES_ZIP]

    assert killed_after_renames(0, lambda: extract(zips, root))
    assert _tree(root) == old
    assert not killed_after_renames(1, lambda: extract(zips, root))  # the exchange is the only rename
    new = _tree(root)
    assert "gtFine/stale/old.txt" not in new and new["gtCoarse/keep.txt"] == b"kept"
    layout.validate(root)
    assert sorted(os.listdir(tmp_path)) == ["cityscapes"]  # the killed run's staging went with the second run


def test_sigkill_during_extraction_keeps_the_old_dataset_and_the_next_run_cleans_up(packages_dir, tmp_path):
    from crash import run_segflow, segflow_command, wait_for

    site = tmp_path / "packages"
    site.mkdir()
    for name in (LABELS_ZIP, IMAGES_ZIP):
        shutil.copy(packages_dir / name, site / name)
    with zipfile.ZipFile(site / "extras.zip", "w", zipfile.ZIP_STORED) as archive:  # slow to extract: many files
        for index in range(20000):
            archive.writestr(f"extras/{index}.txt", b"x")
    root = tmp_path / "cityscapes"
    extract([site / LABELS_ZIP, site / IMAGES_ZIP], root)
    (root / "my_notes.txt").write_text("mine")
    old = _tree(root)
    arguments = ["download", "--source", str(site), "--data-root", str(root)]
    arguments += [f"--package={name}" for name in (LABELS_ZIP, IMAGES_ZIP, "extras.zip")]
    staged = lambda: [path for path in tmp_path.iterdir() if path.name.endswith(".segflow-tmp")]  # noqa: E731

    command = segflow_command(*arguments)
    wait_for(lambda: any((path / "extras").is_dir() for path in staged()), what="extraction to begin")
    os.killpg(command.pid, signal.SIGKILL)
    assert command.wait() == -signal.SIGKILL

    assert _tree(root) == old
    again = run_segflow(*arguments)
    assert again.returncode == 0, again.stderr
    assert "removed 1 leftover staging folders of a killed run: " in again.stderr
    assert (root / "extras" / "19999.txt").is_file() and (root / "my_notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["cityscapes", "packages"]
