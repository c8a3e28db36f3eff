"""The one atomic-write helper: whole or nothing, normal file mode, stale staging removed, a full
disk reported in one line."""

import ctypes
import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segflow import atomic
from segflow.errors import SegflowError


def test_write_json_gives_the_normal_mode_and_no_leftovers(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic.write_json(tmp_path / "a" / "x.json", {"b": 1})
    finally:
        os.umask(old)
    assert path.read_text() == '{\n  "b": 1\n}\n'
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(path.parent) == ["x.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path):
    path = atomic.write_text(tmp_path / "x.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic.temporary_file(path) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["x.txt"]


def test_staging_dir_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "records"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic.staging_dir(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(os.listdir(target)) == ["new.txt"]
    assert os.listdir(tmp_path) == ["records"]
    assert (target.stat().st_mode & 0o777) == 0o777 & ~_umask()


def test_exchange_swaps_two_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1").write_text("a")
    (tmp_path / "b").mkdir()
    assert atomic.exchange(tmp_path / "a", tmp_path / "b")  # tmpfs and ext4 both support it
    assert os.listdir(tmp_path / "b") == ["1"] and os.listdir(tmp_path / "a") == []


def test_remove_stale_removes_only_dead_processes_staging(tmp_path):
    target = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".out.{dead_pid}.abc{atomic.STAGING_SUFFIX}"
    stale.mkdir()
    (stale / "big").write_bytes(b"x" * 10)
    alive = tmp_path / f".out.{os.getppid()}.def{atomic.STAGING_SUFFIX}"
    alive.mkdir()
    other = tmp_path / f".other.{dead_pid}.abc{atomic.STAGING_SUFFIX}"
    other.mkdir()
    assert atomic.remove_stale(target) == [stale]
    assert alive.exists() and other.exists() and not stale.exists()
    # This process's own pid: a killed run whose pid the system gave again (a container's pid 1).
    own = tmp_path / f".out.{os.getpid()}.ghi{atomic.STAGING_SUFFIX}"
    own.mkdir()
    assert atomic.remove_stale(target) == [own]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_one_clear_error(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        with pytest.raises(SegflowError, match=r"disk full while writing big.bin to .*big.bin .*MiB free"):
            atomic.write_bytes(mount / "big.bin", b"x" * 3 * 2**20)
        assert os.listdir(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_a_kill_inside_the_two_rename_fallback_is_repaired_by_the_next_run(tmp_path):
    from crash import killed_after_renames

    target = tmp_path / "records"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def replace_without_exchange():
        atomic.exchange = lambda first, second: False  # a filesystem without RENAME_EXCHANGE
        with atomic.staging_dir(target) as staging:
            (staging / "new.txt").write_text("new")

    assert killed_after_renames(1, replace_without_exchange)  # after moving the old copy aside
    assert not target.exists()
    new_staging = [path for path in tmp_path.iterdir() if not path.name.endswith(".old.segflow-tmp")]

    assert atomic.remove_stale(target) == new_staging  # the old copy is put back, not removed
    assert sorted(os.listdir(tmp_path)) == ["records"]
    assert os.listdir(target) == ["old.txt"]


def test_the_disk_full_message_gives_the_space_needed_and_free_in_mib(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        target = mount / "not" / "yet"  # free space is read from the nearest folder that exists
        error = atomic.disk_full_error("records", target, needed_bytes=3 * 2**20)
        assert str(error).startswith(f"disk full while writing records to {target} (3.0 MiB needed, 4.0 MiB free)")
        assert f"to {target} (4.0 MiB free);" in str(atomic.disk_full_error("records", target))  # nothing needed
        monkeypatch.setattr(atomic.shutil, "disk_usage", _unknown_disk_usage)
        assert f"to {target} (3.0 MiB needed, free space unknown);" in str(
            atomic.disk_full_error("records", target, needed_bytes=3 * 2**20)
        )
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _unknown_disk_usage(path):
    raise PermissionError(13, "Permission denied", str(path))


def test_exchange_takes_paths_relative_to_the_working_folder_and_names_a_missing_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ctypes.set_errno(0)  # so that a stale saved errno cannot stand in for the failed call's own
    os.mkdir("a")
    os.mkdir("b")
    (tmp_path / "a" / "1").write_text("a")
    assert atomic.exchange(Path("a"), Path("b"))
    assert os.listdir("b") == ["1"] and os.listdir("a") == []
    with pytest.raises(FileNotFoundError) as raised:
        atomic.exchange(Path("missing"), Path("b"))
    assert raised.value.filename == "missing" and raised.value.strerror == os.strerror(errno.ENOENT)


def test_the_two_rename_fallback_replaces_the_folder_and_leaves_nothing_beside_it(tmp_path, monkeypatch):
    target = tmp_path / "records"
    target.mkdir()
    (target / "old.txt").write_text("old")
    monkeypatch.setattr(atomic, "exchange", lambda first, second: False)  # a filesystem without RENAME_EXCHANGE

    with atomic.staging_dir(target) as staging:
        (staging / "new.txt").write_text("new")

    assert os.listdir(target) == ["new.txt"] and os.listdir(tmp_path) == ["records"]


def test_remove_leftovers_removes_older_versions_files_and_folders_and_says_which(tmp_path, caplog):
    leftovers = [tmp_path / ".records.1.partial", tmp_path / ".records.2.partial"]
    leftovers[0].mkdir()
    leftovers[1].write_text("half a file")
    (tmp_path / "records").mkdir()
    log = logging.getLogger("test_atomic")

    with caplog.at_level(logging.WARNING, logger="test_atomic"):
        removed = atomic.remove_leftovers(tmp_path / "records", log, ".records.*.partial")

    assert sorted(removed) == leftovers and os.listdir(tmp_path) == ["records"]
    (message,) = caplog.messages
    assert message.startswith("removed 2 leftover staging folders of a killed run: ")
    assert all(str(path) in message for path in leftovers)


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_exchange_says_false_where_the_kernel_or_filesystem_cannot_swap(tmp_path, monkeypatch, code):
    class LibcWithoutExchange:  # renameat2 failing as on a filesystem without RENAME_EXCHANGE (vfat, older NFS)
        def renameat2(self, *args):
            ctypes.set_errno(code)
            return -1

    monkeypatch.setattr(atomic.ctypes, "CDLL", lambda *args, **kwargs: LibcWithoutExchange())
    assert atomic.exchange(tmp_path / "a", tmp_path / "b") is False
    monkeypatch.setattr(atomic.ctypes, "CDLL", lambda *args, **kwargs: object())  # a libc without renameat2 at all
    assert atomic.exchange(tmp_path / "a", tmp_path / "b") is False


def test_remove_stale_removes_a_dead_writers_temporary_file_too(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.json.{int(dead.stdout)}.abc{atomic.STAGING_SUFFIX}"
    stale.write_text('{"half": ')  # what a write_json killed mid-write leaves

    assert atomic.remove_stale(tmp_path / "out.json") == [stale]
    assert os.listdir(tmp_path) == []
