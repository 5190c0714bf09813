"""The Lightning and Hugging Face callbacks took no ``mode``: runs they recorded were always
store mode (every x_t on disk), though issue 12's sample and sketch modes were meant for
them. Both now pass ``mode`` and ``interpolation`` on to their session, by name or as an
instance (the real fits in either mode: tests/integrations)."""

from __future__ import annotations

import pytest

from trajreg.errors import UserError
from trajreg.record.modes.sample import SampleMode

FRAMEWORKS = {"lightning": "lightning.pytorch", "huggingface": "transformers"}


@pytest.mark.parametrize("name", sorted(FRAMEWORKS))
def test_callbacks_pass_the_record_mode_to_their_session(tmp_path, name):
    pytest.importorskip(FRAMEWORKS[name])
    import importlib

    callback = importlib.import_module(f"trajreg.integrations.{name}").RegularityCallback
    assert callback(tmp_path / "a").session.mode.name == "store"  # the default
    cb = callback(tmp_path / "b", mode="sketch", interpolation=False)
    assert cb.session.mode.name == "sketch" and cb.session.interpolation is False
    mode = SampleMode(rate=0.25, seed=3)
    assert callback(tmp_path / "c", mode=mode).session.mode is mode
    with pytest.raises(UserError, match="replay"):
        callback(tmp_path / "d", mode="replay")
