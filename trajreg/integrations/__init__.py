"""Integrations: measure runs trained by other code with one added line.

    session.py       the framework-free core (RegularitySession): what is recorded,
                     what is exact, and the run directory it writes
    lightning.py     PyTorch Lightning: RegularityCallback (pip install trajreg[lightning])
    huggingface.py   Hugging Face Trainer: RegularityCallback (trajreg[huggingface])

The core package imports none of the frameworks; import the module you need.
"""

from trajreg.integrations.session import RegularitySession

__all__ = ["RegularitySession"]
