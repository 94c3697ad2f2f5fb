"""Over-optimisation (rlhf_lens.analyses.dynamics): Gao et al.'s functional forms recovered from synthetic data with
known alpha and beta, the best-of-n KL, and the verdict on evaluations whose gold reward rises then falls."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rlhf_lens.analyses.dynamics import best_of_n_distance, gao_curve, gao_fit, overoptimization


@pytest.mark.parametrize(("form", "alpha", "beta"), [("rl", 1.2, 0.4), ("rl", 0.8, -0.1), ("bon", 1.5, 0.3)])
def test_the_fits_recover_known_parameters(form, alpha, beta):
    d = np.linspace(0.0, 6.0, 25)
    exact = gao_fit(d, gao_curve(d, alpha, beta, form), form)
    assert exact.alpha == pytest.approx(alpha, abs=1e-9) and exact.beta == pytest.approx(beta, abs=1e-9) and exact.r2 == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = gao_fit(d, gao_curve(d, alpha, beta, form) + rng.normal(0, 0.05, d.shape), form)
    assert noisy.alpha == pytest.approx(alpha, abs=0.1) and noisy.beta == pytest.approx(beta, abs=0.05)


def test_the_peak_is_where_the_curve_is_largest():
    rl = gao_fit([0.5, 1, 2, 3, 4], gao_curve([0.5, 1, 2, 3, 4], 1.0, 0.5, "rl"), "rl")
    assert rl.peak_d == pytest.approx(math.exp(1.0 / 0.5 - 1.0))
    grid = np.linspace(0.01, 10, 10_000)
    assert grid[np.argmax(gao_curve(grid, 1.0, 0.5, "rl"))] == pytest.approx(rl.peak_d, abs=2e-3)
    bon = gao_fit([1, 2, 3], gao_curve([1, 2, 3], 2.0, 0.5, "bon"), "bon")
    assert bon.peak_d == pytest.approx(2.0)  # alpha / (2 beta)
    rising = gao_fit([1, 2, 3], gao_curve([1, 2, 3], 1.0, -0.2, "rl"), "rl")
    assert rising.peak_d == math.inf


def test_the_best_of_n_kl_is_the_analytic_one():
    assert best_of_n_distance(1) == 0.0
    assert best_of_n_distance(4) ** 2 == pytest.approx(math.log(4) - 3 / 4)


def test_fit_errors_name_the_problem():
    with pytest.raises(ValueError, match="form must be one of"):
        gao_fit([1, 2], [1, 2], "ppo")
    with pytest.raises(ValueError, match="at least two evaluations"):
        gao_fit([0, 1], [0, 1])


def evaluations(gold_by_step: dict[int, float], kl_by_step: dict[int, float], proxy_by_step: dict[int, float], n: int = 200, seed: int = 0):
    """Evaluation samples: n prompts per step, gold = the step's mean plus per-prompt noise shared across steps."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 0.3, n)
    rows = []
    for step in gold_by_step:
        for prompt in range(n):
            rows.append(
                {
                    "step": step,
                    "prompt_id": f"p{prompt}",
                    "gold_reward": gold_by_step[step] + base[prompt] + rng.normal(0, 0.05),
                    "reward": proxy_by_step[step] + base[prompt],
                    "seq_kl": kl_by_step[step],
                }
            )
    return pd.DataFrame(rows)


KL = {0: 0.0, 10: 1.0, 20: 4.0, 30: 9.0, 40: 16.0}
PROXY = {0: 0.0, 10: 1.0, 20: 1.8, 30: 2.4, 40: 2.8}


def test_gold_rising_then_falling_while_the_proxy_rises_is_flagged():
    d = {s: math.sqrt(k) for s, k in KL.items()}
    gold = {s: float(gao_curve(d[s], 1.0, 0.6, "rl")) for s in KL}  # peaks at d = e^(1/0.6 - 1) = 1.95
    result = overoptimization(evaluations(gold, KL, PROXY))
    assert result.verdicts[0].level == "flag" and result.meta["gold_best_step"] == 20
    assert result.meta["gold_alpha"] == pytest.approx(1.0, abs=0.05) and result.meta["gold_beta"] == pytest.approx(0.6, abs=0.05)
    assert list(result.df["d"]) == pytest.approx([0, 1, 2, 3, 4])
    assert result.plot() is not None and "flag" in str(result.to_html()).lower()
    stricter = overoptimization(evaluations(gold, KL, PROXY), fall_z=1000.0)  # the setting reaches the verdict
    assert stricter.verdicts[0].level != "flag" and "1000 paired standard errors" in stricter.verdicts[0].threshold


def test_gold_rising_with_the_proxy_is_ok():
    gold = {s: 0.2 * p for s, p in PROXY.items()}
    result = overoptimization(evaluations(gold, KL, PROXY))
    assert result.verdicts[0].level == "ok" and result.meta["gold_best_step"] == 40
    with pytest.raises(ValueError, match="at least 3 evaluations"):
        overoptimization(evaluations({0: 0.0, 10: 0.1}, KL, PROXY))
    with pytest.raises(ValueError, match="lack columns"):
        overoptimization(pd.DataFrame({"step": [0]}))


def test_a_result_read_back_from_the_cache_without_a_peak_still_renders():
    gold = {s: 0.1 * math.sqrt(k) ** 1.5 for s, k in KL.items()}  # convex in d: beta < 0, no peak
    result = overoptimization(evaluations(gold, KL, PROXY))
    cached = result.cache_meta()
    cached["meta"] = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in cached["meta"].items()
    }  # as JSON stores them
    assert result.meta["gold_peak_d"] == math.inf
    again = type(result).from_cache(result.df, cached)
    assert again.headlines()[0][1].endswith("inf") and again.plot() is not None
