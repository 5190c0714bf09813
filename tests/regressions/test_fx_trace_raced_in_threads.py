"""Two runs started in threads of one process traced their models for the size check at
the same time; torch.fx patches ``nn.Module.__call__`` process-wide while it traces, so
the traces broke each other (``leaf_output_shapes`` gave None, 17 of 90 calls, and the
fallback meta forward could fail with ``NameError: module is not installed as a
submodule``). The traces now take turns."""

from __future__ import annotations

import threading

from trajreg.train.models import ModelConfig, build_model
from trajreg.train.size import leaf_output_shapes


def test_concurrent_traces_all_succeed():
    failures: list[str] = []

    def trace_many() -> None:
        cfg = ModelConfig(name="gpt", depth=2, width=32, heads=2, block_size=16, norm="layer")
        cfg.validate()
        model = build_model(cfg, (16,), 50)
        for _ in range(30):
            try:
                if leaf_output_shapes(model, (4, 16)) is None:
                    failures.append("no graph")
            except Exception as exc:  # noqa: BLE001 - counted below
                failures.append(repr(exc))

    threads = [threading.Thread(target=trace_many) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
