"""The trainer's named steps, each alone: the plan of a run, the epoch's batches, the eval/save
policy, the step bookkeeping, resume validation and the output folder rules."""
import json
import os

import pytest

from bertfast.finetune import trainer
from bertfast.finetune.checkpoints import POINTER, checkpoints_dir, has_checkpoint
from bertfast.finetune.trainer import FinetuneConfig, FinetuneError


def cfg(**kw):
    base = dict(task="classify", model="m", train="t", output="o", batch_size=8, epochs=2, warmup_ratio=0.1)
    base.update(kw)
    return FinetuneConfig(**base)


def test_schedule_counts_whole_steps_and_fractional_epochs():
    plan = trainer._schedule(100, cfg(batch_size=8, gradient_accumulation=3, epochs=2.5), world_size=2)
    assert plan.global_batch == 16 and plan.step_size == 48
    assert plan.steps_per_epoch == 3  # ceil(100 / 48)
    assert plan.epoch_steps == (3, 3, 2)  # half an epoch: round(1.5) = 2 steps
    assert plan.total_steps == 8 and plan.warmup_steps == 0  # int(0.1 * 8)
    tiny = trainer._schedule(5, cfg(batch_size=8, epochs=0.01), world_size=1)
    assert tiny.epoch_steps == (1,) and tiny.steps_per_epoch == 1  # never an epoch of no steps
    assert trainer._schedule(1000, cfg(epochs=1), 1).warmup_steps == 12  # int(0.1 * 125)


def test_linear_schedule_warms_up_then_decays_to_zero():
    factor = trainer._linear_schedule(total_steps=10, warmup_steps=4)
    assert [factor(s) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert factor(4) == 1.0 and factor(7) == pytest.approx(0.5) and factor(10) == 0.0 and factor(12) == 0.0


@pytest.mark.parametrize("batch_size, accumulation, world_size", [(8, 2, 1), (4, 2, 2), (2, 1, 8)])
def test_epoch_order_does_not_depend_on_how_a_step_is_computed(batch_size, accumulation, world_size):
    """Accumulation and DDP split a step differently, never change which examples it holds."""
    lengths = [(7 * i) % 50 + 3 for i in range(70)]
    reference = trainer._schedule(70, cfg(batch_size=16), 1)
    plan = trainer._schedule(70, cfg(batch_size=batch_size, gradient_accumulation=accumulation), world_size)
    assert plan.step_size == 16 and plan.epoch_steps == reference.epoch_steps
    for epoch in range(2):
        want = trainer._epoch_groups(reference, lengths, seed=3, epoch=epoch)
        got = trainer._epoch_groups(plan, lengths, seed=3, epoch=epoch)
        assert [sum(step, []) for step in got] == [sum(step, []) for step in want]
        assert all(len(batch) <= plan.global_batch for step in got for batch in step)
        assert sum(len(step) != accumulation for step in got) <= 1  # the short step, wherever shuffled
    first, second = (trainer._epoch_groups(plan, lengths, 3, e) for e in (0, 1))
    assert sorted(sum(sum(first, []), [])) == list(range(70)) and first != second


def test_a_resumed_epoch_must_give_the_same_batches():
    state = {"step_in_epoch": 0}
    trainer._check_order(state, [[[0, 1]], [[2, 3]]])
    digest = state["order_digest"]
    state["step_in_epoch"] = 1
    trainer._check_order(state, [[[0, 1]], [[2, 3]]])  # the same order: fine
    with pytest.raises(FinetuneError, match="no longer gives the same batches"):
        trainer._check_order(state, [[[1, 0]], [[2, 3]]])
    state = {"step_in_epoch": 0, "order_digest": digest}
    trainer._check_order(state, [[[3, 2]]])  # a new epoch starts with a new order
    assert state["order_digest"] != digest


@pytest.mark.parametrize("eval_every, save_every, step, end_of_epoch, has_eval, expected", [
    (0, 0, 3, False, True, (False, False)),
    (0, 0, 3, True, True, (True, True)),     # epoch end: evaluate and save
    (0, 0, 3, True, False, (False, True)),   # no eval data: still save at the epoch end
    (2, 0, 4, False, True, (True, True)),    # every evaluation is saved
    (2, 0, 4, False, False, (False, False)),
    (2, 3, 3, False, True, (False, True)),
    (2, 3, 5, False, True, (False, False)),
])
def test_eval_and_save_policy(eval_every, save_every, step, end_of_epoch, has_eval, expected):
    assert trainer._due(cfg(eval_every=eval_every, save_every=save_every), step, end_of_epoch, has_eval) == expected


def test_advance_counts_the_step_and_rolls_over_the_epoch():
    state = trainer._fresh_state()
    assert not trainer._advance(state, loss_sum=6.0, tokens=100, n_items=4, steps_in_epoch=2)
    assert state["loss_ema"] == 1.5 and state["global_step"] == 1 and state["tokens"] == 100
    assert trainer._advance(state, loss_sum=2.0, tokens=50, n_items=4, steps_in_epoch=2)
    assert state["loss_ema"] == pytest.approx(0.9 * 1.5 + 0.1 * 0.5)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"], state["tokens"]) == (1, 0, 2, 150)


def test_resume_refuses_other_determining_settings(tmp_path):
    run_args = {**{k: None for k in trainer.DETERMINING}, "lr": 1e-3, "seed": 7, "world_size": 1, "eval_every": 5}
    (tmp_path / trainer.RUN_ARGS).write_text(json.dumps(run_args))
    trainer._check_same_run(str(tmp_path), dict(run_args, eval_every=9))  # not determining: allowed
    with pytest.raises(FinetuneError, match=r"other settings for lr, world_size \(lr=0.001, world_size=1\)"):
        trainer._check_same_run(str(tmp_path), dict(run_args, lr=2e-3, world_size=2))


def test_output_folder_rules(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    (out / "sub").mkdir()
    (out / "sub" / "f").write_text("y")
    with pytest.raises(FinetuneError, match="is not empty"):
        trainer._prepare_output(cfg(output=str(out)))
    assert trainer._prepare_output(cfg(output=str(out), overwrite=True)) is False
    assert os.listdir(out) == []  # --overwrite emptied it, kept the folder
    assert trainer._prepare_output(cfg(output=str(tmp_path / "new"))) is True
    with pytest.raises(FinetuneError, match="nothing to resume"):
        trainer._prepare_output(cfg(output=str(out), resume=True))
    os.makedirs(checkpoints_dir(str(out)))
    (out / "checkpoints" / POINTER).write_text(json.dumps({"latest": None, "best": None, "finished": True}))
    assert has_checkpoint(str(out))
    with pytest.raises(FinetuneError, match="already finished"):
        trainer._prepare_output(cfg(output=str(out), resume=True))
    (out / "checkpoints" / POINTER).write_text(json.dumps({"latest": "step-00000002", "best": None}))
    with pytest.raises(ValueError, match="corrupt: its 'latest' names no checkpoint folder"):
        trainer._prepare_output(cfg(output=str(out), resume=True))
    (out / "checkpoints" / "step-00000002").mkdir()
    assert trainer._prepare_output(cfg(output=str(out), resume=True)) is False


def test_a_failed_start_leaves_nothing_behind(tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    (made / "train_log.txt").write_text("x")
    trainer._remove_failed_start(str(made), created=True)
    assert not made.exists()
    given = tmp_path / "given"
    (given / "checkpoints").mkdir(parents=True)
    (given / "train_args.json").write_text("{}")
    trainer._remove_failed_start(str(given), created=False)
    assert given.is_dir() and os.listdir(given) == []  # the user's folder stays, emptied
