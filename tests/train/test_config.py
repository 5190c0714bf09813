import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny
from trajreg.errors import ConfigError
from trajreg.train.config import ModelConfig, RunConfig, load_config, parse_yaml, read_yaml

ROOT = Path(__file__).resolve().parents[2]


def test_demo_config_loads_and_resolves_momentum():
    cfg = load_config(ROOT / "configs" / "digits_mlp.yaml")
    assert cfg.model.norm == "batch" and cfg.optim.lr == 0.05
    assert load_config(tiny(optim={"name": "momentum"})).optim.momentum == 0.9
    assert load_config(tiny()).optim.momentum == 0.0


@pytest.mark.parametrize("change, key", [
    ({"optim": {"lr": -0.1}}, "optim.lr"),
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"data": {"batch_size": 0}}, "data.batch_size"),
    ({"data": {"batch_size": 2.5}}, "data.batch_size"),
    ({"data": {"name": "imagenet"}}, "data.name"),
    ({"model": {"name": "transformer"}}, "model.name"),
    ({"model": {"activation": "swish"}}, "model.activation"),
    ({"model": {"widht": 3}}, "model.widht"),
    ({"record": {"mode": "tape"}}, "record.mode"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"optimizer": {"name": "sgd"}}, "optimizer"),
    ({"seed": -1}, "seed"),
    ({"model": 3}, "model"),
])
def test_bad_values_name_the_key(change, key):
    with pytest.raises(ConfigError) as err:
        load_config(tiny(**change))
    assert str(err.value).startswith(f"{key}:")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


# ----------------------------------------------------------------------------- registries

def test_allowed_values_are_derived_from_the_registries():
    from trajreg.train import config, data, models, optim

    assert config.ACTIVATIONS == tuple(models.ACTIVATION_LAYERS)
    assert config.NORMS == tuple(models.NORM_LAYERS) and config.NORMS[0] == "none"
    assert config.INITS == tuple(models.INIT_SCHEMES)
    assert config.OPTIMIZERS == tuple(optim.OPTIMIZERS)
    assert config.SCHEDULES == tuple(optim.SCHEDULES)
    assert config.DATASET_NAMES == tuple(data.DATASETS)
    assert config.MODEL_NAMES == tuple(models.MODELS)


def test_the_registries_do_not_import_the_config():
    """No cycle: outside ``if TYPE_CHECKING:``, nothing in train/ but the package's
    __init__ imports trajreg.train.config (config imports the registries)."""
    import ast

    for path in sorted((ROOT / "trajreg" / "train").glob("*.py")):
        if path.name in ("config.py", "__init__.py"):
            continue
        tree = ast.parse(path.read_text())
        guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and ast.unparse(node.test) == "TYPE_CHECKING" for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom | ast.Import) and id(node) not in guarded:
                names = [node.module] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names]
                assert "trajreg.train.config" not in names, f"{path.name}:{node.lineno}"


# ----------------------------------------------------------------------------- YAML


def _write(tmp_path: Path, text: str | bytes, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_yaml_1_2_scalars(tmp_path):
    text = ("a: off\nb: on\nc: yes\nd: no\ne: y\nf: n\ng: 1e-3\nh: 1E5\ni: .5\nj: -2e-4\n"
            "k: true\nl: False\nm: 010\nn: 0x10\no: 0o10\np: ~\nq: 2024-01-01\nr: .inf\n"
            "s: 3\nt: 1.5\nu: null\n")
    raw = read_yaml(_write(tmp_path, text))
    assert raw == {"a": "off", "b": "on", "c": "yes", "d": "no", "e": "y", "f": "n",
                   "g": 1e-3, "h": 1e5, "i": 0.5, "j": -2e-4, "k": True, "l": False,
                   "m": 10, "n": 16, "o": 8, "p": None, "q": "2024-01-01",
                   "r": float("inf"), "s": 3, "t": 1.5, "u": None}
    assert type(raw["s"]) is int and type(raw["g"]) is float
    assert parse_yaml("x: .nan\n")["x"] != parse_yaml("x: .nan\n")["x"]  # nan


def test_documented_record_off_and_exponent_lr_load(tmp_path):
    cfg = load_config(_write(tmp_path, (ROOT / "configs" / "digits_mlp.yaml").read_text()
                             .replace("mode: store", "mode: off")
                             .replace("lr: 0.05", "lr: 5e-2")))
    assert cfg.record.mode == "off" and cfg.optim.lr == 0.05


@pytest.mark.parametrize("text, pattern", [
    ("", r"config is empty"),
    ("# only a comment\n\n# and another\n", r"config is empty"),
    ("---\n", r"config is empty"),
    ("- data\n- model\n", r"top level of a config must be a mapping .* got a list"),
    ("just words\n", r"top level of a config must be a mapping .* got a string"),
    ("seed: 0\nseed: 1\n", r"line 2: duplicate key 'seed' \(first given on line 1\)"),
    ("optim:\n  lr: 0.1\n  name: sgd\n  lr: 0.2\n",
     r"line 4: duplicate key 'lr' \(first given on line 2\)"),
    ("data: {name: digits, name: mnist}\n", r"line 1: duplicate key 'name'"),
    ("seed: [1, 2\n", r"not valid YAML: .* at line 2, column 1"),
    ("seed: 0\n--- \nseed: 1\n", r"not valid YAML: expected a single document"),
    ("a: !!python/object:os.system x\n", r"not valid YAML: could not determine a constructor"),
    ("seed: 0\x00\n", r"not a text file \(character #x0000 at position 7\)"),
])
def test_bad_yaml_is_one_line_config_error(tmp_path, text, pattern):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as err:
        read_yaml(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))


