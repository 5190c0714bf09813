"""The reference training stack: configs, offline data, models, optimizers, the loop."""

from trajreg.train.config import RunConfig, load_config

__all__ = ["RunConfig", "load_config"]
