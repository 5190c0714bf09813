"""Every way ``trajreg run``/``analyze`` can fail ends in one line on stderr and a
meaningful exit status, with nothing half-written: impossible output paths, binary
configs, bad options, a full disk, SIGINT/SIGTERM, two runs to one --out, bugs.

Subprocesses where the real process matters (signals, a real full file system);
``cli.main`` in process, with a fault injected below it, where that is enough."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny
from trajreg import cli
from trajreg.run import rundir

SMALL = tiny(data={"subset": 256}, model={"depth": 2, "width": 8, "norm": "none"},
             train={"epochs": 1})
PROGRESS = re.compile(r"trajreg: .* \.\.\.")


def _config(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "c.yaml"
    cfg = {**SMALL, **{k: {**SMALL.get(k, {}), **v} for k, v in sections.items()}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args, cwd, **kw):
    return subprocess.Popen([sys.executable, "-m", "trajreg.cli", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _one_error_line(stderr: str) -> str:
    """The error line: the last line, the only one that is not a progress line."""
    lines = stderr.splitlines()
    assert lines and all(PROGRESS.fullmatch(x) for x in lines[:-1]), stderr
    assert not PROGRESS.fullmatch(lines[-1]) and "Traceback" not in stderr, stderr
    return lines[-1]


def _nothing_left(parent: Path, *keep: str) -> None:
    assert sorted(p.name for p in parent.iterdir()) == sorted(keep)


# ------------------------------------------------------------------ input and output paths

@pytest.mark.parametrize("out, message", [
    ("/proc/trajreg-out", "cannot create run directory /proc/trajreg-out: "),
    ("{tmp}/file/sub/r", "cannot create run directory {tmp}/file/sub/r: {tmp}/file is not a "
                         "directory"),
])
def test_impossible_out_is_one_line_exit_2(tmp_path, capsys, out, message):
    (tmp_path / "file").write_text("")
    out = out.format(tmp=tmp_path)
    assert cli.main(["run", str(_config(tmp_path)), "--out", out]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(
        "trajreg: error: " + message.format(tmp=tmp_path))
    _nothing_left(tmp_path, "c.yaml", "file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_out_parent(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert cli.main(["run", str(_config(tmp_path)), "--out", str(ro / "r")]) == 2
    assert "Permission denied" in _one_error_line(capsys.readouterr().err)


def test_binary_config_is_one_line_exit_2(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(bytes(range(256)) * 8)
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    assert re.fullmatch(r"trajreg: error: .*c\.yaml: not a text file .*\n",
                        capsys.readouterr().err)
    _nothing_left(tmp_path, "c.yaml")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-1", "x"])
def test_analyze_bad_delta_is_an_argparse_line(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as info:
        cli.main(["analyze", str(tmp_path), f"--delta={value}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("trajreg analyze: error: argument --delta: ")


def test_usage_errors_are_one_line(capsys):
    for argv in ([], ["nope"], ["run"], ["analyze", "r", "--window", "5:2"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and len(err.splitlines()) == 1, (argv, err)


# ------------------------------------------------------------------ a full disk

def _enospc(*_args, **_kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_recording_is_one_line_and_leaves_nothing(tmp_path, capsys,
                                                                  monkeypatch):
    # the trajectory writer's block write is the lowest write of a run
    from trajreg.record.store import TrajectoryWriter

    monkeypatch.setattr(TrajectoryWriter, "_write", staticmethod(_enospc))
    assert cli.main(["run", str(_config(tmp_path)), "--out", str(tmp_path / "r"), "-q"]) == 2
    assert capsys.readouterr().err == ("trajreg: error: No space left on device "
                                       "(nothing was written)\n")
    _nothing_left(tmp_path, "c.yaml")


def _can_mount() -> bool:
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return False
    probe = Path(f"/tmp/trajreg-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    except OSError:
        return False
    finally:
        probe.rmdir()


@pytest.fixture
def small_fs(tmp_path):
    """A real 96 KiB tmpfs: a run's files do not fit."""
    if not _can_mount():
        pytest.skip("cannot mount a tmpfs here (needs root on Linux); the injected "
                    "ENOSPC test covers the same path")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.slow
