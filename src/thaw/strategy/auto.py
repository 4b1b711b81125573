"""``auto``: spend the budget on what the measurements say.

1. **Probe.** Train the new head on frozen features (cached: about one forward pass). It measures how far the
   pretrained features get on their own, is the bar fine-tuning must clear, and is the head every later phase starts
   from (LP-FT, Kumar et al. 2022).
2. **Race.** Candidates compared on rungs of equal wall-clock cost, both from the probe's weights: the upper third of
   the backbone (``partial``) and every group (``full``). Exploration takes ``EXPLORE_SHARE`` of the budget. A
   rung that would give ``full`` fewer than ``MIN_RUNG_STEPS`` optimizer steps and fewer than ``MIN_RUNG_EPOCHS``
   passes over the images (large data on a short budget) would show where each candidate starts, not where it goes:
   such rungs are lengthened to meet the floor when both then take at most ``MAX_EXPLORE_SHARE`` of the budget;
   otherwise there is no race, and every group trains from the pretrained weights and a fresh head (with hundreds of
   steps ahead the head is relearned in the first epochs, and the probe's fitted head would damp the gradients that
   adapt the backbone).
3. **Choose with the noise known.** A candidate is dropped only when it is worse than the leader beyond the noise
   of the comparison: a paired bootstrap over the validation images of the accuracy difference (95 %, one-sided).
   When the accuracies are within noise, the lower validation loss (paired, per image) decides: it moves in smaller
   steps than accuracy on a few images. Every comparison is recorded with its numbers.
4. **Exploit.** The winner continues from the weights its rung selected, with its recipe, for the rest of the budget:
   the rung is not thrown away, so only the losers' rungs cost exploitation time. Its cosine schedule is sized in
   optimizer steps from the measured epoch cost so that it anneals to zero within the budget (no early stop: on a
   few validation images it ends runs before the learning rate has annealed). The best weights on validation across
   all phases are the result, and a last epoch within noise of them wins the tie.
   **Unless the race says length does not help**: when a rung (the winner's or the loser's) reached its lowest
   validation loss within its first ``EARLY_MIN_SHARE`` of ``EARLY_MIN_EPOCHS`` or more epochs, the images were
   fitted long before the rung ended, and a run several times longer only drifts further (stamps, 8 images per
   class: docs/benchmarks.md, "Repeats on tiny data"). Then the rest of the budget repeats the winner's rung (same
   recipe, same length, from the probe's weights, new data order and augmentation) and the result is the uniform
   weight soup of the rung and its repeats, which validation can veto (``Selection.soup``).
5. **Refit** (``--refit``): the recipe the validated half chose trains on training + validation images; the budget
   is split between the two, and the summary says that nothing is held out. After a continued winner, its recipe
   for as many epochs as its validated run took; after a soup of repeats, the rung's recipe as many times as the
   soup had members, souped likewise (``_refit_repeats``).

Without ``--time-budget`` auto chooses one from the data and the measured cost of an epoch (``_default_budget``),
and says so in its first decision. Why these candidates and not the PyTorch tutorial's SGD recipe:
docs/benchmarks.md, "auto's race".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from thaw.strategy import base
from thaw.strategy.base import (
    Average,
    AverageResult,
    Candidates,
    Decision,
    Phase,
    PhaseResult,
    PlanContext,
    Refit,
    Step,
    StepResult,
)
from thaw.strategy.fixed import finetune_phase, probe_phase
from thaw.train.optim import MIN_WARMUP_STEPS, steps_per_epoch

__all__ = [
    "AutoStrategy",
    "compare_paired",
    "choose",
    "flip_verdict",
    "paired_bootstrap",
    "EXPLORE_SHARE",
    "MAX_EXPLORE_SHARE",
    "MIN_RUNG_STEPS",
    "MIN_RUNG_EPOCHS",
    "EARLY_MIN_SHARE",
    "EARLY_MIN_EPOCHS",
    "TIMED_PASS_SECONDS",
    "fitted_early",
]

#: Share of the training budget the race takes (both rungs together); the winner gets the rest.
EXPLORE_SHARE = 0.3
#: Rungs that fall just short of the race floor (``MIN_RUNG_STEPS``, ``MIN_RUNG_EPOCHS``) at ``EXPLORE_SHARE`` are
#: lengthened to meet it while both together take at most this share of the budget: the winner keeps its rung, so
#: only the loser's half is lost (20 % of the budget at most instead of 15 %). Without it the floor was a knife edge:
#: a costlier backbone, the ``--models`` measurements (6-16 s of a 180 s budget) or a slower machine left rungs of
#: 90 steps (cvdigits) against the floor's 100, and in each of the three same-session pairs seen the run that
#: skipped the race scored under the one that raced, same backbone, task and seed (Lite2: cvdigits 0.939 vs 0.957,
#: the sample 0.833 vs 0.840, digits 0.939 vs 0.961; docs/benchmarks.md, "The race floor"). Rungs that would need
#: more stay unraced (fashion100's 16-64 steps).
MAX_EXPLORE_SHARE = 0.4
#: Confidence of "worse beyond noise" in the paired bootstrap (one-sided).
CONFIDENCE = 0.95
#: Bootstrap resamples of the validation set.
RESAMPLES = 2000
#: Fewest optimizer steps a rung must give the costlier candidate (``full``) for the race to run: its warmup takes
#: up to ``MIN_WARMUP_STEPS`` and then anneals to zero within the rung, so a shorter rung shows where a candidate
#: starts, not where it is heading (docs/benchmarks.md, "auto's race": on fashion100, rungs of 16-64 steps of full
#: all picked partial, which scored 1-2.5 points under full alone; the other suite tasks' rungs hold 170-320 steps).
MIN_RUNG_STEPS = 5 * MIN_WARMUP_STEPS
#: The race's candidates: the upper third of the backbone, and every group.
RECIPES = ("partial", "full")
#: A rung of the race reached its lowest validation loss within this share of its epochs ...
EARLY_MIN_SHARE = 0.3
#: ... and ran at least this many epochs (passes over the training images): then more length does not help, and the
#: rest of the budget repeats the winner's rung for a weight soup. Measured over the suite's raced runs
#: (``python -m bench.rung_shares bench/results/2026-12-03/*.jsonl``; docs/benchmarks.md, "Tiny data"): on stamps
#: (8 images per class) the earlier of the two rungs' lowest losses came at 2-28 % of its epochs in 55 of 57 runs
#: (31 and 58 % in the other two); on digits, cvdigits, fashion10 and the embedded sample at 33-100 % in all 23,
#: where the long run gained on validation. Either rung counts: on stamps the winner's own rung had its lowest loss
#: as late as 74 % on 20 noisy validation images while the other rung's came at 2 %, and the long run drifted.
#: Stamps runs that repeated scored 0.780 ± 0.047 on test (49), those that continued 0.711 ± 0.072 (8).
EARLY_MIN_EPOCHS = 10
#: A rung under ``MIN_RUNG_STEPS`` still races when it holds at least this many epochs of ``full``: a few dozen
#: images make epochs of 3-5 steps, and a rung of 20 passes over them has fitted them (stamps, 8 images per class:
#: the winning rung's lowest validation loss came at epoch 5-17, docs/benchmarks.md "Repeats on tiny data"), so it
#: shows where a candidate goes in fewer steps than the floor. Without it a costlier backbone, a slower machine or
#: the ``--models`` measurements left stamps' rungs at 84-93 steps (28-31 epochs), and the whole budget went to
#: ``full`` from a fresh head, the worst fixed strategy on that task ("Tiny data: races on fewer steps, ..."). Twice
#: ``EARLY_MIN_EPOCHS``, so that an early fit can show in the rung.
MIN_RUNG_EPOCHS = 2 * EARLY_MIN_EPOCHS
#: A probe's feature pass shorter than this prices a fine-tuning epoch poorly: the process's first forward pass pays
#: one-time set-up, which on a few dozen images is most of it (stamps, 60 images: 0.49 s once against 0.16 s usually,
#: an epoch of ``full`` estimated at 1.04 s against 0.43 s run, so the race was skipped). Then the epoch is timed
#: (``Runner.measure``: a warm-up batch of each size, the fastest of up to three passes).
TIMED_PASS_SECONDS = 2.0
#: Upper bound on the epochs of a phase whose length the clock sets.
MAX_EPOCHS = 100_000
#: Without --time-budget: the winner's run is planned for this many epochs ...
DEFAULT_EPOCHS = 40
#: ... and at least this many optimizer steps (a few hundred images make short epochs) ...
DEFAULT_STEPS = 600
#: ... within these bounds on the whole budget, in seconds.
DEFAULT_BUDGET_BOUNDS = (60.0, 3600.0)


@dataclass(frozen=True)
class Rung:
    """The race's rung as planned from the measured epoch cost (``AutoStrategy._rung``)."""

    seconds: float
    epoch_seconds: float
    """Of ``full``, the costliest candidate; 0 when no cost is known."""
    steps: int
    """Optimizer steps of ``full`` the rung holds, whole epochs only."""
    share: float
    """Of the budget both rungs take: ``EXPLORE_SHARE``, or more (up to ``MAX_EXPLORE_SHARE``) when lengthened."""


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of two phases' selected weights on the same validation images."""

    accuracy_diff: float
    """leader minus other."""
    accuracy_lower: float
    """One-sided lower bound of the accuracy difference (``CONFIDENCE``)."""
    loss_diff: float
    """other minus leader (positive: the leader's loss is lower)."""
    loss_lower: float

    @property
    def beyond_noise(self) -> bool:
        return self.accuracy_lower > 0

    def to_dict(self) -> dict[str, float]:
        return {
            "accuracy_diff": self.accuracy_diff,
            "accuracy_diff_lower_bound": self.accuracy_lower,
            "loss_diff": self.loss_diff,
            "loss_diff_lower_bound": self.loss_lower,
        }


