"""No interruption loses a bundle: signals during the swap, SIGKILL leftovers, Ctrl-C after.

The folders here are made by hand where the test is about what a dead run leaves; one test
SIGKILLs a real convert.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeres.bundle import load_bundle, write_manifest
from edgeres.cli import main
from edgeres.errors import BundleWrittenInterrupt, UserError
from edgeres.signals import interrupt_status, signals_deferred
from edgeres.staging import _hold_lock, _release, staged_bundle, sweep_abandoned

FAST = ["--calib", "fmnist:train@32", "--eval", "fmnist:test@64"]
LONG_AGO = time.time() - 3600


def _left_behind(folder: Path, mtime: float = LONG_AGO) -> Path:
    """A folder as a dead run leaves it: some files, last written an hour ago."""
    (folder / "golden").mkdir(parents=True)
    (folder / "model.tflite").write_bytes(b"half")
    os.utime(folder, (mtime, mtime))
    return folder


def _bundle(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / "model.tflite").write_text(text)
    write_manifest(folder, {})
    return folder


def test_a_dead_runs_staging_folder_is_swept_by_the_next(tmp_path: Path) -> None:
    _left_behind(tmp_path / ".out.staging-dead1")
    _left_behind(tmp_path / ".out.rejected.old-dead2")
    _left_behind(tmp_path / ".outer.staging-other")  # another --out's: not ours
    lines = sweep_abandoned(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".outer.staging-other"]
    assert len(lines) == 2 and all("left by an interrupted run" in line for line in lines)


def test_a_bundle_moved_aside_by_a_run_that_died_is_put_back(tmp_path: Path) -> None:
    """SIGKILL between the two renames: OUT is gone and the old bundle sits in .OUT.old-*."""
    old = tmp_path / ".out.old-dead"
    old.mkdir()
    _bundle(old / "bundle", "previous")
    _left_behind(tmp_path / ".out.staging-dead")
    os.utime(old, (LONG_AGO, LONG_AGO))
    logged: list[str] = []
    with staged_bundle(tmp_path / "out", log=logged.append) as staging:
        assert (tmp_path / "out" / "model.tflite").read_text() == "previous"
        (staging.path / "model.tflite").write_text("new")
        write_manifest(staging.path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "model.tflite").read_text() == "new"
    assert any(line.startswith("restored") for line in logged)


def test_a_moved_aside_bundle_is_only_deleted_when_out_holds_one(tmp_path: Path) -> None:
    """SIGKILL after the swap but before the old copy was deleted: OUT is the newer one."""
    _bundle(tmp_path / "out", "newer")
    old = tmp_path / ".out.old-dead"
    old.mkdir()
    _bundle(old / "bundle", "older")
    os.utime(old, (LONG_AGO, LONG_AGO))
    sweep_abandoned(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "model.tflite").read_text() == "newer"


def test_a_live_runs_folders_and_young_ones_are_left_alone(tmp_path: Path) -> None:
    live = _left_behind(tmp_path / ".out.staging-live")
    young = _left_behind(tmp_path / ".out.staging-young", mtime=time.time())
    holder = subprocess.Popen(  # another process holds the lock, as a running convert does
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
         "os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print(flush=True); time.sleep(60)",
         str(live)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline()
        assert sweep_abandoned(tmp_path / "out") == []
        assert live.is_dir() and young.is_dir()
    finally:
        holder.kill()
        holder.wait()
    fd = _hold_lock(live)  # the kernel dropped the lock with the process
    assert fd is not None
    _release(fd)
    assert sweep_abandoned(tmp_path / "out") and not live.exists() and young.is_dir()


def _convert_while_staging(out: Path, stderr: int = subprocess.DEVNULL) -> subprocess.Popen:
    """A real convert to ``out``, returned once its staging folder exists (its check of 1000
    images takes seconds more, so it is still running)."""
    proc = subprocess.Popen([sys.executable, "-m", "edgeres.cli", "convert", "--no-bench",
                             "--calib", "fmnist:train@32", "--eval", "fmnist:test@1000",
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=stderr,
                            text=True)
    deadline = time.monotonic() + 240
    while not list(out.parent.glob(f".{out.name}.staging-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no staging folder appeared"
        time.sleep(0.05)
    assert proc.poll() is None, "the convert finished before it could be stopped"
    return proc


def test_sigterm_leaves_no_staging_folder(tmp_path: Path) -> None:
    """timeout / a CI cancel send SIGTERM: the staging folder goes as with Ctrl-C."""
    proc = _convert_while_staging(tmp_path / "b")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert not list(tmp_path.iterdir())


def test_a_second_signal_does_not_cut_the_cleanup_short(tmp_path: Path) -> None:
    """Ctrl-C then SIGTERM (or a double Ctrl-C) 2 ms apart: the first unwinds, the second is
    ignored, so no traceback and no staging folder."""
    proc = _convert_while_staging(tmp_path / "b", stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # about one run in ten ends killed by SIGINT (-2) instead of exiting 130; a shell reports
    # both as 130, and the cause (some interpreter or library path to the default action)
    # was not pinned down
    assert proc.returncode in (130, -signal.SIGINT) and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())


def test_sigkill_leftovers_are_swept_by_the_next_convert(tmp_path: Path, monkeypatch) -> None:
    proc = _convert_while_staging(tmp_path / "b")
    proc.kill()
    proc.wait()
    assert list(tmp_path.glob(".b.staging-*")), "SIGKILL runs no cleanup"
    monkeypatch.setattr("edgeres.staging.SWEEP_MIN_AGE_S", 0.0)
    assert main(["convert", *FAST, "--no-bench", "--out", str(tmp_path / "b")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    load_bundle(tmp_path / "b")


def test_signals_wait_until_the_swap_is_done(tmp_path: Path, monkeypatch) -> None:
    """SIGTERM between moving the old bundle aside and renaming the new one in: it lands after
    the rename, so OUT is never missing, and says the bundle is complete."""
    _bundle(tmp_path / "out", "old")

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    real_replace = os.replace

    def replace_with_a_signal(src, dst) -> None:  # noqa: ANN001
        os.kill(os.getpid(), signal.SIGTERM)
        real_replace(src, dst)

    try:
        with pytest.raises(BundleWrittenInterrupt) as info, \
                staged_bundle(tmp_path / "out") as staging:
            (staging.path / "model.tflite").write_text("new")
            write_manifest(staging.path, {})
            monkeypatch.setattr(os, "replace", replace_with_a_signal)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "model.tflite").read_text() == "new"


def test_ctrl_c_while_the_old_bundle_is_deleted_says_the_new_one_is_in_place(
        tmp_path: Path, monkeypatch) -> None:
    _bundle(tmp_path / "out", "old")
    real_rmtree = shutil.rmtree

    def rmtree_with_a_signal(path, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        if ".old-" in Path(path).name:
            os.kill(os.getpid(), signal.SIGINT)
        real_rmtree(path, *args, **kwargs)

    with pytest.raises(BundleWrittenInterrupt) as info, \
            staged_bundle(tmp_path / "out") as staging:
        (staging.path / "model.tflite").write_text("new")
        write_manifest(staging.path, {})
        monkeypatch.setattr(shutil, "rmtree", rmtree_with_a_signal)
    assert info.value.exit_code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "model.tflite").read_text() == "new"


def test_a_failed_rename_puts_the_old_bundle_back(tmp_path: Path, monkeypatch) -> None:
    _bundle(tmp_path / "out", "old")
    real_replace = os.replace

    def refuse_the_staged_one(src, dst) -> None:  # noqa: ANN001
        if ".staging-" in Path(src).name:
            raise PermissionError(13, "Permission denied", str(dst))
        real_replace(src, dst)

    with pytest.raises(PermissionError), staged_bundle(tmp_path / "out") as staging:
        (staging.path / "model.tflite").write_text("new")
        write_manifest(staging.path, {})
        monkeypatch.setattr(os, "replace", refuse_the_staged_one)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "model.tflite").read_text() == "old"


def test_a_bundle_another_run_wrote_meanwhile_is_kept(tmp_path: Path, monkeypatch) -> None:
    """Two converts to one --out: the one that renames second gets a one-line error, and the
    bundle it had moved aside goes (the other run's newer one is in place)."""
    _bundle(tmp_path / "out", "first")
    real_replace = os.replace

    def the_other_run_finishes_first(src, dst) -> None:  # noqa: ANN001
        if ".staging-" in Path(src).name and not Path(dst).exists():
            _bundle(Path(dst), "other")
        real_replace(src, dst)

    with pytest.raises(UserError, match="was written by another run while this one was "
                       "finishing"), staged_bundle(tmp_path / "out") as staging:
        (staging.path / "model.tflite").write_text("mine")
        write_manifest(staging.path, {})
        monkeypatch.setattr(os, "replace", the_other_run_finishes_first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "model.tflite").read_text() == "other"


def test_deferred_signals_arrive_once_it_ends() -> None:
    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert got == []
        time.sleep(0.05)
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_during_the_benchmark_says_the_bundle_is_complete(
        tmp_path: Path, monkeypatch, capsys) -> None:
    def interrupted(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise KeyboardInterrupt

    monkeypatch.setattr("edgeres.harness.local.bench_local", interrupted)
    assert main(["convert", *FAST, "--out", str(tmp_path / "b")]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress log
    assert err == (f"edgeres: interrupted after the bundle was written: {tmp_path / 'b'} is "
                   "complete and checked (what came after it, such as the benchmark, did not "
                   "finish)")
    load_bundle(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("writer", ["bytes", "npz", "checkpoint"])
def test_an_interrupted_file_write_keeps_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch, writer: str) -> None:
    """Every single-file writer (figures, profiles, calibration sets, QAT checkpoints) goes
    through paths.replaced_atomically: Ctrl-C at the rename leaves the old file alone."""
    import torch

    from edgeres.data.folders import save_npz
    from edgeres.paths import write_bytes_atomic
    from edgeres.quant.qat_train import save_checkpoint

    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    write = {"bytes": lambda: write_bytes_atomic(path, b"new"),
             "npz": lambda: save_npz(path, torch.zeros(1, 1, 2, 2)),
             "checkpoint": lambda: save_checkpoint(path, {"step": 1})}[writer]

    def interrupted(src, dst) -> None:  # noqa: ANN001
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write()
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert path.read_bytes() == b"old"
    monkeypatch.undo()
    write()
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"] and path.read_bytes() != b"old"


def test_an_interrupt_an_extension_module_wrapped_is_still_an_interrupt(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """A signal while a pybind11 module initialises (LiteRT's) surfaces as ImportError from
    SystemExit(143): the exit is 143 with the usual line, not a traceback and exit 1."""
    def import_interrupted(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise ImportError("initialization failed") from SystemExit(128 + signal.SIGTERM)

    monkeypatch.setattr("edgeres.harness.local.bench_local", import_interrupted)
    assert main(["convert", *FAST, "--out", str(tmp_path / "b")]) == 143
    assert "is complete and checked" in capsys.readouterr().err.strip().splitlines()[-1]
    assert interrupt_status(ImportError("x")) is None
    assert interrupt_status(RuntimeError("y").with_traceback(None)) is None


def test_importing_the_cli_does_not_load_torch() -> None:
    """The CLI installs its signal handlers before the heavy imports: a Ctrl-C in the first
    second of a command is then an interrupt, not a traceback from inside torch."""
    code = "import sys, edgeres.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_bench_refuses_an_absurd_run_count(capsys) -> None:
    assert main(["bench", "nowhere", "--runs", "99999999999"]) == 2
    assert capsys.readouterr().err.strip() == (
        "edgeres: error: --runs must be in [1, 100000], got 99999999999")