def test_binary_and_unreadable_files(tmp_path):
    path = _write(tmp_path, bytes(range(256)) * 4, "model.pt")
    with pytest.raises(ConfigError, match=r"not a text file \(byte 0x80 at offset 128"):
        load_config(path)
    with pytest.raises(ConfigError, match=r": is a directory, not a config file$"):
        load_config(tmp_path)  # a directory (issue 20: was "config file not found")
    with pytest.raises(ConfigError, match=r"^study file not found"):
        read_yaml(tmp_path / "absent.yaml", "study")
    with pytest.raises(ConfigError, match=r"study is empty"):
        read_yaml(_write(tmp_path, "", "study.yaml"), "study")


def test_merge_keys_may_override_without_being_duplicates(tmp_path):
    raw = read_yaml(_write(tmp_path, "base: &b {lr: 0.1, name: sgd}\noptim:\n  <<: *b\n"
                                     "  lr: 0.2\n"))
    assert raw["optim"] == {"lr": 0.2, "name": "sgd"}


def test_every_shipped_yaml_loads():
    """Every YAML file in the repository still reads; run configs validate."""
    paths = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("demo-out",
                                                                          "node_modules")]
        paths += [Path(folder) / f for f in files if f.endswith((".yaml", ".yml"))]
    assert len(paths) >= 3
    for path in paths:
        raw = read_yaml(path)
        if path.parent.name == "configs":
            load_config(path)
        assert isinstance(raw, dict)


# ----------------------------------------------------------------------------- sections

@pytest.mark.parametrize("missing", ["data", "model", "optim"])
def test_missing_sections_are_refused(tmp_path, missing):
    raw = tiny()
    del raw[missing]
    with pytest.raises(ConfigError, match=rf"^{missing}: missing section "
                                          r"\(required: data, model, optim\)$"):
        load_config(raw)
    path = _write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=rf"^{missing}: missing section"):
        load_config(path)
    cfg = load_config(raw, require_sections=False)  # partial mappings, on request
    assert getattr(cfg, missing).name == getattr(RunConfig(), missing).name


def test_optional_sections_and_partial_mappings():
    raw = {key: value for key, value in tiny().items() if key in ("data", "model", "optim")}
    cfg = load_config(raw)
    assert cfg.train.epochs == 30 and cfg.record.mode == "store"
    cfg = load_config({"analysis": {"tau": 0.1}}, require_sections=False)
    assert cfg.analysis.tau == 0.1 and cfg.model.width == 64


# ----------------------------------------------------------------------------- new keys

def test_width_unset_resolves_to_the_family_default():
    for name, width in [("mlp", 64), ("cnn", 16), ("resnet", 1.0), ("vgg", 1.0),
                        ("alexnet", 1.0), ("unet", 1.0)]:
        assert load_config(tiny(model={"name": name, "width": None})).model.width == width
    assert load_config(tiny(model={"name": "resnet", "width": 0.5})).model.width == 0.5
    assert ModelConfig(name="resnet").width is None  # unset until load_config resolves it


