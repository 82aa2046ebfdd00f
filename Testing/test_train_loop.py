"""The one training loop (pantheon.train.loop): resume, learning-rate schedule, damaged checkpoints,
bad stage names, time budget, early stopping. A two-weight linear regression keeps every run at
milliseconds, so the numbers can be checked exactly."""

import math
import os

import numpy as np
import pytest
import torch

from pantheon.errors import Cancelled, CheckpointError, InputError
from pantheon.train.loop import (
    EARLY_STOPPING,
    FINISHED,
    TIME_BUDGET,
    Schedule,
    TrainLoop,
    Validation,
    check_stage,
    read_checkpoint,
)

X = torch.from_numpy(np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32))
Y = X @ torch.tensor([[2.0], [-1.0]]) + 0.5


class Run:
    """A tiny model, its AdamW optimizer and a step function whose batch comes from the step number;
    ``lrs[step]`` is the learning rate that step used."""

    def __init__(self, init_seed=0, lr=0.1):
        torch.manual_seed(init_seed)
        self.model = torch.nn.Linear(2, 1)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01)
        self.lrs, self.done = {}, 0

    def step(self, step):
        self.lrs[step] = self.opt.param_groups[0]["lr"]
        self.done += 1
        idx = torch.from_numpy(np.random.default_rng([7, step]).integers(0, len(X), 8))
        return torch.nn.functional.mse_loss(self.model(X[idx]), Y[idx])

    def loop(self, steps, **kw):
        return TrainLoop(self.model, self.opt, steps, **kw)


def _weights(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ------------------------------------------------------------------------------------------ resume
def test_resume_after_interruption_continues_at_the_saved_step_with_the_same_lr(tmp_path):
    sched = Schedule(warmup_steps=3)
    whole = Run()
    res = whole.loop(10, checkpoint=tmp_path / "a" / "checkpoint.pt", checkpoint_every=3,
                     schedule=sched).run(whole.step)
    assert res.steps == 10 and res.stopped == FINISHED and len(res.history) == 10
    # hand-computed: warm-up 0.1 * (s + 1) / 3, then 0.1 * (1 + cos(pi (s - 3) / 7)) / 2
    assert [whole.lrs[s] for s in range(3)] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1], abs=1e-12)
    assert whole.lrs[3] == pytest.approx(0.1, abs=1e-12)
    assert whole.lrs[6] == pytest.approx(0.0611260467, abs=1e-9)  # 0.05 (1 + cos(3 pi / 7))
    assert whole.lrs[9] == pytest.approx(0.0049515566, abs=1e-9)  # 0.05 (1 + cos(6 pi / 7))

    ckpt = tmp_path / "b" / "checkpoint.pt"
    cut = Run()
    with pytest.raises(Cancelled):  # the user stops it during step 7; the last checkpoint is step 6's
        cut.loop(10, checkpoint=ckpt, checkpoint_every=3, schedule=sched, cancel=lambda: cut.done >= 7).run(cut.step)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 6 and saved["scheduler_state_dict"]["last_epoch"] == 6 and len(saved["history"]) == 6
    assert sorted(os.listdir(ckpt.parent)) == ["checkpoint.pt"]  # atomic writes leave no temporary file

    again = Run(init_seed=123)  # other initial weights: everything must come from the checkpoint
    logs = []
    loop = again.loop(10, checkpoint=ckpt, checkpoint_every=3, schedule=sched, resume_from=read_checkpoint(ckpt),
                      log=logs.append)
    assert loop.step == 6 and logs == ["Resuming training at step 6/10"]
    assert loop.lr == whole.lrs[6]  # the learning rate of step 6, before any step is taken
    res2 = loop.run(again.step)
    assert sorted(again.lrs) == [6, 7, 8, 9]
    assert [again.lrs[s] for s in range(6, 10)] == [whole.lrs[s] for s in range(6, 10)]
    np.testing.assert_allclose(res2.history, res.history, rtol=0, atol=1e-7)
    torch.testing.assert_close(_weights(again.model), _weights(whole.model), rtol=0, atol=1e-7)
    assert torch.load(ckpt, weights_only=True)["step"] == 10


