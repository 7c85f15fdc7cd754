"""AlpacaEval 2's length-controlled (LC) win rate.

When the `alpaca_eval` package is installed, the rows are AlpacaEval's own
instructions (row id = the instruction's index) and its GLM data can be had,
the LC win rate is the package's own (`get_length_controlled_winrate`, the
leaderboard's `length_controlled_v1` GLM: length term, per-instruction
difficulty, regularised towards its gamed baselines). Otherwise it is ours,
`lc_win_rate`: AlpacaEval's GLM without the terms that need its leaderboard's
data, fitted as the package fits it (its `length_controlled_minimal`), numpy
only. `length_controlled` returns the value and a note naming which was used.
"""
from __future__ import annotations

import math
import warnings

# What the package's LogisticRegressionCV tries (sklearn's default grid: 10 values
# of C, 1e-4 .. 1e4 evenly on a log scale) and its folds.
_N_CS = 10
_FOLDS = 5
# Its fit without cross-validation (fewer rows than folds).
_C_DEFAULT = 100.0


def _soft_logloss(X, y, w):
    """Log-loss of each row for soft targets y in [0, 1]."""
    import numpy as np

    z = X @ w
    return y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)


def _fit_l1(X, y, C: float):
    """argmin_w |w|_1 + C * sum(soft log-loss): an L1-penalised logistic regression
    without intercept (the objective liblinear minimises), by proximal Newton steps."""
    import numpy as np

    k = X.shape[1]
    w = np.zeros(k)

    def objective(v):
        return C * float(_soft_logloss(X, y, v).sum()) + float(np.abs(v).sum())

    f = objective(w)
    for _ in range(200):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        g = C * X.T @ (p - y)
        H = C * (X * (p * (1 - p))[:, None]).T @ X
        # The quadratic model plus the L1 term, minimised coordinate by coordinate.
        d = np.zeros(k)
        for _ in range(100):
            before = d.copy()
            for j in range(k):
                a = max(H[j, j], 1e-12)
                b = g[j] + H[j] @ d - H[j, j] * d[j]
                u = w[j] - b / a
                u = math.copysign(max(abs(u) - 1 / a, 0.0), u)
                d[j] = u - w[j]
            if np.max(np.abs(d - before)) < 1e-13:
                break
        decrease = float(g @ d + np.abs(w + d).sum() - np.abs(w).sum())
        if decrease > -1e-13:
            break
        t = 1.0
        while t > 1e-12 and objective(w + t * d) > f + 0.25 * t * decrease:
            t /= 2
        w = w + t * d
        f_new = objective(w)
        if f - f_new < 1e-13 * (1 + abs(f)):
            break
        f = f_new
    return w


def lc_win_rate(preferences, model_lens, baseline_lens) -> float:
    """Our LC win rate: the preference for the model (1 win, 0.5 tie, 0 loss:
    soft targets) modelled as logistic(b * tanh(length difference / its
    standard deviation) + c), then the predicted preference at equal length,
    logistic(c). Fitted as alpaca_eval fits its GLMs: L1 penalty, C picked
    from 10 values by 5-fold cross-validated log-loss (rows in folds as its
    GroupKFold puts them), then refitted on every row. (The leaderboard's GLM
    adds a per-instruction difficulty fitted on its own models' annotations,
    which a local run does not have.)"""
    import numpy as np

    y = np.asarray(preferences, dtype=float)
    n = len(y)
    if n == 0:
        return math.nan
    delta = np.asarray(model_lens, dtype=float) - np.asarray(baseline_lens, dtype=float)
    sd = float(delta.std(ddof=1)) if n > 1 else 0.0
    x = np.tanh(delta / sd) if sd > 0 else np.zeros(n)
    X = np.stack([x, np.ones(n)], axis=1)
    if n < _FOLDS:
        C = _C_DEFAULT
    else:
        # GroupKFold with equal-sized groups deals the rows out from the last one.
        fold = (n - 1 - np.arange(n)) % _FOLDS
        cs = np.logspace(-4, 4, _N_CS)
        scores = np.zeros(_N_CS)
        for i, c in enumerate(cs):
            for k in range(_FOLDS):
                test = fold == k
                w = _fit_l1(X[~test], y[~test], c)
                p = np.clip(1.0 / (1.0 + np.exp(-(X[test] @ w))), 1e-15, 1 - 1e-15)
                yt = y[test]
                scores[i] += float(np.mean(yt * np.log(p) + (1 - yt) * np.log(1 - p)))
        C = float(cs[int(np.argmax(scores))])
    w = _fit_l1(X, y, C)
    return float(1.0 / (1.0 + np.exp(-w[1])))


def alpaca_eval_lc(preferences, model_lens, baseline_lens, indices) -> tuple[float, str]:
    """alpaca_eval's LC win rate (its default GLM) and the package's version; raises
    ImportError without the package, anything else where its GLM cannot be fitted
    (its GLM data cannot be fetched, the indices are not AlpacaEval's)."""
    with warnings.catch_warnings():  # its import warns about pkg_resources
        warnings.simplefilter("ignore")
        import alpaca_eval
        import pandas as pd
        from alpaca_eval.metrics import get_length_controlled_winrate

    # The package reads only the outputs' lengths, preference 1 (baseline,
    # output_1) .. 2 (the model, output_2), and the instruction's index.
    df = pd.DataFrame({
        "preference": [1.0 + float(p) for p in preferences],
        "output_1": ["x" * int(n) for n in baseline_lens],
        "output_2": ["x" * int(n) for n in model_lens],
        "index": [int(i) for i in indices],
        "generator_1": "baseline", "generator_2": "model", "annotator": "raveval",
    })
    out = get_length_controlled_winrate(df, save_weights_dir=None, is_warn_extreme_changes=False)
    return float(out["length_controlled_winrate"]) / 100, str(alpaca_eval.__version__)


def length_controlled(preferences, model_lens, baseline_lens, indices=None) -> tuple[float, str]:
    """(LC win rate, note saying how it was computed). `indices`: the rows'
    instruction indices in AlpacaEval's set, where the rows are its instructions
    (then alpaca_eval's own GLM is tried first); None: ours only."""
    if len(preferences) == 0:
        return math.nan, ""
    ours = "raveval GLM (alpaca_eval's length_controlled_minimal form)"
    if indices is None:
        return lc_win_rate(preferences, model_lens, baseline_lens), ours
    try:
        value, version = alpaca_eval_lc(preferences, model_lens, baseline_lens, indices)
        return value, f"alpaca_eval {version} length_controlled_v1"
    except ImportError:
        why = "alpaca_eval not installed"
    except Exception as e:  # its GLM data could not be fetched, or the rows are not its instructions
        first = (str(e).strip().splitlines() or [""])[0][:160]
        why = f"alpaca_eval failed: {type(e).__name__}: {first}"
    return lc_win_rate(preferences, model_lens, baseline_lens), f"{ours}; {why}"
