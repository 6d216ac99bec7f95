"""The expected-agreement estimate against brute force: many noisy draws of the same logits."""

from __future__ import annotations

import numpy as np

from edgeres.check import compare, expected_agreement


def _logits_with_near_ties(rng: np.random.Generator, n: int = 400, classes: int = 10
                           ) -> np.ndarray:
    """Float logits whose top-1/top-2 margins run from ties to 4, the rest far below."""
    f = rng.normal(-6.0, 1.0, size=(n, classes))
    top, second = rng.choice(classes, size=2, replace=False)
    f[:, top] = 5.0
    f[:, second] = 5.0 - rng.exponential(1.0, size=n)
    return f


def test_matches_the_agreement_of_many_noisy_draws() -> None:
    rng = np.random.default_rng(0)
    f = _logits_with_near_ties(rng)
    noise = 0.4  # per-logit sd: the top-2 difference has sd 0.4 * sqrt(2)
    draws, predicted, sds = [], [], []
    for _ in range(300):
        q = f + rng.normal(0.0, noise, size=f.shape)
        draws.append(100 * np.mean(q.argmax(1) == f.argmax(1)))
        e, sd = expected_agreement(f, q)
        predicted.append(e)
        sds.append(sd)
    assert 80 < np.mean(draws) < 95  # the set really has near ties
    assert abs(np.mean(predicted) - np.mean(draws)) < 0.3  # points
    assert abs(np.mean(sds) / np.std(draws) - 1) < 0.2
    # one draw's estimate is far steadier than the count it estimates
    assert np.std(predicted) < 0.5 * np.std(draws)


def test_follows_noise_that_grows_on_uncertain_inputs() -> None:
    """Error sd 0.6 on near ties, 0.05 on confident inputs (as trained classifiers show):
    the local estimate tracks brute force where one pooled variance is optimistic."""
    from edgeres.check import agreement_at_noise, top2_margin_and_error

    rng = np.random.default_rng(2)
    f = _logits_with_near_ties(rng, n=1000)
    margin, _ = top2_margin_and_error(f, f)
    sd = np.where(margin < 1.0, 0.6, 0.05)[:, None] / np.sqrt(2)  # per-logit sd
    draws, local, pooled = [], [], []
    for _ in range(200):
        q = f + rng.normal(0.0, 1.0, size=f.shape) * sd
        draws.append(100 * np.mean(q.argmax(1) == f.argmax(1)))
        local.append(expected_agreement(f, q)[0])
        _, d = top2_margin_and_error(f, q)
        pooled.append(agreement_at_noise(margin, float(np.sqrt(np.mean(d**2))))[0])
    assert abs(np.mean(local) - np.mean(draws)) < 0.5
    assert np.mean(pooled) - np.mean(draws) > 1.0  # why the estimate is local


def test_exact_copy_and_compare_fields() -> None:
    rng = np.random.default_rng(1)
    f = _logits_with_near_ties(rng, n=50)
    assert expected_agreement(f, f.copy()) == (100.0, 0.0)
    a = compare(f, f + rng.normal(0.0, 0.3, size=f.shape), labels=None)
    assert a.expected_agreement is not None and 0 < a.agreement_sd < 10
    one_output = compare(f[:, :1], f[:, :1] + 0.1, labels=None)
    assert one_output.expected_agreement is None and one_output.agreement_sd is None


def test_centre_crop_top1() -> None:
    """Labels built so that float gets 4 of 5 centre crops and the quantized model 3 of 5."""
    f = np.tile(np.eye(3)[[0, 1, 2, 0, 1]], (2, 1))  # rows 0-4 centre crops, 5-9 other views
    q = f.copy()
    q[2] = [0.0, 0.0, 0.9]
    q[3] = [0.0, 1.0, 0.0]  # a centre crop flips
    labels = np.array([0, 1, 1, 0, 1, 2, 2, 2, 2, 2])  # row 2's label is wrong for both
    a = compare(f, q, labels, centre=np.arange(5))
    assert (a.centre_samples, a.float_top1_centre, a.quant_top1_centre) == (5, 80.0, 60.0)
    assert compare(f, q, labels).float_top1_centre is None
