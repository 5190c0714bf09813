"""The suite's own set-up: ``make test`` runs two pytest-xdist workers."""

import os


def test_a_worker_computes_on_one_thread():
    """tests/conftest.py limits each xdist worker to one thread before torch loads, so
    two workers on two cores do not oversubscribe them."""
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("OMP_NUM_THREADS") == "1":
        assert torch.get_num_threads() == 1