def compare_paired(leader: PhaseResult, other: PhaseResult, seed: int = 0) -> Comparison:
    """Paired bootstrap of the validation accuracy and loss differences between two phases' selected weights."""
    return paired_bootstrap(leader.val_correct, leader.val_nll, other.val_correct, other.val_nll, seed)


def paired_bootstrap(
    correct_a: Sequence[int], nll_a: Sequence[float], correct_b: Sequence[int], nll_b: Sequence[float], seed: int = 0
) -> Comparison:
    """Paired bootstrap over the same validation images of the accuracy and loss differences, a minus b."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    la, lb = np.asarray(nll_a, dtype=float), np.asarray(nll_b, dtype=float)
    n = len(a)
    if n == 0 or len(b) != n:
        return Comparison(math.nan, -math.inf, math.nan, -math.inf)
    idx = np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n))
    acc = (a - b)[idx].mean(axis=1)
    loss = (lb - la)[idx].mean(axis=1)
    q = 1 - CONFIDENCE
    return Comparison(
        float((a - b).mean()), float(np.quantile(acc, q)), float((lb - la).mean()), float(np.quantile(loss, q))
    )


def choose(results: Sequence[PhaseResult], seed: int = 0) -> tuple[PhaseResult, dict[int, dict[str, Any]]]:
    """The winner of a race and, per other candidate, the comparison and the verdict.

    The leader by accuracy is compared with each other candidate; when none is worse beyond noise, the race is decided
    by validation loss among those within noise of the leader.
    """
    leader = max(results, key=lambda r: (r.selected_val_accuracy, -r.selected_val_loss))
    verdicts: dict[int, dict[str, Any]] = {}
    tied = [leader]
    for r in results:
        if r is leader:
            continue
        c = compare_paired(leader, r, seed)
        verdicts[r.index] = {**c.to_dict(), "beyond_noise": c.beyond_noise}
        if not c.beyond_noise:
            tied.append(r)
    winner = min(tied, key=lambda r: r.selected_val_loss) if len(tied) > 1 else leader
    verdicts.pop(winner.index, None)  # the loss chose a candidate other than the leader: it has no verdict
    for r in results:
        if r is winner:
            continue
        v = verdicts.setdefault(r.index, {**compare_paired(winner, r, seed).to_dict(), "beyond_noise": False})
        v["verdict"] = (
            f"dropped: val accuracy {r.selected_val_accuracy:.4f} is below {leader.selected_val_accuracy:.4f} "
            f"beyond noise (lower bound of the difference {v['accuracy_diff_lower_bound']:+.4f} > 0)"
            if v["beyond_noise"]
            else f"dropped on validation loss: accuracy within noise ({r.selected_val_accuracy:.4f} vs "
            f"{winner.selected_val_accuracy:.4f}), loss {r.selected_val_loss:.4f} vs {winner.selected_val_loss:.4f}"
        )
    return winner, verdicts


def fitted_early(rung: PhaseResult) -> bool:
    """Whether a rung reached its lowest validation loss early (``EARLY_MIN_SHARE`` of ``EARLY_MIN_EPOCHS`` or more
    epochs): training longer on these images stopped helping well before the rung ended. Asked of every rung of the
    race: either one fitting early says the images are fitted early."""
    return rung.epochs_run >= EARLY_MIN_EPOCHS and 0 < rung.min_val_loss_epoch <= EARLY_MIN_SHARE * rung.epochs_run


def flip_verdict(
    probe: PhaseResult, mirrored: tuple[Sequence[int], Sequence[float]] | None, augment: str, seed: int = 0
) -> tuple[str, dict[str, Any]]:
    """The augmentation fine-tuning uses, and why: without horizontal flips when the mirror image carries the class.

    The probe's selected weights classify the validation images (its recorded ``val_correct``) and their mirror
    images (``mirrored``). When they are worse on the mirror images beyond noise (the race's paired bootstrap),
    orientation tells classes apart (digits, text) or the data has one orientation, and flipping training images
    would teach the model to ignore it: ``light`` becomes ``crop``. Other presets are the user's explicit choice.
    """
    if augment != "light" or not mirrored:
        return augment, {}
    c = paired_bootstrap(probe.val_correct, probe.val_nll, mirrored[0], mirrored[1], seed)
    n = max(len(mirrored[0]), 1)
    record = {
        "val_accuracy": sum(probe.val_correct) / n,
        "mirrored_val_accuracy": sum(mirrored[0]) / n,
        **c.to_dict(),
        "flip": not c.beyond_noise,
    }
    return ("crop" if c.beyond_noise else "light"), record


@dataclass
class AutoStrategy:
    name: str = "auto"

    def needs(self, history: Sequence[StepResult]) -> base.Measurements:
        """After the probe, the cost of a fine-tuning epoch sizes the race (and the budget when none is given). A
        probe on cached features measured it for free (its forward pass) when that pass took ``TIMED_PASS_SECONDS``
        or more; an uncached probe, or a shorter pass, asks for it to be timed. The probe's validation numbers on
        mirrored images decide whether fine-tuning flips (``flip_verdict``)."""
        probe = base.phase_results(history)[:1]
        after_probe = len(history) == 1
        timed = bool(probe) and probe[0].setup_seconds >= TIMED_PASS_SECONDS
        return base.Measurements(epoch_seconds=after_probe and not timed, mirrored=after_probe)

    @staticmethod
    def _epoch_seconds(ctx: PlanContext, probe: PhaseResult) -> float:
        """Seconds of a fine-tuning epoch of every group: measured, or from the probe's forward pass over the
        training and validation images, a backward pass costing about twice a forward one."""
        if ctx.signals.epoch_seconds:
            return ctx.signals.epoch_seconds
        n, v = ctx.num_train, ctx.num_val
        if probe.setup_seconds and n + v:
            return probe.setup_seconds * (3 * n + v) / (n + v)
        return probe.seconds / max(probe.epochs_run, 1)

    # ------------------------------------------------------------------ plan
    def next_step(self, ctx: PlanContext, history: Sequence[StepResult]) -> Step | None:
        phases = base.phase_results(history)
        if not phases:
            return replace(
                probe_phase(
                    ctx,
                    f"auto: probe first ({ctx.num_train / max(ctx.num_classes, 1):.0f} images/class): cheap on cached "
                    "features; it measures the pretrained features and is the head fine-tuning starts from",
                ),
                keep=True,
            )
        race = [p for p in phases if p.phase.signals.get("role") == "candidate"]
        final = [p for p in phases if p.phase.signals.get("role") == "final"]
        repeats = [p for p in phases if p.phase.signals.get("role") == "repeat"]
        if repeats:
            return self._repeat(ctx, phases, repeats, history)
        if not final:
            planned = self._race(ctx, phases[0], race)
            if planned is not None and len(race) < len(planned.phases):
                if not race and ctx.seconds_left is not None and ctx.seconds_left <= 0:
                    return None
                return replace(planned, phases=planned.phases[len(race) :])
            return self._final(ctx, phases, race)
        if ctx.config.refit and not any(p.phase.refit for p in phases) and final[0].epochs_run > 0:
            f = final[0]
            return Refit(
                replace(
                    f.phase,
                    name=f"{f.phase.name}-refit",
                    epochs=f.epochs_run,
                    seconds=None,
                    signals={"role": "refit", "epochs": f.epochs_run, "steps_of_validated_run": f.steps},
                    reason=f"auto --refit: {f.phase.name}'s recipe on training + validation images for the "
                    f"{f.epochs_run} epochs its validated run took; no validation is held out for this model",
                ),
                reason="--refit",
            )
        return None

    def _budget(self, ctx: PlanContext, probe: PhaseResult) -> tuple[float, str]:
        """Seconds for training after the probe, and where that number came from."""
        if ctx.budget_seconds is not None:
            left = ctx.seconds_left if ctx.seconds_left is not None else ctx.budget_seconds
            return left, f"{left:.0f}s of the --time-budget left after the probe"
        epoch = self._epoch_seconds(ctx, probe)
        spe = steps_per_epoch(ctx.num_train, ctx.config.batch)
        epochs = max(DEFAULT_EPOCHS, math.ceil(DEFAULT_STEPS / spe))
        lo, hi = DEFAULT_BUDGET_BOUNDS
        seconds = min(hi, max(lo, epochs * epoch / (1 - EXPLORE_SHARE)))
        return seconds, (
            f"no --time-budget: {seconds:.0f}s chosen for {epochs} epochs of the winner ({ctx.num_train} images, "
            f"{spe} steps per epoch, {epoch:.1f}s per fine-tuning epoch measured) plus the race"
        )

    def _race(self, ctx: PlanContext, probe: PhaseResult, done: Sequence[PhaseResult]) -> Candidates | None:
        """The race after the probe; once it has started, the rung length its first candidate was given."""
        budget, source = self._budget(ctx, probe)
        head = ctx.head
        backbone = list(range(head))
        recipes = {  # name -> trainable groups, in RECIPES order
            "partial": tuple(sorted([*backbone[-max(1, math.ceil(len(backbone) / 3)) :], head])),
            "full": tuple(range(head + 1)),
        }
        if done:
            signals = done[0].phase.signals
            rung, steps = float(signals["rung_seconds"]), signals.get("rung_steps")
            share = float(signals.get("explore_share", EXPLORE_SHARE))
            budget = len(RECIPES) * rung / share  # as planned before the race started
        else:
            planned = self._rung(ctx, probe, budget)
            if planned.epoch_seconds and not self._races(ctx, planned.steps):
                return None  # a rung too short to tell the candidates apart: the final run takes the budget
            rung, steps, share = planned.seconds, planned.steps, planned.share
        augment, flip = self._augment(ctx, probe, done)
        names = [g.name for g in ctx.groups]
        phases = tuple(
            replace(
                self._phase(
                    ctx,
                    f"race-{name}",
                    trainable,
                    rung,
                    {
                        "role": "candidate",
                        "recipe": name,
                        "budget_source": source,
                        "rung_seconds": rung,
                        "rung_steps": steps,  # of full, as estimated before the race (MIN_RUNG_STEPS, MIN_RUNG_EPOCHS)
                        "explore_share": share,  # planned: EXPLORE_SHARE, or more up to MAX_EXPLORE_SHARE
                        "flip": flip,
                    },
                    f"auto race: {name} ({', '.join(names[i] for i in trainable)}) for {rung:.0f}s from the probe's "
                    f"weights; {source}{self._flip_text(augment, flip)}",
                ),
                keep=True,  # the winner continues from the weights its rung selected
                augment=augment,
            )
            for name, trainable in recipes.items()
        )
        why = (
            f"; lengthened from {EXPLORE_SHARE:.0%} so that full gets the {steps} steps a comparison needs"
            if share > EXPLORE_SHARE
            else ""
        )
        return Candidates(
            phases, reason=f"equal-cost rungs of {rung:.0f}s each ({share:.0%} of {budget:.0f}s in all{why})"
        )

    def _rung(self, ctx: PlanContext, probe: PhaseResult, budget: float) -> Rung:
        """Seconds of a rung (``EXPLORE_SHARE`` of ``budget`` split between the ``RECIPES``), seconds of an epoch of
        ``full`` (the costliest candidate) and the optimizer steps of ``full`` a rung holds, whole epochs only (an
        epoch that would end past the rung is not started). A rung short of the race floor is lengthened to the
        fewest whole epochs that meet it when both rungs then take at most ``MAX_EXPLORE_SHARE`` of ``budget``."""
        rung = EXPLORE_SHARE * budget / len(RECIPES)
        epoch = self._epoch_seconds(ctx, probe)
        spe = steps_per_epoch(ctx.num_train, ctx.config.batch)
        epochs = int(rung / epoch) if epoch > 0 else 0  # 0 s: no cost known (the race is not held back for it)
        if epoch > 0 and not self._races(ctx, epochs * spe):
            needed = math.ceil(min(MIN_RUNG_STEPS, MIN_RUNG_EPOCHS * spe) / spe)  # whole epochs that meet a floor
            if needed * epoch * len(RECIPES) <= MAX_EXPLORE_SHARE * budget:
                return Rung(needed * epoch, epoch, needed * spe, needed * epoch * len(RECIPES) / budget)
        return Rung(rung, epoch, epochs * spe, EXPLORE_SHARE)

    @staticmethod
    def _races(ctx: PlanContext, steps: int) -> bool:
        """Whether a rung holding ``steps`` optimizer steps of ``full`` can tell the candidates apart: enough steps to
        see past the warmup (``MIN_RUNG_STEPS``), or enough passes over a few images to fit them
        (``MIN_RUNG_EPOCHS``)."""
        return steps >= MIN_RUNG_STEPS or steps >= MIN_RUNG_EPOCHS * steps_per_epoch(ctx.num_train, ctx.config.batch)

    @staticmethod
    def _augment(ctx: PlanContext, probe: PhaseResult, done: Sequence[PhaseResult]) -> tuple[str, dict[str, Any]]:
        """Fine-tuning's augmentation: decided once, on the probe's mirrored-image numbers; a resumed race keeps it."""
        if done:
            return done[0].phase.augment, dict(done[0].phase.signals.get("flip") or {})
        return flip_verdict(probe, ctx.signals.mirrored, ctx.config.augment, ctx.config.seed)

    @staticmethod
    def _flip_text(augment: str, flip: dict[str, Any]) -> str:
        if not flip or flip.get("flip"):
            return ""
        return (
            f"; augment {augment} (no horizontal flip): the probe's validation accuracy on mirror images is "
            f"{flip['mirrored_val_accuracy']:.4f} against {flip['val_accuracy']:.4f}, lower beyond noise (lower bound "
            f"of the difference {flip['accuracy_diff_lower_bound']:+.4f})"
        )

    @staticmethod
    def _phase(
        ctx: PlanContext, name: str, trainable: tuple[int, ...], seconds: float, signals: dict[str, Any], reason: str
    ) -> Phase:
        """A fine-tuning phase from the probe's weights whose length the clock sets (no early stop)."""
        phase = finetune_phase(ctx, name, trainable, MAX_EPOCHS, reason)
        return replace(phase, patience=0, start="phase:0", seconds=seconds, signals=signals)

    def _final(self, ctx: PlanContext, phases: Sequence[PhaseResult], race: Sequence[PhaseResult]) -> Phase | None:
        probe = phases[0]
        if ctx.seconds_left is not None and ctx.seconds_left <= 0:
            return None
        if ctx.budget_seconds is not None:
            seconds = ctx.seconds_left if ctx.seconds_left is not None else ctx.budget_seconds
        else:
            seconds = self._budget(ctx, probe)[0] * (1 - EXPLORE_SHARE)
        if ctx.config.refit:
            seconds /= 2  # the refit on training + validation images needs as long again
        plan = f"for {seconds:.0f}s, the schedule sized to end within it"
        if race:  # the winner's whole recipe continues from the weights its rung selected, for longer
            winner, verdicts = choose(race, ctx.config.seed)
            recipe = str(winner.phase.signals["recipe"])
            why = f"{recipe} won the race (val {winner.selected_val_accuracy:.4f}, loss {winner.selected_val_loss:.4f})"
            race_record = {str(k): v for k, v in verdicts.items()}
            early = [r for r in race if fitted_early(r)]
            if early:
                rung = float(winner.phase.signals["rung_seconds"])
                fitted = min(early, key=lambda r: r.min_val_loss_epoch / r.epochs_run)  # the earliest is the evidence
                count = max(1, int(seconds // rung))
                signals = {
                    "role": "repeat",
                    "recipe": recipe,
                    "race": race_record,
                    "winner": winner.index,
                    "repeats": count,
                    "fitted_early_recipe": fitted.phase.signals["recipe"],
                    "rung_min_val_loss_epoch": fitted.min_val_loss_epoch,
                    "rung_epochs": fitted.epochs_run,
                    "planned_seconds": seconds / count,
                }
                whose = "its rung" if fitted is winner else f"the {fitted.phase.signals['recipe']} rung"
                reason = (
                    f"auto: {why}; {whose} reached its lowest validation loss at epoch {fitted.min_val_loss_epoch} "
                    f"of {fitted.epochs_run}, so these images are fitted early and a longer run would only drift "
                    f"further: the {seconds:.0f}s left repeat the {recipe} rung {count} time(s) from the probe's "
                    "weights, for a weight soup with the rung"
                )
                return self._repeat_phase(winner, signals, 1, seconds / count, reason)
            return replace(
                winner.phase,
                name=f"auto-{recipe}",
                seconds=seconds,
                signals={"role": "final", "recipe": recipe, "race": race_record, "planned_seconds": seconds},
                reason=f"auto: {why}; it continues from its rung's selected weights {plan}",
                start=f"phase:{winner.index}",
                keep=False,
            )
        augment, flip = self._augment(ctx, probe, ())
        planned = self._rung(ctx, probe, self._budget(ctx, probe)[0])
        rung, epoch, steps = planned.seconds, planned.epoch_seconds, planned.steps
        spe = steps_per_epoch(ctx.num_train, ctx.config.batch)
        why = (
            f"no race: a rung of {rung:.0f}s would give every group {steps} optimizer steps ({epoch:.1f}s an epoch of "
            f"{spe} steps), fewer than the {MIN_RUNG_STEPS} a comparison needs to see past the warmup or the "
            f"{MIN_RUNG_EPOCHS} epochs that fit a few images, even with rungs lengthened to "
            f"{MAX_EXPLORE_SHARE:.0%} of the budget; every group trains from the "
            "pretrained weights and a fresh head (the probe's fitted head damps the backbone's gradients: "
            "docs/benchmarks.md, \"auto's race\"; the probe's weights stay the result if validation prefers them)"
            + self._flip_text(augment, flip)
        )
        signals = {
            "role": "final",
            "recipe": "full",
            "flip": flip,
            "planned_seconds": seconds,
            "rung_seconds": rung,
            "rung_steps": steps,
            "epoch_seconds": epoch,
        }
        phase = self._phase(ctx, "auto-full", tuple(range(ctx.head + 1)), seconds, signals, f"auto: {why}; {plan}")
        return replace(phase, augment=augment, start="pretrained")

    @staticmethod
    def _repeat_phase(winner: PhaseResult, signals: dict[str, Any], k: int, seconds: float, reason: str) -> Phase:
        """Repeat ``k`` of the winner's rung: its recipe and start (the probe's weights), kept for the soup."""
        return replace(
            winner.phase,
            name=f"auto-{signals['recipe']}-repeat{k}",
            seconds=seconds,
            signals={**signals, "repeat": k, "planned_seconds": seconds},
            reason=reason,
            keep=True,
        )

    def _repeat(
        self,
        ctx: PlanContext,
        phases: Sequence[PhaseResult],
        repeats: Sequence[PhaseResult],
        history: Sequence[StepResult],
    ) -> Step | None:
        """The next repeat of the winner's rung while the budget lasts, then the soup of the rung and its repeats."""
        soups = [r for r in history if isinstance(r, AverageResult)]
        if soups:
            return self._refit_repeats(ctx, phases, repeats, soups) if ctx.config.refit else None
        first = repeats[0].phase.signals
        winner = phases[int(first["winner"])]
        count = int(first["repeats"])
        done = len(repeats)
        # with --refit the other half of what ``_final`` had is the refits' (as many seconds as the repeats planned)
        reserve = float(first["planned_seconds"]) * count if ctx.config.refit else 0.0
        left = None if ctx.seconds_left is None else ctx.seconds_left - reserve
        if done < count and (left is None or left > 0):
            seconds = left / (count - done) if left is not None else float(first["planned_seconds"])
            reason = f"auto: repeat {done + 1} of {count} of the {first['recipe']} rung, for the weight soup"
            return self._repeat_phase(winner, dict(first), done + 1, seconds, reason)
        members = (winner.index, *(r.index for r in repeats if r.epochs_run > 0))
        return Average(
            members,
            reason=f"auto: uniform soup of the {first['recipe']} rung and its {len(members) - 1} repeat(s); "
            "validation vetoes it only when it is worse beyond noise",
        )

    @staticmethod
    def _refit_repeats(
        ctx: PlanContext, phases: Sequence[PhaseResult], repeats: Sequence[PhaseResult], soups: Sequence[AverageResult]
    ) -> Step | None:
        """``--refit`` after the soup of repeats: the recipe the validated half chose, on training + validation images.

        That recipe is the winner's rung from the probe's weights, run as many times as the validated soup had
        members and souped (once, when validation vetoed the soup). Each refit shares what is left of the budget and
        runs at most the rung's epochs (the race showed these images fitted well within them). Their soup cannot be
        vetoed (no validation is held out): it is adopted because the validated soup of the same recipe was.
        """
        if len(soups) > 1:
            return None
        soup, first = soups[0], repeats[0].phase.signals
        winner = phases[int(first["winner"])]
        refits = [p for p in phases if p.phase.refit]
        count = len(soup.members) if soup.adopted else 1
        done = len(refits)
        if done < count and (ctx.seconds_left is None or ctx.seconds_left > 0):
            seconds = ctx.seconds_left / (count - done) if ctx.seconds_left is not None else winner.seconds
            what = (
                f"refit {done + 1} of {count}, for a soup like the validated one"
                if soup.adopted
                else "one refit: validation vetoed the soup of the repeats"
            )
            phase = replace(
                winner.phase,
                name=f"auto-{first['recipe']}-refit{done + 1}",
                epochs=winner.epochs_run,
                seconds=seconds,
                keep=True,
                signals={
                    "role": "refit",
                    "recipe": first["recipe"],
                    "winner": winner.index,
                    "refit": done + 1,
                    "refits": count,
                    "epochs": winner.epochs_run,
                    "planned_seconds": seconds,
                },
                reason=f"auto --refit: the {first['recipe']} rung's recipe from the probe's weights on training + "
                f"validation images, at most its {winner.epochs_run} epochs ({what}); no validation is held out for "
                "this model",
            )
            return Refit(phase, reason="--refit")
        members = tuple(r.index for r in refits if r.epochs_run > 0)
        if len(members) < 2:
            return None
        return Average(
            members,
            reason=f"auto --refit: uniform soup of the {len(members)} refits, as the validated soup of the same recipe "
            "was adopted; not vetoable (they trained on the validation images)",
            validated=False,
        )

    # ------------------------------------------------------------------ explain
    @staticmethod
    def _soup_reason(soup: AverageResult) -> str:
        """Why a soup was adopted or vetoed: a soup of refits cannot be vetoed, a validated one is vetoed below its
        ingredients' mean or a kept phase outside it (``Selection.soup``)."""
        if soup.info.get("validated") is False:
            return (
                "auto --refit: uniform weight soup of the refits, adopted without a veto (they trained on the "
                "validation images; the validated soup of the same recipe was adopted)"
            )
        reason = "auto: uniform weight soup of the winner's rung and its repeats"
        if not soup.adopted:
            reason += "; validation put it below its ingredients' mean, or a kept phase outside it, beyond noise"
        return reason

    def decisions(self, history: Sequence[StepResult]) -> list[Decision]:
        """What was decided at each step, and why, with its numbers (summary.json ``decisions``)."""
        out: list[Decision] = []
        for r in base.phase_results(history):
            sig = dict(r.phase.signals)
            sig.update(
                seconds_spent=r.seconds,
                epochs=r.epochs_run,
                steps=r.steps,
                selected_val_accuracy=r.selected_val_accuracy,
                selected_val_loss=r.selected_val_loss,
            )
            out.append(Decision(r.index, f"run {r.phase.name}", r.phase.reason, sig))
        phases = base.phase_results(history)
        race = [p for p in phases if p.phase.signals.get("role") == "candidate"]
        spent = sum(p.seconds for p in race) + (phases[0].seconds if phases else 0.0)
        total = sum(p.seconds for p in phases)
        final = [p for p in phases if p.phase.signals.get("role") == "final"]
        repeats = [p for p in phases if p.phase.signals.get("role") == "repeat"]
        kept = final[0].phase.start_phase() if final else None
        if repeats:
            kept = int(repeats[0].phase.signals["winner"])
        discarded = sum(p.seconds for p in race if p.index != kept)
        for soup in (s for s in history if isinstance(s, AverageResult)):
            decision = "soup adopted" if soup.adopted else "soup vetoed"
            out.append(Decision(soup.index, decision, self._soup_reason(soup), dict(soup.info)))
        if repeats:
            stop = "auto: the race was decided and the winner's rung repeated for a weight soup"
            if any(p.phase.refit for p in phases):
                stop += ", then refitted on training + validation images"
        elif race:
            stop = "auto: the race was decided and the winner trained for the budget"
        else:
            stop = "auto: the budget allowed no race"
        out.append(
            Decision(
                len(history),
                "stop",
                stop,
                {
                    "exploration_seconds": spent,
                    "training_seconds": total,
                    "exploration_share": spent / total if total else 0.0,
                    "discarded_seconds": discarded,
                    "discarded_share": discarded / total if total else 0.0,
                },
            )
        )
        return out
