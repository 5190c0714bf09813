"""Every way ``trajreg run``/``analyze`` can fail ends in one line on stderr and a
meaningful exit status, with nothing half-written: impossible output paths, binary
configs, bad options, a full disk, a second run to an existing --out. (SIGINT and
SIGTERM, a --out appearing during a run, an injected full disk while recording and
internal errors have their regression tests in tests/regressions/.)

A subprocess where the real process matters (a real full file system); ``cli.main``
in process, with a fault injected below it, where that is enough."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny
from trajreg import cli

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


def test_read_only_out_parent(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = os.geteuid() == 0  # root writes into any directory: a read-only mount
    if mounted:
        if not _can_mount():
            pytest.skip("root, and no read-only tmpfs can be mounted here")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(ro)],
                       check=True)
    else:
        ro.chmod(0o555)
    try:
        assert cli.main(["run", str(_config(tmp_path)), "--out", str(ro / "r")]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert re.fullmatch(rf"trajreg: error: cannot create run directory {ro / 'r'}: "
                            r"(Read-only file system|Permission denied)", line), line
        assert list(ro.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(ro)], check=True)


def test_binary_config_is_one_line_exit_2(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(bytes(range(256)) * 8)
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    assert re.fullmatch(r"trajreg: error: .*c\.yaml: not a text file .*\n",
                        capsys.readouterr().err)
    _nothing_left(tmp_path, "c.yaml")


@pytest.mark.parametrize("value", ["-inf", "-1", "x"])  # inf, nan: tests/regressions
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