def test_resume_with_more_steps_follows_the_new_schedule(tmp_path):
    """A finished 4-step run continued to 8 steps uses the 8-step cosine from step 4 on (as a run asked
    for 8 steps from the start would), not the 4-step one's end."""
    ckpt = tmp_path / "checkpoint.pt"
    first = Run(lr=1.0)
    first.loop(4, checkpoint=ckpt).run(first.step)
    assert [first.lrs[s] for s in range(4)] == pytest.approx([1.0, 0.8535533906, 0.5, 0.1464466094], abs=1e-9)
    more = Run(lr=1.0)
    more.loop(8, checkpoint=ckpt, resume_from=read_checkpoint(ckpt)).run(more.step)
    # (1 + cos(pi s / 8)) / 2 at s = 4..7
    assert [more.lrs[s] for s in range(4, 8)] == pytest.approx([0.5, 0.3086582838, 0.1464466094, 0.0380602337],
                                                               abs=1e-9)


# ------------------------------------------------------------------------------------------ schedule
def test_lr_warm_up_then_cosine_through_torch_lambda_lr():
    r = Run(lr=1.0)
    loop = r.loop(12, schedule=Schedule(warmup_steps=4))
    assert isinstance(loop.scheduler, torch.optim.lr_scheduler.LambdaLR)
    loop.run(r.step)
    lrs = [r.lrs[s] for s in range(12)]
    assert lrs[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0], abs=1e-12)
    # progress p = (s - 4) / 8: s 6 -> 1/4, s 8 -> 1/2, s 11 -> 7/8; factor (1 + cos(pi p)) / 2
    assert lrs[6] == pytest.approx(0.8535533906, abs=1e-9)
    assert lrs[8] == pytest.approx(0.5, abs=1e-12)
    assert lrs[11] == pytest.approx(0.0380602337, abs=1e-9)

    floor = Run(lr=1.0)
    floor.loop(12, schedule=Schedule(warmup_steps=4, min_factor=0.1)).run(floor.step)
    assert floor.lrs[8] == pytest.approx(0.5, abs=1e-12) and floor.lrs[11] == pytest.approx(0.1, abs=1e-12)

    flat = Run(lr=0.3)
    flat.loop(5, schedule=Schedule(decay="constant")).run(flat.step)
    assert list(flat.lrs.values()) == [0.3] * 5


def test_cosine_can_follow_the_time_budget():
    """follow_time: the decay follows the elapsed fraction of the budget when that is further along
    than the step count (1 s per step, 10 s budget, 100 steps: p = s / 10, not s / 100)."""
    now = [0.0]
    r = Run(lr=1.0)

    def step(s):
        loss = r.step(s)
        now[0] += 1.0
        return loss

    res = r.loop(100, schedule=Schedule(follow_time=True), time_budget_s=10, clock=lambda: now[0]).run(step)
    assert r.lrs[0] == 1.0
    assert r.lrs[5] == pytest.approx(0.5, abs=1e-12)  # (1 + cos(pi / 2)) / 2
    assert r.lrs[2] == pytest.approx(0.9045084972, abs=1e-9)  # (1 + cos(pi / 5)) / 2
    assert r.lrs[10] == pytest.approx(0.0, abs=1e-12)
    assert res.stopped == TIME_BUDGET and res.steps == 11


