"""The small parts: worker pool, progress, pull journal, stored-image records, qemu-img."""

import subprocess
import threading
from pathlib import Path

import pytest

from images.image_helpers import QEMU_IMG, write_disk
from shoal.images import qemuimg
from shoal.images.cache import ImageCache
from shoal.images.errors import ImageFormatError
from shoal.images.layout import Metadata
from shoal.images.progress import Progress
from shoal.images.pull import Journal
from shoal.images.stored import read_record, write_record
from shoal.images.workers import Cancelled, run_all

MIB = 2**20


def test_run_all_runs_everything() -> None:
    done: list[int] = []
    lock = threading.Lock()

    def task(i: int) -> None:
        with lock:
            done.append(i)

    run_all([lambda i=i: task(i) for i in range(20)], 4, threading.Event())
    assert sorted(done) == list(range(20))


def test_run_all_stops_at_the_first_failure() -> None:
    stop = threading.Event()
    started: list[int] = []

    def failing() -> None:
        raise ValueError("boom")

    def polite(i: int) -> None:
        started.append(i)
        if not stop.wait(5):
            raise AssertionError("stop was never set")
        raise Cancelled()

    tasks = [failing, *(lambda i=i: polite(i) for i in range(3))]
    with pytest.raises(ValueError, match="boom"):
        run_all(tasks, 2, stop)
    assert stop.is_set()
    with pytest.raises(ValueError, match="parallel"):
        run_all([failing], 0, threading.Event())


def test_progress_reports_every_change() -> None:
    seen: list[tuple[int, int]] = []
    progress = Progress(100, lambda d, t: seen.append((d, t)), done=10)
    progress.advance(30)
    progress.advance(0)
    progress.advance(-5)  # a download that had to start over
    assert seen == [(10, 100), (40, 100), (35, 100)]


def test_journal_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    path.write_text("start disk-0\ndone disk-0\nstart disk-1048576\ndo")
    journal = Journal(path)
    assert journal.done == {"disk-0"}
    assert journal.started == {"disk-0", "disk-1048576"}
    journal.start("kernel")
    journal.finish("kernel")
    journal.close()
    assert Journal(path).done == {"disk-0", "kernel"}


def test_record_round_trip_and_incomplete_dirs(tmp_path: Path) -> None:
    (tmp_path / "disk.raw").write_bytes(b"x")
    meta = Metadata(boot="kernel", cmdline="quiet")
    write_record(
        tmp_path,
        digest="sha256:" + "1" * 64,
        reference="r.example/vm:v1",
        source="shoal",
        metadata=meta,
        disk="disk.raw",
        disk_format="raw",
        virtual_size=1,
        kernel="kernel",
    )
    with pytest.raises(ImageFormatError, match="kernel is missing"):
        read_record(tmp_path)
    (tmp_path / "kernel").write_bytes(b"k")
    image = read_record(tmp_path)
    assert image.metadata == meta and image.kernel == tmp_path / "kernel"
    with pytest.raises(ImageFormatError, match="not a complete image"):
        read_record(tmp_path / "elsewhere")


def test_cache_ignores_partials_and_junk(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    (tmp_path / "images" / ("a" * 64)).mkdir()  # no record: not an image
    (tmp_path / "images" / ("b" * 64 + ".partial")).mkdir()
    assert cache.list() == []
    assert cache.get("sha256:" + "a" * 64) is None
    assert [p.name for p in cache.partials()] == ["b" * 64 + ".partial"]


def test_evicted_between_lookup_and_pin_is_looked_up_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ImageCache(tmp_path)
    digest = "sha256:" + "c" * 64
    path = tmp_path / "images" / digest.removeprefix("sha256:")
    path.mkdir()
    (path / "disk.raw").write_bytes(b"d")
    write_record(
        path,
        digest=digest,
        reference="r.example/vm:v1",
        source="shoal",
        metadata=Metadata(),
        disk="disk.raw",
        disk_format="raw",
        virtual_size=1,
    )
    real_pin, pins = cache.pin, []

    def pin_after_an_eviction(d: str) -> None:
        if not pins:
            cache.remove(d)  # another thread evicts it just before the pin
        pins.append(d)
        real_pin(d)

    monkeypatch.setattr(cache, "pin", pin_after_an_eviction)
    with pytest.raises(Exception, match="not in the cache"):
        cache.ensure(digest, pin=True)
    assert not cache.is_pinned(digest)


@pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img is not installed")
def test_qemu_img_helpers(tmp_path: Path) -> None:
    raw, qcow2 = tmp_path / "base.raw", tmp_path / "base.qcow2"
    write_disk(raw, 4 * MIB, [(0, 4096)])
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    assert qemuimg.detect_format(raw) == "raw"
    assert qemuimg.detect_format(qcow2) == "qcow2"
    assert qemuimg.qcow2_virtual_size(qcow2) == 4 * MIB
    assert qemuimg.qcow2_virtual_size(raw) is None
    back = tmp_path / "back.raw"
    qemuimg.convert_to_raw(qcow2, back, "qcow2")
    assert back.read_bytes() == raw.read_bytes()
    overlay = tmp_path / "vm.qcow2"
    qemuimg.create_overlay(raw, overlay, "raw")
    info = qemuimg.info(overlay)
    assert info["format"] == "qcow2" and info["backing-filename"] == str(raw.resolve())
    assert info["virtual-size"] == 4 * MIB
    with pytest.raises(qemuimg.QemuImgError, match="overlay"):
        qemuimg.create_overlay(tmp_path / "missing.raw", tmp_path / "x.qcow2", "raw")
