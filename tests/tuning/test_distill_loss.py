"""The distillation loss against a value computed by hand."""

import math

import pytest
import torch

from tunelab.tuning.distill import distillation_loss


def softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def test_distillation_loss_matches_hand_computed_value() -> None:
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
    t = 2.0
    expected = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p_s = softmax([x / t for x in s_row])
        p_t = softmax([x / t for x in t_row])
        expected += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    expected = expected / 2 * t * t
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), t)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(torch.tensor(teacher), torch.tensor(teacher), t).item() == pytest.approx(0.0, abs=1e-6)
