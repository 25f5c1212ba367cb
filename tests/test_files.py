"""Output files appear whole or not at all: a full disk or an error mid-write keeps the old file."""

import os
import stat

import pytest

from asr.files import atomic_write, check_can_write


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_complete_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "hyp.txt"
    path.write_text("old\n")
    with atomic_write(path) as file:
        file.write("a\tone\nb\ttwo\n")
        assert path.read_text() == "old\n"  # nothing visible until the block ends
    assert path.read_text() == "a\tone\nb\ttwo\n"
    assert os.listdir(tmp_path) == ["hyp.txt"]


def test_a_full_disk_keeps_the_old_file_and_raises_its_error(tmp_path, monkeypatch):
    path = tmp_path / "hyp.txt"
    path.write_text("old\n")
    monkeypatch.setattr(os, "fsync", _disk_full)  # the data reach the disk at fsync: ENOSPC there
    with pytest.raises(OSError, match="No space left") as raised, atomic_write(path) as file:
        file.write("new\n")
    assert raised.value.errno == 28
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["hyp.txt"]  # the temporary file is gone


def test_an_error_in_the_block_writes_nothing(tmp_path):
    path = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt), atomic_write(path, binary=True) as file:
        file.write(b"\x00" * 10)
        raise KeyboardInterrupt  # an interrupted run
    assert os.listdir(tmp_path) == []


def test_permissions_are_those_of_a_plain_open(tmp_path):
    fresh = tmp_path / "fresh.txt"
    with atomic_write(fresh) as file:
        file.write("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0o600
    kept = tmp_path / "kept.txt"
    kept.write_text("x")
    kept.chmod(0o640)
    with atomic_write(kept) as file:
        file.write("y")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640


def test_check_can_write_fails_early_and_writes_nothing(tmp_path):
    check_can_write(tmp_path / "out.txt")
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        check_can_write(tmp_path / "no" / "folder" / "out.txt")
    with pytest.raises(IsADirectoryError):
        check_can_write(tmp_path)


def test_a_link_keeps_pointing_at_its_target_which_is_replaced(tmp_path):
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old\n")
    link.symlink_to(target)
    with atomic_write(link) as file:
        file.write("new\n")
    assert link.is_symlink() and target.read_text() == "new\n"


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_a_device_is_written_in_place_and_never_replaced():
    check_can_write("/dev/null")
    with atomic_write("/dev/null") as file:  # as `--output /dev/stdout` is: no file to swap in
        file.write("discarded\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
