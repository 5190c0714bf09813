"""How much memory a run may use on this machine: the cap that ``size.check_run_size`` and
``data.load_data`` hold a run to before they allocate anything.

The cap is ``MEMORY_FRACTION`` (75%) of the memory that holds the tensors: the host's
physical RAM for ``cpu`` (and for the data set, which always stays in host memory), the
GPU's memory for ``cuda[:N]``. ``train.max_memory_gb`` replaces it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

MEMORY_FRACTION = 0.75
GB = 1e9


def host_memory_bytes() -> int | None:
    """The machine's physical RAM in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def device_memory_bytes(device: str) -> int | None:
    """The memory of ``device`` in bytes: the host's RAM for cpu, the GPU's for cuda[:N];
    None when it cannot be told (no such GPU: ``loop.require_device`` reports that)."""
    if not str(device).startswith("cuda"):
        return host_memory_bytes()
    if not torch.cuda.is_available():
        return None
    index = torch.device(device).index
    try:
        return int(torch.cuda.get_device_properties(0 if index is None else index).total_memory)
    except (AssertionError, RuntimeError):  # an index past the last GPU
        return None


@dataclass(frozen=True)
class MemoryCap:
    """A memory cap in bytes (inf: none known) and how to say where it came from."""

    bytes: float
    about: str

    def allows(self, needed: float) -> bool:
        return needed <= self.bytes


def memory_cap(device: str = "cpu", max_memory_gb: float | None = None) -> MemoryCap:
    """The cap on ``device``'s memory: ``max_memory_gb`` when given, else
    ``MEMORY_FRACTION`` of the device's memory (no cap when that is unknown)."""
    if max_memory_gb is not None:
        return MemoryCap(max_memory_gb * GB, f"train.max_memory_gb = {max_memory_gb:g} GB")
    total = device_memory_bytes(device)
    if total is None:
        return MemoryCap(float("inf"), "no cap (the machine's memory is unknown)")
    where = "this machine's RAM" if not str(device).startswith("cuda") else f"{device}'s memory"
    return MemoryCap(MEMORY_FRACTION * total,
                     f"the cap of {fmt_bytes(MEMORY_FRACTION * total)} "
                     f"({MEMORY_FRACTION:.0%} of {where}, {fmt_bytes(total)})")


def fmt_bytes(n: float) -> str:
    """Bytes for a message: ``'41.2 GB'``, ``'512 MB'``, ``'2.2 TB'``.

    >>> fmt_bytes(41.2e9), fmt_bytes(5.12e8), fmt_bytes(2.2e12), fmt_bytes(1500)
    ('41.2 GB', '512 MB', '2.2 TB', '0.0015 MB')
    """
    if n >= 1e12:
        return f"{n / 1e12:.1f} TB"
    if n >= 1e9:
        return f"{n / GB:.1f} GB"
    return f"{n / 1e6:.3g} MB"