# ------------------------------------------------------------------------------------------ errors
def test_damaged_checkpoint_is_one_checkpoint_error_naming_the_file(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    r = Run()
    r.loop(2, checkpoint=ckpt).run(r.step)
    good = ckpt.read_bytes()
    for damage in (good[:200], b"not a checkpoint at all"):
        ckpt.write_bytes(damage)
        with pytest.raises(CheckpointError) as exc:
            read_checkpoint(ckpt)
        msg = str(exc.value)
        assert msg.startswith(f"Cannot resume from {ckpt}:") and msg.endswith("rerun with --restart to start afresh.")
        assert "\n" not in msg and msg.count(". ") == 0, msg  # one sentence
    ckpt.write_bytes(good)
    assert read_checkpoint(ckpt, resume=False) is None and read_checkpoint(tmp_path / "none.pt") is None
    # a checkpoint of another stage, or of another architecture, is not resumed either
    torch.save({**torch.load(ckpt, weights_only=True), "stage": "carseg"}, ckpt)
    with pytest.raises(CheckpointError, match=r"it holds a run with stage 'carseg', not 'ad'"):
        read_checkpoint(ckpt, expect={"stage": "ad"})
    other = torch.nn.Linear(3, 1)
    with pytest.raises(CheckpointError) as exc:
        TrainLoop(other, torch.optim.AdamW(other.parameters()), 4, checkpoint=ckpt, resume_from=read_checkpoint(ckpt))
    assert str(exc.value).startswith(f"Cannot resume from {ckpt}: {ckpt} does not match the Linear architecture: "
                                     "1 wrong-shaped: weight (1, 2) (model (1, 3))")


def test_bad_stage_is_an_input_error_in_every_trainer(tmp_path):
    from pantheon.train import mathena, neonet
    with pytest.raises(InputError, match=r"^Unknown NeoNet training stage 'gan': choose one of seg, vae, ldm, "
                                         r"controlnet, cls\.$"):
        neonet.train_stage("gan", [], tmp_path)
    with pytest.raises(InputError, match=r"^Unknown MATHENA training stage 'bogus': choose one of detector, "
                                         r"carseg, ad, dds\.$"):
        mathena.train_stage("bogus", [], tmp_path)
    assert check_stage("ad", ("carseg", "ad"), "X") == "ad"
    assert not (tmp_path / "gan").exists() and not (tmp_path / "bogus").exists()  # refused before any work


# ------------------------------------------------------------------------------------------ stopping
def test_time_budget_stops_the_loop_and_says_so(tmp_path):
    now = [0.0]
    r = Run()
    logs, bar = [], []

    def step(s):
        now[0] += 1.0  # each step takes one (fake) second
        return r.step(s)

    ckpt = tmp_path / "checkpoint.pt"
    res = r.loop(10, checkpoint=ckpt, checkpoint_every=100, time_budget_s=3.5, clock=lambda: now[0], log=logs.append,
                 progress=lambda f, m: bar.append(round(f, 3)), name="detector").run(step)
    assert res.stopped == TIME_BUDGET and res.stopped_early and res.steps == 4 and len(res.history) == 4
    assert res.seconds == 4.0
    assert "detector: time budget of 3.5 s reached at step 4/10; stopping" in logs
    assert bar == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert torch.load(ckpt, weights_only=True)["step"] == 4  # written although no checkpoint step was reached


def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.95])
    seen = {}
    r = Run()
    logs = []

    def evaluate(model):
        seen[loop.step] = _weights(model).clone()
        return {"score": next(scores)}

    ckpt = tmp_path / "checkpoint.pt"
    loop = r.loop(20, checkpoint=ckpt, log=logs.append,
                  validation=Validation(evaluate, every=2, score=lambda f: f["score"], patience=2))
    res = loop.run(r.step)
    # evaluations at steps 2 (0.5), 4 (0.7, best), 6 (0.6), 8 (0.65): two without gain -> stop at 8
    assert res.stopped == EARLY_STOPPING and res.steps == 8 and sorted(seen) == [2, 4, 6, 8]
    assert res.metrics["best_step"] == 4 and res.metrics["best"] == {"score": 0.7}
    assert res.metrics["validation"] == {"score": 0.65}
    torch.testing.assert_close(_weights(r.model), seen[4], rtol=0, atol=0)  # the best weights are kept
    assert "training: early stop at step 8: no validation gain for 2 evaluations" in logs
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 8 and saved["best_step"] == 4 and saved["best_bad"] == 2 and saved["best_score"] == [0.7]


def test_validation_without_a_score_only_logs():
    r = Run()
    logs = []
    res = r.loop(4, log=logs.append, validation=Validation(lambda m: {"psnr": 20.0}, every=2)).run(r.step)
    assert res.stopped == FINISHED and res.steps == 4 and "best" not in res.metrics
    assert [ln for ln in logs if "validation" in ln] == ["training step 2/4: validation psnr 20",
                                                        "training step 4/4: validation psnr 20"]


def test_tuple_scores_compare_in_order():
    """NeoNet's classifier keeps (AUC, -BCE): a tie in AUC is broken by the lower BCE."""
    figures = iter([{"AUC": 0.8, "BCE": 0.6}, {"AUC": 0.8, "BCE": 0.5}, {"AUC": 0.7, "BCE": 0.1}])
    r = Run()
    res = r.loop(3, validation=Validation(lambda m: next(figures), every=1,
                                          score=lambda f: (f["AUC"], -f["BCE"]))).run(r.step)
    assert res.metrics["best_step"] == 2 and res.metrics["best_score"] == [0.8, -0.5]
    assert not math.isnan(res.metrics["final_loss"])
