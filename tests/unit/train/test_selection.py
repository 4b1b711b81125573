"""Selection's rules on synthetic validation numbers (no training here)."""

from __future__ import annotations

import torch

from thaw.train.selection import Scored, Selection


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"weight": torch.full((2, 2), value)}


def _selection(kept: dict[int, float], best: float) -> tuple[Selection, torch.nn.Linear]:
    """20 validation images; ``kept`` maps phase index -> the accuracy of its selected weights."""
    model = torch.nn.Linear(2, 2, bias=False)
    sel = Selection(num_val=20)
    for i, acc in kept.items():
        sel.kept[i] = (_state(float(i)), Scored(acc, 0.5))
    sel.best, sel.best_where, sel.best_state = Scored(best, 0.4), (max(kept), 7), _state(-1.0)
    return sel, model


def test_a_lucky_epoch_of_an_ingredient_does_not_veto_the_soup() -> None:
    """stamps: a repeat's best epoch scored 0.85 on 20 images (its last 0.65); the soup of the rung and its repeats
    scored 0.60, within noise of the ingredients' mean. That maximum over hundreds of noisy passes is no evidence
    against the soup, so the soup is the result."""
    sel, model = _selection({0: 0.45, 1: 0.55, 2: 0.8, 3: 0.6, 4: 0.7, 5: 0.65, 6: 0.85}, best=0.85)
    info = sel.soup(model, [2, 3, 4, 5, 6], lambda: Scored(0.60, 0.9), where=(7, 0))
    assert info is not None and info["adopted"]
    assert info["best_val_accuracy_before"] == 0.85 and info["best_outside_val_accuracy"] == 0.55
    assert sel.best_where == (7, 0) and sel.best.accuracy == 0.60
    torch.testing.assert_close(model.weight, torch.full((2, 2), 4.0))  # the mean of phases 2-6's weights


def test_a_kept_phase_outside_the_soup_better_beyond_noise_vetoes_it() -> None:
    """The probe (phase 0) at 0.95 and a soup at 0.60: worse than weights it does not contain, beyond two standard
    errors; the best weights stay, and are back in the model."""
    sel, model = _selection({0: 0.95, 1: 0.6, 2: 0.6, 3: 0.6}, best=0.95)
    info = sel.soup(model, [1, 2, 3], lambda: Scored(0.60, 0.9), where=(4, 0))
    assert info is not None and not info["adopted"] and info["best_outside_val_accuracy"] == 0.95
    assert sel.best.accuracy == 0.95 and sel.best_where != (4, 0)
    torch.testing.assert_close(model.weight, torch.full((2, 2), -1.0))


def test_a_soup_below_its_ingredients_beyond_noise_is_vetoed() -> None:
    sel, model = _selection({0: 0.5, 1: 0.9, 2: 0.9}, best=0.9)
    info = sel.soup(model, [1, 2], lambda: Scored(0.5, 2.0), where=(3, 0))
    assert info is not None and not info["adopted"] and info["mean_ingredient_val_accuracy"] == 0.9


def test_a_soup_of_refits_is_not_vetoed_by_validation_it_trained_on() -> None:
    """Refits trained on the validation images, so validation cannot judge their soup: the numbers that would have
    vetoed a validated soup are recorded, and the soup is the result."""
    sel, model = _selection({0: 0.5, 1: 0.9, 2: 0.9}, best=0.9)
    info = sel.soup(model, [1, 2], lambda: Scored(0.5, 2.0), where=(3, 0), veto=False)
    assert info is not None and info["adopted"] and info["validated"] is False
    assert sel.best_where == (3, 0) and sel.best.accuracy == 0.5
