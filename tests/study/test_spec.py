"""Study files: validation, grid expansion, run keys."""

from __future__ import annotations

import copy
import itertools

import pytest

from trajreg.errors import ConfigError
from trajreg.study.spec import label, load_study, run_id, uses_kappa
from trajreg.train.config import load_config

BASE = {"data": {"name": "digits", "batch_size": 64},
        "model": {"name": "mlp", "depth": 2, "width": 8},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 1}, "record": {"mode": "store"}}


def study(**over):
    raw = {"base": copy.deepcopy(BASE), "grid": {"model.norm": ["none", "batch"],
                                                 "model.activation": ["relu", "identity"]},
           "seeds": [0, 1, 2]}
    raw.update(over)
    return raw


def test_grid_expands_to_every_point_and_seed():
    s = load_study(study())
    assert len(s.runs) == 2 * 2 * 3
    seen = {(r.config["model"]["norm"], r.config["model"]["activation"], r.seed) for r in s.runs}
    assert seen == set(itertools.product(["none", "batch"], ["relu", "identity"], [0, 1, 2]))
    for r in s.runs:  # everything else from the base
        assert r.config["model"]["depth"] == 2 and r.config["data"]["name"] == "digits"


def test_run_id_is_the_hash_of_the_resolved_config():
    s = load_study(study())
    for r in s.runs:
        assert r.run_id == run_id(load_config(r.config).to_dict())
    assert len({r.run_id for r in s.runs}) == len(s.runs)
    # the same run written differently (defaults spelled out, other key order) has the same key
    spelled = study(base={**copy.deepcopy(BASE), "optim": {"lr": 0.05, "name": "sgd"}})
    assert [r.run_id for r in load_study(spelled).runs] == [r.run_id for r in s.runs]


def test_run_id_changes_with_any_setting():
    a = load_study(study()).runs[0]
    other = copy.deepcopy(BASE)
    other["optim"] = {"lr": 0.051}
    b = load_study(study(base=other)).runs[0]
    assert a.run_id != b.run_id


def test_blocks_share_identical_runs():
    raw = {"base": copy.deepcopy(BASE), "seeds": [0, 1],
           "blocks": [{"name": "act", "grid": {"model.activation": ["relu", "tanh"]}},
                      {"name": "bn", "grid": {"model.norm": ["none", "batch"]}}]}
    s = load_study(raw)
    # relu/none is in both blocks: 2 + 2 - 1 configs, times 2 seeds
    assert len(s.runs) == 3 * 2
    shared = [r for r in s.runs if r.blocks == ("act", "bn")]
    assert len(shared) == 2
    assert {b.name: len(b.members) for b in s.blocks} == {"act": 4, "bn": 4}


def test_mapping_values_merge_into_a_section():
    raw = study(grid={"optim": [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.001}]})
    s = load_study(raw)
    optims = {(r.config["optim"]["name"], r.config["optim"]["lr"]) for r in s.runs}
    assert optims == {("sgd", 0.1), ("adam", 0.001)}
    assert s.blocks[0].compare == {"optim": ("without", {"name": "sgd", "lr": 0.1})}


def test_default_and_given_comparison_directions():
    s = load_study(study())
    assert s.blocks[0].compare == {"model.norm": ("without", "none"),
                                   "model.activation": ("with", "relu")}
    s = load_study(study(compare={"model.norm": {"with": "batch"}}))
    assert s.blocks[0].compare["model.norm"] == ("with", "batch")
    assert uses_kappa("optim.name") and not uses_kappa("model.norm")
    assert label({"name": "adam"}) == "name=adam"


@pytest.mark.parametrize("over, message", [
    ({"grid": {"model.norm": []}}, "grid.model.norm: must be a non-empty list"),
    ({"grid": {"model.norm": ["none", "none"]}}, "repeated value"),
    ({"grid": {"model.norm": ["none", "bogus"]}}, "model.norm: unknown value 'bogus'"),
    ({"grid": {"model.colour": ["red"]}}, "model.colour: unknown key"),
    ({"seeds": []}, "seeds: must be a non-empty list"),
    ({"seeds": [0, 0]}, "repeated seed"),
    ({"seeds": [-1]}, "seeds: must be a non-empty list of integers >= 0"),
    ({"grid": {"seed": [0, 1]}}, "give seeds under 'seeds'"),
    ({"bogus": 1}, "bogus: unknown study key"),
    ({"compare": {"model.depth": {"with": 2}}}, "compare.model.depth: not an axis"),
    ({"compare": {"model.norm": {"with": "layer"}}}, "'layer' is not one of the axis values"),
    ({"compare": {"model.norm": {"best": "batch"}}}, "must be {with: VALUE}"),
    ({"blocks": [{"grid": {}}]}, "give either a top-level grid or blocks"),
])
def test_bad_study_files_name_the_key(over, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("(", r"\(")):
        load_study(study(**over))


