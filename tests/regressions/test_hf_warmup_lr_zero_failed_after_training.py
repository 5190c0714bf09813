"""Hugging Face's warmups start at a learning rate of 0 (``warmup_steps > 0``: step 0
has lr 0). The callback recorded that step and ``finish`` failed only after the whole
training, with a ValueError traceback from the principle's ``lrs must be > 0`` and no
run directory. Now the step is refused before it is taken: a one-line UserError that
says why and how to warm up from above 0, with no partial run directory left behind."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers",
                                   reason="the huggingface extra is not installed")

from tests.integrations.hf_fixtures import Tokens, tiny_gpt2  # noqa: E402
from trajreg.errors import UserError  # noqa: E402
from trajreg.integrations.huggingface import RegularityCallback  # noqa: E402


def test_warmup_from_zero_is_refused_before_the_step(tmp_path, one_thread):
    out = tmp_path / "run"
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=16, max_steps=4,
        warmup_steps=2, learning_rate=5e-3, save_strategy="no", report_to=[],
        use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    model = tiny_gpt2()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                                   callbacks=[RegularityCallback(out, figures=False)])
    with pytest.raises(UserError, match=r"optimizer step 0 has learning rate 0\.0 .*warmup"):
        trainer.train()
    assert trainer.state.global_step == 0  # refused before the first step was taken
    assert all((p == q).all() for p, q in zip(model.parameters(), before, strict=True))
    assert not out.exists() and not list(tmp_path.glob("*partial*"))
    assert not model._forward_hooks and not model._forward_pre_hooks  # hooks removed
