"""A study of checkpoint series: runs that already happened, measured from their
checkpoints (``trajreg checkpoints``) and compared by the study's report.

Six real runs save their checkpoints (``train.checkpoints``): batch norm or none,
three seeds each. A study file names their checkpoint folders as the series of a
block; ``trajreg study`` measures each into its run directory and compares them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import tiny
from trajreg.checkpoints import measure_checkpoints
from trajreg.cli import main
from trajreg.errors import ConfigError
from trajreg.run.runner import run
from trajreg.run.summary import read_summary
from trajreg.study import load_study, run_study, tables
from trajreg.train.config import load_config

NORMS, SEEDS = ("batch", "none"), (0, 1, 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder of six finished runs, ``<norm>-<seed>/`` each with its checkpoints/
    (steps 0, 8, 16, 24, 32) and config.yaml: 4 epochs, enough for every run to train."""
    root = tmp_path_factory.mktemp("series")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for norm in NORMS:
            for seed in SEEDS:
                cfg = tiny(seed=seed, model={"norm": norm}, optim={"lr": 0.1},
                           train={"epochs": 4, "checkpoints": True}, record={"mode": "off"})
                run(load_config(cfg), root / f"{norm}-{seed}", figures=False, progress=False)
    finally:
        torch.set_num_threads(before)
    return root


def entries(drop: tuple[str, int] | None = None) -> list[dict]:
    """One series a run, its paths relative to the study file's folder."""
    return [{"path": f"{norm}-{seed}/checkpoints", "seed": seed, "model.norm": norm,
             "measure": {"config": f"{norm}-{seed}/config.yaml"}}
            for norm in NORMS for seed in SEEDS if (norm, seed) != drop]


def study_file(folder: Path, series: list[dict], **block) -> Path:
    raw = {"name": "from-checkpoints",
           "blocks": [{"name": "bn", "note": "runs of the past", "measure": {"eps": [0.0, 0.05]},
                       "series": series, **block}]}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_study_compares_checkpoint_series_with_the_same_statistics(trained, tmp_path,
                                                                     capsys, monkeypatch,
                                                                     one_thread):
    path = study_file(trained, entries())
    out = tmp_path / "study"
    monkeypatch.chdir(tmp_path)  # the paths resolve against the study file's folder
    assert main(["study", str(path), "--out", str(out), "--executor", "serial"]) == 0
    assert "6 of 6 runs finished, 0 failed" in capsys.readouterr().out

    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 6 and (runs["status"] == "done").all() and runs["trained"].all()
    assert sorted(zip(runs["norm"], runs["seed"], strict=True)) == sorted(
        (n, s) for n in NORMS for s in SEEDS)
    assert set(runs["architecture"]) == {"mlp"} and set(runs["dataset"]) == {"digits"}
    assert set(runs["checkpoints"]) == {str(trained / f"{n}-{s}" / "checkpoints")
                                        for n in NORMS for s in SEEDS}
    assert runs["gamma_hat_0.05"].map(math.isfinite).all()
    assert runs["kappa_hat_0.05"].isna().all()

    # each run directory is what trajreg checkpoints writes for that series
    row = runs[(runs["norm"] == "none") & (runs["seed"] == 1)].iloc[0]
    summary = read_summary(out / row["run_dir"])
    assert summary.record_mode == "checkpoints" and summary.checkpoints is not None
    assert summary.checkpoints["steps"] == [0, 8, 16, 24, 32]
    _, alone = measure_checkpoints(trained / "none-1" / "checkpoints", tmp_path / "alone",
                                   config=trained / "none-1" / "config.yaml", figures=False,
                                   progress=False)
    assert alone.gamma_hat == summary.gamma_hat
    assert row["gamma_hat_0.05"] == pytest.approx(alone.gamma("0.05"), rel=1e-12)
    assert summary.full_loss == alone.full_loss

    tech = pd.read_csv(out / "techniques.csv")
    assert len(tech) == 1
    comp = tech.iloc[0]
    assert (comp["axis"], comp["with"], comp["without"]) == ("model.norm", "batch", "none")
    assert comp["metric"] == "gamma_hat_0.05" and comp["n_pairs"] == 3 and comp["n"] == 3
    by = runs.set_index("run_id")["gamma_hat_0.05"]
    diffs = [by[a] - by[b] for a, b in zip(comp["runs_with"].split(),
                                           comp["runs_without"].split(), strict=True)]
    assert comp["diff_median"] == pytest.approx(sorted(diffs)[1])
    assert (out / "report.html").read_text().count("checkpoint series") >= 2

    # the same study again (from elsewhere): the same run ids, nothing measured again
    monkeypatch.chdir(trained)
    again = run_study(load_study(path), out, executor="serial", progress=False, report=False)
    assert again.ran == [] and len(again.done) == 6
    # the report drawn from the study directory alone, the series' files gone
    before = (out / "runs.csv").read_bytes()
    (trained / "none-1" / "config.yaml").rename(trained / "none-1" / "config.moved")
    try:
        assert main(["report", str(out)]) == 0
    finally:
        (trained / "none-1" / "config.moved").rename(trained / "none-1" / "config.yaml")
    assert (out / "runs.csv").read_bytes() == before
    kept = yaml.safe_load((out / "study.yaml").read_text())["blocks"][0]["series"][0]
    assert kept["path"] == str(trained / "batch-0" / "checkpoints")


