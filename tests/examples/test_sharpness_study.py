"""examples/sharpness-study.yaml, the curvature study the README quotes: a valid study
of 18 runs that record curvature, compared along model.norm."""

from __future__ import annotations

from pathlib import Path

from trajreg.study import load_study

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sharpness-study.yaml"


def test_the_sharpness_study_loads_with_curvature_on_every_run():
    study = load_study(EXAMPLE)
    assert len(study.runs) == 18
    assert all(spec.config["record"]["curvature"]["rate"] == 0.05 for spec in study.runs)
    assert list(study.blocks[0].compare) == ["model.norm"]