def test_bad_block_files():
    with pytest.raises(ConfigError, match="blocks\\[0\\].name: every block needs a name"):
        load_study({"base": BASE, "blocks": [{"grid": {}}]})
    with pytest.raises(ConfigError, match="repeated block name"):
        load_study({"base": BASE, "blocks": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ConfigError, match="block a: optim.lr: must be > 0"):
        load_study({"base": BASE, "blocks": [{"name": "a", "grid": {"optim.lr": [-1.0]}}]})
    with pytest.raises(ConfigError, match="study file not found"):
        load_study("/nonexistent/study.yaml")


def test_presets_expand_and_can_decide():
    from trajreg.study import preset_path, tables
    from trajreg.study.stats import smallest_p

    for preset in ("quick", "standard"):
        s = load_study(preset_path(preset))
        assert all(len(b.seeds) >= 6 for b in s.blocks)
        techniques = {axis for b in s.blocks for axis in b.compare}
        assert {"model.activation", "model.norm", "model.skip", "optim"} <= techniques
        archs = {(r.config["model"]["name"], axis) for b in s.blocks for axis in b.compare
                 for r in s.runs if b.name in r.blocks}
        wanted = [("mlp", "model.activation"), ("alexnet", "model.activation"),
                  ("alexnet", "model.norm"), ("resnet", "model.skip"), ("unet", "model.skip")]
        if preset == "standard":
            wanted += [("vgg", "model.activation"), ("vgg", "model.norm"), ("vgg", "optim")]
        for name, axis in wanted:
            assert (name, axis) in archs
        # every comparison can be decided when all its seeds agree: the smallest sign-test
        # p clears Holm's first threshold alpha / m
        m = len(tables.comparisons(s, tables.runs_table(s, {})))
        seeds = min(len(b.seeds) for b in s.blocks)
        assert smallest_p(seeds) < s.report.alpha / m, (preset, seeds, m)


@pytest.mark.slow
def test_every_quick_preset_cell_builds_and_takes_a_step(one_thread):
    """Each distinct network x data x optimizer of the quick preset trains one real step
    (catches, e.g., an image too small for a network's poolings before a study runs)."""
    from trajreg.study import preset_path
    from trajreg.train.data import load_data
    from trajreg.train.loop import build, train

    study = load_study(preset_path("quick"))
    seen, cache = set(), {}
    for spec in study.runs:
        cfg = load_config(spec.config)
        key = (repr(cfg.data), repr(cfg.model), repr(cfg.optim))
        if key in seen:
            continue
        seen.add(key)
        data = cache.setdefault(repr(cfg.data), load_data(cfg.data))
        model, opt, sched = build(cfg, data)
        log = train(cfg, data, model, opt, sched, max_steps=1, eval_full=False,
                    progress=False)
        assert log.steps == 1 and log.diverged_step is None, key


def test_standard_preset_networks_fit_cifar_shapes():
    """The standard preset's networks build for CIFAR-10's 3x32x32 images (the data itself
    is read from data.root, absent here)."""
    from trajreg.study import preset_path
    from trajreg.train.models import build_model

    study = load_study(preset_path("standard"))
    shapes = {"cifar10": ((3, 32, 32), 10), "shapes": ((3, 32, 32), 4),
              "mnist1d": ((40,), 10)}
    seen = set()
    for spec in study.runs:
        cfg = load_config(spec.config)
        key = (cfg.data.name, repr(cfg.model))
        if key in seen:
            continue
        seen.add(key)
        shape, classes = shapes[cfg.data.name]
        build_model(cfg.model, shape, classes)


def test_every_run_sets_its_threads():
    assert {r.config["train"]["threads"] for r in load_study(study()).runs} == {1}
    own = study(base={**copy.deepcopy(BASE), "train": {"epochs": 1, "threads": 2}})
    assert {r.config["train"]["threads"] for r in load_study(own).runs} == {2}
    # the thread count is part of the run's key
    assert load_study(own).runs[0].run_id != load_study(study()).runs[0].run_id


def test_report_options():
    s = load_study(study(report={"eps": 0.0, "alpha": 0.01, "min_effect": 0.1,
                                 "train_margin": 0.2}))
    assert (s.report.eps, s.report.alpha, s.report.min_effect, s.report.train_margin) == (
        0.0, 0.01, 0.1, 0.2)
    assert s.report.eps_key == "0.0"
    assert load_study(study()).report.eps_key == "0.05"
