"""An unexpected exception in a command printed a Python traceback; it must be one line
naming the exception, exit 1, with the traceback only under --debug."""

from __future__ import annotations

from trajreg import cli


def test_unexpected_exception_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
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
