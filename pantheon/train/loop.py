"""The one training loop of every Pantheon trainer: NEMESIS pretraining and its organ probe
(:mod:`pantheon.train.nemesis`), the MATHENA stages (:mod:`pantheon.train.mathena`) and the NeoNet
stages (:mod:`pantheon.train.neonet`).

A trainer builds its model and optimizer, hands them to :class:`TrainLoop` with a ``step_fn(step)``
that returns the loss of that step's batch, and writes its final weights in its own format from
the :class:`TrainResult`. The loop owns what the trainers used to repeat, each in its own way:

- resuming: :func:`read_checkpoint` reads ``checkpoint.pt`` (tensors and plain values only) and
  turns anything unreadable or belonging to another run into one :class:`CheckpointError`;
  the loop restores model, optimizer, LR scheduler, step, loss history and best validation state.
  Checkpoints are written with :func:`pantheon.io.atomic.atomic_path`, so a crash mid-write
  leaves the previous checkpoint, never half of a new one.
- the learning rate: :class:`Schedule` (linear warm-up, then cosine decay or constant) through
  ``torch.optim.lr_scheduler.LambdaLR``; its state is in every checkpoint.
- a time budget (``time_budget_s``), early stopping on a validation score (:class:`Validation`),
  progress and cancel through :class:`pantheon.progress.Reporter`.
- one error for a bad stage name (:func:`check_stage`, :class:`InputError`) and one result type.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ..errors import CheckpointError, InputError
from ..io.atomic import atomic_path
from ..models.checkpoints import check_state_dict, resume_error, torch_load_tensors
from ..progress import Reporter

#: Why a loop ended (:attr:`TrainResult.stopped`).
FINISHED, TIME_BUDGET, EARLY_STOPPING = "finished", "time_budget", "early_stopping"


@dataclass
class TrainResult:
    """What every trainer returns. ``weights``: the final weights file (None when the trainer keeps the
    model in memory); ``steps``: the step the run ended at (resumed steps included); ``stopped``:
    :data:`FINISHED`, :data:`TIME_BUDGET` or :data:`EARLY_STOPPING`; ``metrics``: ``final_loss``, ``lr``
    and, with validation, ``validation`` (the last figures), ``best`` and ``best_step``; ``history``:
    the loss of every step; ``seconds``: wall time of this run's loop."""

    weights: Optional[Path]
    steps: int
    metrics: Dict[str, Any] = field(default_factory=dict)
    stopped: str = FINISHED
    history: List[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def stopped_early(self) -> bool:
        return self.stopped != FINISHED


@dataclass(frozen=True)
class Schedule:
    """Learning-rate multiplier per step (of the base learning rate).

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps. Then ``decay="cosine"``:
    ``max(min_factor, (1 + cos(pi * p)) / 2)`` with ``p = (step - warmup_steps) / (steps - warmup_steps)``;
    ``decay="constant"``: 1. ``follow_time``: with a time budget ``p`` is the larger of that and the
    elapsed fraction of the budget, so a run its budget cuts short still ends at a low learning rate.
    """

    warmup_steps: int = 0
    decay: str = "cosine"
    min_factor: float = 0.0
    follow_time: bool = False

    def __post_init__(self):
        if self.decay not in ("cosine", "constant"):
            raise ValueError(f"Schedule decay must be 'cosine' or 'constant', got {self.decay!r}.")
        if self.warmup_steps < 0:
            raise ValueError(f"Schedule warm-up must be 0 or more steps, got {self.warmup_steps}.")

    def factor(self, step: int, steps: int, time_fraction: float = 0.0) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        p = max((step - self.warmup_steps) / max(1, steps - self.warmup_steps), time_fraction)
        return max(self.min_factor, 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def make_scheduler(optimizer: torch.optim.Optimizer, steps: int, schedule: Schedule = Schedule(),
                   time_fraction: Optional[Callable[[], float]] = None) -> torch.optim.lr_scheduler.LambdaLR:
    """torch's ``LambdaLR`` over :meth:`Schedule.factor`. A ``LambdaLR`` rather than
    ``SequentialLR(LinearLR, CosineAnnealingLR)``: its learning rate is a closed form of the step, so a
    resumed run (even one asked for more steps than the interrupted one) lands exactly on the schedule,
    and the floor and the time-following decay the trainers use fit in it."""
    tf = time_fraction or (lambda: 0.0)
    # a plain function, not a callable object: LambdaLR saves a callable object's attributes in its
    # state and would bring the interrupted run's step count back on resume
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule.factor(s, steps, tf()))


@dataclass
class Validation:
    """Validation during training. ``evaluate(model)`` -> figures (name: number), every ``every``
    steps and at the last step. With ``score(figures)`` (a number or a tuple compared in order; larger
    is better) the best step is tracked, ``keep_best`` puts its weights back at the end, and
    ``patience`` stops training after that many evaluations without improvement. Without ``score``
    the figures are only logged (no selection on them)."""

    evaluate: Callable[[torch.nn.Module], Mapping[str, float]]
    every: int = 50
    score: Optional[Callable[[Mapping[str, float]], Union[float, Sequence[float]]]] = None
    patience: Optional[int] = None
    keep_best: bool = True


def check_stage(stage: str, stages: Sequence[str], model_name: str) -> str:
    """``stage`` if it is one of ``stages``, else one :class:`InputError` sentence (exit status 2 on the
    command line)."""
    if stage not in stages:
        raise InputError(f"Unknown {model_name} training stage {stage!r}: choose one of {', '.join(stages)}.")
    return stage


def read_checkpoint(path, resume: bool = True, expect: Optional[Mapping[str, Any]] = None) -> Optional[dict]:
    """The checkpoint to resume from: None when not resuming or when ``path`` does not exist yet.

    Anything that cannot be resumed is one :class:`CheckpointError` naming the file and how to start
    afresh (:func:`~pantheon.models.checkpoints.resume_error`): a damaged file, or one whose values
    for the keys of ``expect`` (e.g. ``{"stage": "cls"}``) differ; a key the checkpoint lacks is not
    checked (checkpoints written before it was saved)."""
    path = Path(path)
    if not resume or not path.is_file():
        return None
    try:
        ckpt = torch_load_tensors(path)
        if not isinstance(ckpt, dict):
            raise CheckpointError(f"it holds a {type(ckpt).__name__}, not a training checkpoint")
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint must not be silently restarted over
        raise resume_error(path, exc) from None
    for key, want in (expect or {}).items():
        have = ckpt.get(key)
        if have is not None and have != want:
            raise resume_error(path, CheckpointError(f"it holds a run with {key} {have!r}, not {want!r}"))
    return ckpt


def _as_score(value) -> tuple:
    return tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else (float(value),)


class TrainLoop:
    """Steps ``model`` with ``optimizer`` from the resumed (or first) step to ``steps``.

    ``checkpoint``: where to write ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end;
    None: never). ``resume_from``: a checkpoint dict from :func:`read_checkpoint` (its model, optimizer,
    scheduler, step, history and best validation state are restored; the run's own settings -- learning
    rate, steps, schedule -- define the learning rate from there, the checkpoint only the position).
    ``extra_state``: plain values (or a function returning them) saved in every checkpoint beside the
    loop's own. ``grad_clip``: maximum gradient norm over the optimizer's parameters. ``name`` and
    ``loss_name`` word the log lines. ``clock``: seconds (for the time budget; tests pass a fake one).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, *,
                 checkpoint=None, resume_from: Optional[dict] = None, schedule: Schedule = Schedule(),
                 checkpoint_every: int = 50, time_budget_s: Optional[float] = None,
                 validation: Optional[Validation] = None, grad_clip: Optional[float] = None,
                 extra_state: Union[None, Mapping[str, Any], Callable[[], Mapping[str, Any]]] = None,
                 name: str = "training", loss_name: str = "loss", progress=None, cancel=None,
                 log: Optional[Callable[[str], None]] = None, clock: Callable[[], float] = time.perf_counter):
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}.")
        if validation is not None and validation.every < 1:
            raise ValueError(f"Validation every must be at least 1 step, got {validation.every}.")
        self.model, self.optimizer, self.steps = model, optimizer, int(steps)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.schedule, self.checkpoint_every = schedule, int(checkpoint_every)
        self.time_budget_s = None if time_budget_s is None else float(time_budget_s)
        self.validation, self.grad_clip, self.extra_state = validation, grad_clip, extra_state
        self.name, self.loss_name = name, loss_name
        self.progress, self.cancel = progress, cancel
        self.log = log or (lambda *_: None)
        self.clock = clock
        self._t0: Optional[float] = None
        self._saved_step: Optional[int] = None
        self.scheduler = make_scheduler(optimizer, self.steps, schedule, self._time_fraction)
        self._base_lrs = list(self.scheduler.base_lrs)  # this run's learning rates, before any restore
        self.step, self.history = 0, []
        self.best: Dict[str, Any] = {"score": None, "step": -1, "state": None, "bad": 0, "metrics": None}
        self.last_validation: Optional[Dict[str, float]] = None
        if resume_from is not None:
            self._restore(resume_from)

    # ------------------------------------------------------------------ state
    def _time_fraction(self) -> float:
        if not (self.schedule.follow_time and self.time_budget_s and self._t0 is not None):
            return 0.0
        return (self.clock() - self._t0) / self.time_budget_s

    def _restore(self, ckpt: dict) -> None:
        path = self.checkpoint or "the checkpoint"
        try:
            check_state_dict(self.model, ckpt["model_state_dict"], path, type(self.model).__name__)
            self.model.load_state_dict(ckpt["model_state_dict"])
            self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
            step = int(ckpt["step"])
            if ckpt.get("scheduler_state_dict") is not None:
                self.scheduler.load_state_dict(ckpt["scheduler_state_dict"])
                if self.scheduler.last_epoch != step:
                    raise CheckpointError(f"its learning-rate schedule is at step {self.scheduler.last_epoch} but "
                                          f"its model at step {step}")
            # (checkpoints written before the loop saved the scheduler: its position is the step)
            history = [float(h) for h in ckpt.get("history", [])]
            if ckpt.get("best_state") is not None:
                self.best = {"score": _as_score(ckpt["best_score"]), "step": int(ckpt["best_step"]),
                             "state": ckpt["best_state"], "bad": int(ckpt.get("best_bad", 0)),
                             "metrics": dict(ckpt.get("best_metrics") or {})}
        except Exception as exc:  # noqa: BLE001 - one sentence naming the file, whatever failed
            raise resume_error(path, exc) from None
        self.history = history
        self.position(step)
        self.log(f"Resuming {self.name} at step {step}/{self.steps}")

    def position(self, step: int) -> None:
        """Put the loop (and the learning rate) at ``step``: after a restore, or after a trainer did
        that stage's work itself (MATHENA's dds probe is fitted by L-BFGS, not stepped)."""
        self.step = int(step)
        self.scheduler.base_lrs = list(self._base_lrs)
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            group["initial_lr"] = base
        self.scheduler.last_epoch = self.step - 1
        with warnings.catch_warnings():  # "scheduler stepped before the optimizer": positioning, not training
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self) -> Optional[Path]:
        """Write the checkpoint (atomically: the previous one stays until the new one is complete)."""
        if self.checkpoint is None:
            return None
        if self._saved_step == self.step:  # the last step's checkpoint is also the final one
            return self.checkpoint
        extra = self.extra_state() if callable(self.extra_state) else (self.extra_state or {})
        state = {**extra, "step": self.step, "model_state_dict": self.model.state_dict(),
                 "optimizer_state_dict": self.optimizer.state_dict(),
                 "scheduler_state_dict": self.scheduler.state_dict(), "history": [float(h) for h in self.history],
                 "best_state": self.best["state"], "best_score": list(self.best["score"] or ()),
                 "best_step": self.best["step"], "best_bad": self.best["bad"], "best_metrics": self.best["metrics"]}
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)
        self._saved_step = self.step
        return self.checkpoint

    # ------------------------------------------------------------------ running
    def _validate(self) -> bool:
        """Evaluate; True when early stopping says stop."""
        v = self.validation
        was_training = self.model.training
        figures = {k: float(x) for k, x in v.evaluate(self.model).items()}
        self.model.train(was_training)
        self.last_validation = figures
        shown = "  ".join(f"{k} {x:.4g}" for k, x in figures.items())
        if v.score is None:
            self.log(f"{self.name} step {self.step}/{self.steps}: validation {shown}")
            return False
        score = _as_score(v.score(figures))
        if self.best["score"] is None or score > self.best["score"]:
            self.best.update(score=score, step=self.step, bad=0, metrics=figures,
                             state={k: t.detach().clone() for k, t in self.model.state_dict().items()})
        else:
            self.best["bad"] += 1
        self.log(f"{self.name} step {self.step}/{self.steps}: validation {shown} (best at step {self.best['step']})")
        if v.patience is not None and self.best["bad"] >= v.patience:
            self.log(f"{self.name}: early stop at step {self.step}: no validation gain for {v.patience} evaluations")
            return True
        return False

    def _due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.steps

    def run(self, step_fn: Optional[Callable[[int], torch.Tensor]] = None) -> TrainResult:
        """Train to ``steps`` (or the time budget, or early stopping); ``step_fn(step)`` returns the loss of
        that step's batch (drawn from the step number, so a resumed run sees the batches an uninterrupted
        one would). The checkpoint is written at the end whatever stopped the loop; with
        ``Validation.keep_best`` the model then holds the best validated weights."""
        rep = Reporter(self.progress, self.cancel)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._t0 = self.clock()
        stopped = FINISHED
        while self.step < self.steps:
            rep(self.step / max(1, self.steps), f"{self.name}: step {self.step}/{self.steps}")  # also checks cancel
            if self.time_budget_s is not None and self.clock() - self._t0 > self.time_budget_s:
                stopped = TIME_BUDGET
                self.log(f"{self.name}: time budget of {self.time_budget_s:g} s reached at step "
                         f"{self.step}/{self.steps}; stopping")
                break
            loss = step_fn(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.history.append(float(loss.detach()))
            if self.validation is not None and self._due(self.validation.every) and self._validate():
                stopped = EARLY_STOPPING
            if self.checkpoint is not None and self._due(self.checkpoint_every):
                self.save()
                recent = self.history[-self.checkpoint_every:]
                self.log(f"{self.name} step {self.step}/{self.steps}  {self.loss_name} "
                         f"{sum(recent) / len(recent):.5g}  lr {self.lr:.2e}  {self.clock() - self._t0:.0f}s")
            if stopped != FINISHED:
                break
        seconds = self.clock() - self._t0
        self.save()
        metrics: Dict[str, Any] = {"final_loss": self.history[-1] if self.history else None, "lr": self.lr}
        if self.last_validation is not None:
            metrics["validation"] = self.last_validation
        if self.best["state"] is not None:
            metrics.update(best=self.best["metrics"], best_step=self.best["step"], best_score=list(self.best["score"]))
            if self.validation is None or self.validation.keep_best:
                self.model.load_state_dict(self.best["state"])
        return TrainResult(None, self.step, metrics, stopped, list(self.history), seconds)
