"""Issue 20: an alias bomb (each level a list of ten aliases to the level before) as the
value of ``analysis.tau`` was expanded into the "one-line" error message (358 KB at
10^5 items; MemoryError at 10^9). The loader refuses a document whose aliases expand it
beyond MAX_YAML_VALUES nodes before constructing it, or a recursive anchor, and error
messages quote at most QUOTE_CHARS characters of a value."""

from __future__ import annotations

import time

import pytest

from trajreg.errors import ConfigError
from trajreg.train.config import MAX_YAML_VALUES, QUOTE_CHARS, load_config, parse_yaml

HEAD = "data: {name: digits}\nmodel: {name: mlp}\noptim: {name: sgd}\n"


@pytest.mark.parametrize("levels", [5, 9])  # 10^5 and 10^9 items
def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path, levels):
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    text = HEAD + "bombs:\n" + "".join(f"  {line}\n" for line in lines)
    text += f"analysis: {{tau: *l{levels - 1}}}\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.perf_counter() - start < 2.0
    assert str(info.value) == (f"{path}: refused: its aliases (*name) expand it to more "
                               f"than {MAX_YAML_VALUES} values (an alias bomb?)")


def test_a_recursive_anchor_is_refused():
    with pytest.raises(ConfigError, match=r"refused: an alias refers to a node that "
                                          r"contains it"):
        parse_yaml("a: &a [1, *a]\n")


def test_aliases_and_merge_keys_still_work():
    raw = parse_yaml("base: &b {name: mlp, depth: 2}\nmodel: {<<: *b, width: 8}\n"
                     "eps: &e [0.0, 0.05]\nother: *e\n")
    assert raw["model"] == {"name": "mlp", "depth": 2, "width": 8} and raw["other"] == [0, 0.05]


def test_error_messages_quote_a_bounded_value():
    nested = [[list(range(100))] * 100] * 100  # shared: 10^6 numbers, never expanded
    with pytest.raises(ConfigError) as info:
        load_config({**parse_yaml(HEAD), "analysis": {"tau": nested}})
    message = str(info.value)
    assert message.startswith("analysis.tau: must be a number, got [[[0, 1, 2")
    assert len(message) <= len("analysis.tau: must be a number, got ") + QUOTE_CHARS
    with pytest.raises(ConfigError) as info:
        load_config({**parse_yaml(HEAD), "model": {"name": "x" * 10_000}})
    assert len(str(info.value)) < 300 and str(info.value).count("x") < 100
