"""A measure eps that is not a number (``eps: [a]``) raised float()'s bare ValueError
out of ``CheckpointOptions.from_dict``: a traceback from ``trajreg study`` instead of
one line naming the key."""

from __future__ import annotations

import pytest

from trajreg.checkpoints import CheckpointOptions
from trajreg.errors import ConfigError
from trajreg.study.spec import load_study


def test_from_dict():
    with pytest.raises(ConfigError, match="measure: could not convert string to float"):
        CheckpointOptions.from_dict({"eps": ["a"]})


def test_in_a_study_block():
    raw = {"series": [{"path": "ck", "measure": {"config": "run.yaml", "eps": ["a"]}}]}
    with pytest.raises(ConfigError, match=r"^series\[0\]\.measure: could not convert"):
        load_study(raw, check_files=False)