@pytest.mark.parametrize("change, pattern", [
    ({"model": {"depth": 100_000}}, r"^model\.depth: must be <= 1000, got 100000$"),
    ({"model": {"width": 0}}, r"^model\.width: must be > 0"),
    ({"model": {"width": 12.5}}, r"^model\.width: the mlp's hidden units must be a whole"),
    ({"train": {"threads": 0}}, r"^train\.threads: must be > 0"),
    ({"train": {"threads": 1.5}}, r"^train\.threads: must be an integer"),
    ({"train": {"max_memory_gb": -1}}, r"^train\.max_memory_gb: must be > 0"),
    ({"data": {"name": "mnist1d", "resize": 16}}, r"^data\.resize: mnist1d holds 1-D signals"),
    ({"optim": {"name": "adagrad", "momentum": 0.5}}, r"^optim\.momentum: adagrad takes no "
                                                      r"momentum$"),
    ({"optim": {"name": "adamw", "momentum": 0.5}}, r"\(set optim\.betas\)$"),
])
def test_new_and_registry_checks(change, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(tiny(**change))


def test_train_threads_and_memory_cap_keys():
    cfg = load_config(tiny(train={"threads": 2, "max_memory_gb": 1.5}))
    assert cfg.train.threads == 2 and cfg.train.max_memory_gb == 1.5
    assert load_config(tiny()).train.threads is None
    assert load_config(tiny(optim={"name": "nesterov"})).optim.momentum == 0.9
    assert load_config(tiny(optim={"name": "adam"})).optim.momentum == 0.0


# ----------------------------------------------------------------------------- serialization

def test_the_transformer_keys_leave_the_other_nets_configs_and_run_ids_unchanged():
    """The model section of an mlp config serialises as before gpt and vit existed (the
    dict its run id hashes); a transformer's config holds every key, and both round-trip."""
    cfg = load_config(tiny(model={"name": "mlp", "depth": 3, "width": 64, "norm": "none"}))
    assert cfg.to_dict()["model"] == {"name": "mlp", "variant": None, "depth": 3, "width": 64,
                                      "activation": "relu", "norm": "none", "skip": True,
                                      "dropout": 0.0, "init": "default"}
    gpt = load_config(tiny(model={"name": "gpt", "depth": 6, "width": 64, "norm": "layer",
                                  "heads": 2}))
    assert gpt.to_dict()["model"] == {**cfg.to_dict()["model"], "name": "gpt", "depth": 6,
                                      "norm": "layer", "heads": 2, "block_size": 64,
                                      "norm_position": "pre", "qk_norm": False,
                                      "patch_size": 4, "tie": True}
    odd = load_config(tiny(model={"name": "mlp", "heads": 3}))  # set: kept, though ignored
    assert odd.to_dict()["model"]["heads"] == 3 and "tie" not in odd.to_dict()["model"]
    for c in (cfg, gpt, odd):
        assert load_config(c.to_dict()).to_dict() == c.to_dict()


# ------------------------------------------- train.grad_clip, train.accumulate, new keys

# A config written before train.grad_clip, train.accumulate, optim.warmup_steps and
# optim.decay_exclude existed, its run id computed by that code (commit fc4c99d)
OLD_CONFIG = {"seed": 0, "data": {"name": "digits", "batch_size": 64, "subset": 512},
              "model": {"name": "mlp", "depth": 3, "width": 32, "norm": "batch"},
              "optim": {"name": "adamw", "lr": 0.001, "weight_decay": 0.01,
                        "schedule": "warmup_cosine"},
              "train": {"epochs": 3}, "record": {"mode": "store"}}
OLD_RUN_ID = "85987fdd9dcc"


def test_new_keys_leave_an_old_configs_dict_and_run_id_unchanged():
    from trajreg.study.spec import run_id

    d = load_config(OLD_CONFIG).to_dict()
    assert set(d["train"]) == {"epochs", "device", "threads", "max_memory_gb"}
    assert set(d["optim"]) == {"name", "lr", "momentum", "weight_decay", "betas", "schedule",
                               "step_epochs", "decay", "warmup_epochs"}
    assert run_id(d) == OLD_RUN_ID
    given = {**OLD_CONFIG, "train": {"epochs": 3, "grad_clip": 1.0, "accumulate": 2},
             "optim": {**OLD_CONFIG["optim"], "schedule": "cosine", "warmup_steps": 5,
                       "decay_exclude": ["norm", "bias"]}}
    d = load_config(given).to_dict()
    assert d["train"]["grad_clip"] == 1.0 and d["train"]["accumulate"] == 2
    assert d["optim"]["warmup_steps"] == 5 and d["optim"]["decay_exclude"] == ["norm", "bias"]
    assert load_config(d).to_dict() == d  # round trip, as a run directory reads it back
    explicit = {**OLD_CONFIG, "train": {"epochs": 3, "grad_clip": None, "accumulate": 1},
                "optim": {**OLD_CONFIG["optim"], "warmup_steps": 0, "decay_exclude": []}}
    assert run_id(load_config(explicit).to_dict()) == OLD_RUN_ID  # the defaults, spelled out


@pytest.mark.parametrize("change, message", [
    ({"train": {"grad_clip": 0.0}}, "train.grad_clip: must be > 0"),
    ({"train": {"grad_clip": -1}}, "train.grad_clip: must be > 0"),
    ({"train": {"grad_clip": "1"}}, "train.grad_clip: must be a number"),
    ({"train": {"grad_clip": 1e39}}, "train.grad_clip: 1e+39 overflows float32"),
    ({"train": {"accumulate": 0}}, "train.accumulate: must be > 0"),
    ({"train": {"accumulate": 2.0}}, "train.accumulate: must be an integer"),
    ({"train": {"accumulate": 3}}, "data.batch_size: 64 is not divisible by train.accumulate 3"),
    ({"train": {"accumulate": 4, "distributed": {"nproc": 32}}},
     "data.batch_size: 64 is not divisible by train.distributed.nproc 32 times "
     "train.accumulate 4"),
])
def test_bad_grad_clip_and_accumulate(change, message):
    with pytest.raises(ConfigError) as err:
        load_config(tiny(**change))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_accumulate_dividing_the_batch_loads():
    cfg = load_config(tiny(train={"accumulate": 4, "grad_clip": 0.5,
                                  "distributed": {"nproc": 2}}))
    assert cfg.train.accumulate == 4 and cfg.train.grad_clip == 0.5