def test_disk_full_on_a_real_small_file_system(tmp_path, small_fs):
    config = _config(tmp_path, model={"width": 64})
    proc = _cli("run", config, "--out", small_fs / "r", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert re.fullmatch(r"trajreg: error: No space left on device(: \S+)? "
                        r"\(nothing was written\)", _one_error_line(err)), err
    _nothing_left(small_fs)


def test_disk_full_during_analyze_leaves_the_run_unchanged(tmp_path, capsys, monkeypatch):
    config = _config(tmp_path)
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r"), "-q"]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    import trajreg.run.figures

    monkeypatch.setattr(trajreg.run.figures, "save_png", _enospc)
    capsys.readouterr()
    assert cli.main(["analyze", str(tmp_path / "r"), "--eps", "0.1", "-q"]) == 2
    assert capsys.readouterr().err == ("trajreg: error: No space left on device "
                                       "(the run directory is unchanged)\n")
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()} == before
    _nothing_left(tmp_path, "c.yaml", "r")


# ------------------------------------------------------------------ two runs, one --out

def test_second_run_to_an_existing_out_fails_before_loading_data(tmp_path, capsys,
                                                                 monkeypatch):
    (tmp_path / "r").mkdir()
    import trajreg.run.runner

    def no_data(*_a, **_k):
        raise AssertionError("data loaded although --out exists")

    monkeypatch.setattr(trajreg.run.runner, "load_data", no_data)
    assert cli.main(["run", str(_config(tmp_path)), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == f"trajreg: error: output directory already exists: " \
                                      f"{tmp_path / 'r'}\n"


def test_out_appearing_during_the_run_is_not_replaced(tmp_path, capsys, monkeypatch):
    # another process creates --out while this run trains: the final rename refuses
    out = tmp_path / "r"
    real = rundir.write_final_state

    def and_another_run(run_dir, model):
        out.mkdir()
        (out / "theirs").write_text("kept")
        return real(run_dir, model)

    monkeypatch.setattr(rundir, "write_final_state", and_another_run)
    assert cli.main(["run", str(_config(tmp_path)), "--out", str(out), "-q"]) == 2
    assert capsys.readouterr().err == (
        f"trajreg: error: output directory {out} appeared while this run was being written "
        "(another trajreg run to the same --out?); this run was discarded\n")
    assert [p.name for p in out.iterdir()] == ["theirs"]
    _nothing_left(tmp_path, "c.yaml", "r")


# ------------------------------------------------------------------ signals

@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_run_cleans_up_and_says_interrupted(tmp_path, signum, status):
    config = _config(tmp_path, data={"batch_size": 8}, train={"epochs": 500})
    proc = _cli("run", config, "--out", tmp_path / "r", cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".r.partial-*/trajectory/x-0000.npy")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    time.sleep(0.5)  # training
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert _one_error_line(err) == "trajreg: interrupted"
    _nothing_left(tmp_path, "c.yaml")


# ------------------------------------------------------------------ bugs

def test_internal_error_is_one_line_exit_1_and_debug_shows_the_traceback(tmp_path, capsys,
                                                                         monkeypatch):
    import trajreg.run.runner

    def boom(*_a, **_k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(trajreg.run.runner, "analyze", boom)
    assert cli.main(["analyze", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "trajreg: internal error: ZeroDivisionError: boom (please report it; rerun with "
        "--debug for the traceback)\n")
    for argv in (["--debug", "analyze", str(tmp_path)], ["analyze", str(tmp_path), "--debug"]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):")
        assert err.splitlines()[-1].startswith("trajreg: internal error: ZeroDivisionError")