def test_series_compare_gamma_along_any_axis_and_show_free_labels(trained):
    """The epochwise gamma has no step size in it: an optimizer axis compares gamma_hat
    too; a free label gets its runs.csv column."""
    def relabelled(key: str, values: dict[str, object]) -> list[dict]:
        return [{**{k: v for k, v in e.items() if k != "model.norm"},
                 key: values[e["model.norm"]]} for e in absolute(trained)]

    study = load_study({"blocks": [
        {"name": "lr", "series": relabelled("optim.lr", {"batch": 0.1, "none": 0.05})},
        {"name": "label", "series": relabelled("technique", {"batch": "bn", "none": "no"}),
         "compare": {"technique": {"with": "bn"}}}]})
    runs = tables.runs_table(study, {})
    assert len(runs) == 12 and (runs["status"] == "pending").all()
    assert list(runs["technique"]) == [""] * 6 + ["bn"] * 3 + ["no"] * 3
    assert list(runs["lr"][:6]) == [0.1] * 3 + [0.05] * 3
    assert set(runs["architecture"]) == {"checkpoints"}  # until measured
    comps = tables.comparisons(study, runs)
    assert [(c.axis, c.metric) for c in comps] == [("optim.lr", "gamma_hat_0.05"),
                                                   ("technique", "gamma_hat_0.05")]
    assert comps[1].with_value == "bn" and comps[1].claim is None  # a stratum
    assert study.runs[0].config["optim"] == {"lr": 0.1}


def absolute(root: Path, drop: tuple[str, int] | None = None) -> list[dict]:
    """``entries`` with absolute paths, for study files kept elsewhere."""
    return [{**e, "path": str(root / e["path"]),
             "measure": {"config": str(root / e["measure"]["config"])}}
            for e in entries(drop)]


def without_measure(e: list[dict]) -> list[dict]:
    return [{k: v for k, v in x.items() if k != "measure"} for x in e]


@pytest.mark.parametrize("change, measure, message", [
    (lambda e, root: e[:-1], None, "no series for model.norm=none, seed 2; every combination"),
    (lambda e, root: [*e, e[0]], None, "model.norm=batch, seed 0 is given twice (series[0] "
                                       "and series[6])"),
    (lambda e, root: [{**e[0], "measure": {**e[0]["measure"], "colour": "red"}}, *e[1:]],
     None, "blocks[0].series[0].measure.colour: unknown measure key"),
    (lambda e, root: without_measure(e)[:2] + [{"path": str(root / "batch-9"), "seed": 2,
                                                "model.norm": "batch"}, *e[3:]],
     {"config": "batch-0/config.yaml"},
     "blocks[0].series[2].path: {root}/batch-9: no such file or directory"),
    (lambda e, root: without_measure(e), None, "blocks[0].measure: name the model and data"),
    (lambda e, root: [{**e[0], "technique": "x"}, *e[1:]], None, "differ from series[0]'s"),
])
def test_a_bad_series_block_is_one_line_before_anything_runs(trained, tmp_path, capsys,
                                                             change, measure, message):
    """(The block's measure, when given, is relative to the study file's folder.)"""
    block = {"measure": measure} if measure else {}
    path = study_file(trained if measure else tmp_path, change(absolute(trained), trained),
                      **block)
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(root=trained) in err, err
    assert not out.exists()


def test_report_eps_must_be_measured(trained):
    series = absolute(trained)
    with pytest.raises(ConfigError, match=r"report.eps: 0.1 is not among the measure.eps of "
                                          r"block main \(0, 0.05\)"):
        load_study({"series": series, "report": {"eps": 0.1}})
    study = load_study({"series": series, "measure": {"eps": 0.1}, "report": {"eps": 0.1}})
    assert study.runs[0].config["series"]["options"]["eps"] == [0.1]


def test_series_run_ids_do_not_depend_on_where_the_study_starts(trained, tmp_path,
                                                                monkeypatch):
    path = study_file(trained, entries())
    ids = [r.run_id for r in load_study(path).runs]
    monkeypatch.chdir(tmp_path)
    assert [r.run_id for r in load_study(path).runs] == ids
    raw = yaml.safe_load(path.read_text())
    assert [r.run_id for r in load_study(raw, root=trained).runs] == ids
    assert [r.run_id for r in load_study(study_file(tmp_path, absolute(trained))).runs] == ids
