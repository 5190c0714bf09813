"""The report's sentences: one per comparison, one per technique of the paper's claim,
one per stratum (other settings), what the number of seeds allows, and with
``record.curvature`` what the techniques do to sharpness and whether lower sharpness
goes with larger gamma. Pure: rows
of techniques.csv in, strings out; the outcomes themselves are decided in tables.py.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from trajreg.study import stats
from trajreg.study.spec import ReportOptions
from trajreg.study.tables import (
    CURVATURE_CORRELATED,
    FASTER,
    INCONCLUSIVE,
    LARGER,
    MIN_STRATUM,
    NOT_COMPARABLE,
    NOT_MEASURED,
    SLOWER,
    SMALLER,
    SPEED_AGAINST,
)


def fmt(x: Any) -> str:
    """A number as the report prints it: 4 significant digits, n/a, +inf, -inf.

    >>> fmt(0.123456), fmt(float("nan")), fmt(float("-inf")), fmt(3), fmt(None)
    ('0.1235', 'n/a', '-inf', '3', '')
    """
    if x is None:
        return ""
    if isinstance(x, float | np.floating):
        if math.isnan(x):
            return "n/a"
        if math.isinf(x):
            return "+inf" if x > 0 else "-inf"
        return f"{x:.4g}"
    return str(x)


def _signed(x: float) -> str:
    return fmt(x) if not (isinstance(x, float) and x > 0 and math.isfinite(x)) \
        else f"+{fmt(x)}"


def _where(row: pd.Series) -> str:
    ctx = f"; {row['context']}" if row["context"] else ""
    return f"on {row['architecture']} ({row['dataset']}{ctx}) [{row['block']}]"


def verdict(row: pd.Series) -> str:
    """One sentence on one comparison (a row of techniques.csv)."""
    head = f"{row['technique']} {row['with']} vs {row['without']} {_where(row)}"
    name = row["metric"].rsplit("_", 1)[0]
    if row["outcome_gamma"] == NOT_COMPARABLE:
        return f"{head}: not comparable ({row['note'] or 'no comparable pair'})."
    n = int(row["n"])
    g = (f"{name} {row['outcome_gamma']}"
         + (f" with {row['with']}" if row["outcome_gamma"] in (LARGER, SMALLER) else "")
         + f": median paired difference {_signed(row['diff_median'])} (95% interval "
         f"{fmt(row['diff_low'])} to {fmt(row['diff_high'])}; sign test p = "
         f"{fmt(row['p_value'])}, Holm {fmt(row['p_holm'])}; larger in "
         f"{int(row['larger_pairs'])} of {n} pairs)")
    s = (f"convergence {row['outcome_speed']}"
         + (f" with {row['with']}" if row["outcome_speed"] in (FASTER, SLOWER) else "")
         + f": median auc_log_loss difference {_signed(row['speed_diff_median'])} (95% "
         f"interval {fmt(row['speed_diff_low'])} to {fmt(row['speed_diff_high'])}; p = "
         f"{fmt(row['speed_p_value'])}, Holm {fmt(row['speed_p_holm'])}; faster in "
         f"{int(row['faster_pairs'])} of {n} pairs)")
    undecided = INCONCLUSIVE in (row["outcome_gamma"], row["outcome_speed"])
    tail = f" {'Why not decided' if undecided else 'Notes'}: {row['note']}." \
        if row["note"] else ""
    return f"{head}: {g}; {s}.{sharpness(row)}{tail}"


def sharpness(row: pd.Series) -> str:
    """The comparison's sharpness (median lambda_max, record.curvature) as a sentence
    to append ("" where no pair measured it)."""
    outcome = row.get("outcome_lambda_max", NOT_MEASURED)
    if outcome in (NOT_MEASURED, NOT_COMPARABLE):
        return ""
    decided = outcome in (LARGER, SMALLER)
    return (f" Sharpness (median lambda_max) {outcome}"
            + (f" with {row['with']}" if decided else "")
            + f": median paired difference {_signed(row['lambda_max_diff_median'])} (95% "
            f"interval {fmt(row['lambda_max_diff_low'])} to {fmt(row['lambda_max_diff_high'])}"
            f"; Holm p {fmt(row['lambda_max_p_holm'])}); fraction of sampled steps above the "
            f"edge of stability {fmt(row['above_fraction_with'])} with vs "
            f"{fmt(row['above_fraction_without'])} without "
            f"({row['outcome_above_fraction']}).")


def _count(part: pd.DataFrame, column: str, word: str) -> int:
    return int((part[column] == word).sum())


def technique_verdicts(tech: pd.DataFrame) -> list[str]:
    """Per technique of the paper's claim, over its comparisons: the decided outcomes
    (only those count), how many were inconclusive or not comparable, and what that
    says about the claim that the technique raises gamma and speeds up convergence."""
    out = []
    claims = tech[tech["role"] == "claim"]
    for name, part in claims.groupby("technique", sort=False):
        n = len(part)
        larger, smaller = _count(part, "outcome_gamma", LARGER), \
            _count(part, "outcome_gamma", SMALLER)
        faster, slower = _count(part, "outcome_speed", FASTER), \
            _count(part, "outcome_speed", SLOWER)
        g_inc, s_inc = _count(part, "outcome_gamma", INCONCLUSIVE), \
            _count(part, "outcome_speed", INCONCLUSIVE)
        nc = _count(part, "outcome_gamma", NOT_COMPARABLE)
        metric = "kappa_hat" if part["metric"].str.startswith("kappa").all() else "gamma_hat"
        if larger + smaller == 0:
            claim = ("is undecided: no comparison of its " + metric + " was decided")
        elif smaller == 0 and slower == 0 and faster > 0:
            claim = "supports the claim (larger " + metric + " and faster convergence)"
        elif smaller == 0 and slower == 0:
            claim = ("supports the " + metric + " half of the claim; no speed comparison "
                     "was decided")
        elif larger == 0:
            claim = "contradicts the claim (" + metric + " smaller with the technique)"
        elif smaller == 0:
            claim = ("is mixed: " + metric + " larger wherever decided, but convergence "
                     f"slower in {slower} of the {faster + slower} decided speed comparisons")
        else:
            claim = "is mixed: " + metric + " larger in some decided comparisons, smaller in others"
        out.append(
            f"{name} ({n} comparison{'s' if n != 1 else ''}): {metric} larger with the "
            f"technique in {larger} and smaller in {smaller} decided comparisons "
            f"({g_inc} inconclusive, {nc} not comparable); convergence faster in {faster} "
            f"and slower in {slower} ({s_inc} inconclusive). The evidence {claim}.")
    return out


def strata_descriptions(tech: pd.DataFrame) -> list[str]:
    """One sentence per comparison along an axis that is not one of the paper's
    techniques (learning rate, width, batch size, data, ...): the effect, described."""
    out = []
    for _, row in tech[tech["role"] == "stratum"].iterrows():
        name = row["metric"].rsplit("_", 1)[0]
        out.append(f"{row['technique']} ({row['axis']}) {row['with']} vs {row['without']} "
                   f"{_where(row)}: {name} {row['outcome_gamma']} (median difference "
                   f"{_signed(row['diff_median'])}), convergence {row['outcome_speed']} "
                   f"(median auc difference {_signed(row['speed_diff_median'])}). "
                   "A description of this setting's effect, not evidence about the "
                   "claim's techniques.")
    return out


def power_note(tech: pd.DataFrame, options: ReportOptions) -> str:
    """What the number of pairs allows under the Holm correction, in words."""
    tested = tech[tech["n"] > 0]
    if not len(tested):
        return "No comparison has a comparable pair yet."
    m = len(tested)
    n_min, n_max = int(tested["n"].min()), int(tested["n"].max())
    strictest = options.alpha / m
    need = next(k for k in range(1, 64) if stats.smallest_p(k) < strictest)
    never = int((tested["n"].map(stats.smallest_p) >= options.alpha).sum())
    text = (f"{m} comparisons were tested, with {n_min}" + (f" to {n_max}" if n_max != n_min
                                                            else "")
            + f" comparable pairs each. With n pairs the exact sign test's smallest "
            f"two-sided p is 2 x 0.5^n ({stats.smallest_p(n_min):.3g} for {n_min}); Holm "
            f"compares the smallest of the {m} p-values with alpha/{m} = {strictest:.3g}, "
            f"so even when every pair agrees a decision needs {need} pairs or more (fewer "
            f"can be decided only after other comparisons were).")
    if never:
        text += (f" {never} comparison{'s' if never != 1 else ''} cannot be decided at all: "
                 f"too few pairs (the smallest possible p is >= alpha = {options.alpha:g}; "
                 "3 of 3 pairs agreeing gives p = 0.25 two-sided, 0.125 one-sided).")
    return text


def sharpness_verdicts(tech: pd.DataFrame) -> list[str]:
    """Per technique of the claim whose comparisons measured curvature: does it lower
    sharpness (median lambda_max) and the fraction of steps above the edge of
    stability? Only decided comparisons count."""
    out = []
    claims = tech[(tech["role"] == "claim") & (tech["outcome_lambda_max"] != NOT_MEASURED)]
    for name, part in claims.groupby("technique", sort=False):
        n = len(part)
        lower, higher = _count(part, "outcome_lambda_max", SMALLER), \
            _count(part, "outcome_lambda_max", LARGER)
        a_lower, a_higher = _count(part, "outcome_above_fraction", SMALLER), \
            _count(part, "outcome_above_fraction", LARGER)
        if lower + higher == 0:
            word = "is undecided"
        elif higher == 0:
            word = "lowers sharpness wherever decided"
        elif lower == 0:
            word = "raises sharpness wherever decided"
        else:
            word = "is mixed"
        out.append(
            f"{name} ({n} comparison{'s' if n != 1 else ''} with curvature): median "
            f"lambda_max smaller with the technique in {lower} and larger in {higher} decided "
            f"comparisons ({_count(part, 'outcome_lambda_max', INCONCLUSIVE)} inconclusive, "
            f"{_count(part, 'outcome_lambda_max', NOT_COMPARABLE)} not comparable); the "
            f"fraction of sampled steps above the edge of stability smaller in {a_lower} and "
            f"larger in {a_higher}. The technique {word}.")
    return out


def sharpness_correlations(corr: pd.DataFrame) -> list[str]:
    """The pooled within-stratum rhos of the median lambda_max with the metric and with
    speed, in words: does lower sharpness go with larger gamma, and with faster
    convergence? (Empty without curvature rows.)"""
    out = []
    sharp = corr[corr["metric"] == CURVATURE_CORRELATED]
    strata = sharp[(sharp["scope"] == "stratum") & sharp["spearman_rho"].notna()
                   & ~sharp["note"].fillna("").str.contains("not pooled")]
    for _, row in sharp[sharp["scope"] == "pooled"].iterrows():
        speed = row["against"] == SPEED_AGAINST
        other = "faster convergence" if speed else f"larger {row['against']}"
        question = f"Does lower sharpness go with {other}?"
        rho, low, high = (float(row[k]) for k in ("spearman_rho", "ci_low", "ci_high"))
        if not math.isfinite(rho):
            out.append(f"{question} No within-stratum rho among the claim's techniques (a "
                       f"stratum needs {MIN_STRATUM} trained runs with curvature).")
            continue
        k = int(((strata["against"] == SPEED_AGAINST) == speed).sum())
        interval = (f"95% interval {fmt(low)} to {fmt(high)}" if math.isfinite(low)
                    else "no interval from fewer than 2 strata")
        if math.isfinite(high) and high < 0:
            answer = f"yes, lower sharpness goes with {other}"
        elif math.isfinite(low) and low > 0:
            answer = f"no, higher sharpness goes with {other}"
        else:
            answer = "undecided"
        out.append(f"{question} Spearman's rho of the runs' median lambda_max with "
                   f"{'speed (-auc_log_loss)' if speed else row['against']} within the "
                   f"claim's strata (rho < 0: lower sharpness with {other}), n-weighted "
                   f"mean over {k} strat{'um' if k == 1 else 'a'} of {int(row['n'])} runs: "
                   f"{_signed(rho)} ({interval}): {answer}.")
    return out
