"""A tiny Hugging Face Trainer run with RegularityCallback on 2 CPU processes, for
test_distributed_callbacks.py: ``python -m torch.distributed.run --standalone
--nproc_per_node 2 dist_hf.py OUT STATUS_DIR [--fail-rank R]``.

Every rank writes ``STATUS_DIR/rank-N.pid`` first and ``STATUS_DIR/rank-N`` when it ends
(``ok`` or ``error: ...``), and on success ``rank-N.losses.json``: the loss its model
returned for each micro-batch.
``--fail-rank R`` makes rank R raise at the start of its 3rd optimizer step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("status")
    p.add_argument("--fail-rank", type=int, default=-1)
    args = p.parse_args()
    rank = int(os.environ["RANK"])
    status = Path(args.status)
    (status / f"rank-{rank}.pid").write_text(str(os.getpid()))

    import torch

    torch.set_num_threads(1)
    import transformers
    from hf_fixtures import Tokens, tiny_gpt2  # beside this script

    from trajreg.integrations.huggingface import RegularityCallback

    class Fail(transformers.TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            if rank == args.fail_rank and state.global_step == 2:
                raise RuntimeError(f"injected failure on rank {rank}")

    losses: list[float] = []

    def keep_loss(module, inputs, output):
        if module.training and torch.is_grad_enabled():
            losses.append(float(output.loss.detach()))

    model = tiny_gpt2()
    model.register_forward_hook(keep_loss)
    targs = transformers.TrainingArguments(
        output_dir=str(status / "hf"), per_device_train_batch_size=8,
        gradient_accumulation_steps=2, num_train_epochs=2, learning_rate=5e-3,
        weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="linear", logging_strategy="no",
        save_strategy="no", report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
        disable_tqdm=True, ddp_backend="gloo")
    cb = RegularityCallback(args.out, figures=False, timeout=60)
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=Tokens(n=128),
                                   callbacks=[cb, Fail()])
    try:
        trainer.train()
    except BaseException as exc:  # noqa: BLE001 - the test reads how every rank ended
        (status / f"rank-{rank}").write_text(f"error: {type(exc).__name__}: {exc}\n")
        raise SystemExit(1) from exc
    (status / f"rank-{rank}.losses.json").write_text(json.dumps(losses))
    (status / f"rank-{rank}").write_text("ok\n")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
