"""The regularity principle: pure functions over trajectory arrays.

The mathematics is documented in docs/principle.md. Every function accepts
numpy arrays, memmaps or torch tensors and computes in float64; nothing here
does I/O or imports torch.
"""

from trajreg.principle.bound import BoundCheck, convergence_bound
from trajreg.principle.epochwise import (
    EpochwiseQuantities,
    epochwise_gamma_hat,
    epochwise_quantities,
)
from trajreg.principle.estimate import (
    fraction_obeying,
    gamma_bar,
    gamma_bar_per_epoch,
    gamma_hat,
    gamma_hat_per_epoch,
    kappa_bar,
    kappa_hat,
    r_quantiles,
    rp_holds,
    star_convex_fraction,
    star_convexity,
)
from trajreg.principle.quantities import (
    TrajectoryQuantities,
    cosine,
    default_delta,
    identity_residual,
    loss_gap,
    ratio,
    step_quantities,
    trajectory_quantities,
)
from trajreg.principle.speed import auc_log_loss, steps_to_threshold
from trajreg.principle.window import converging_window

__all__ = [
    "BoundCheck",
    "EpochwiseQuantities",
    "TrajectoryQuantities",
    "auc_log_loss",
    "convergence_bound",
    "converging_window",
    "cosine",
    "default_delta",
    "epochwise_gamma_hat",
    "epochwise_quantities",
    "fraction_obeying",
    "gamma_bar",
    "gamma_bar_per_epoch",
    "gamma_hat",
    "gamma_hat_per_epoch",
    "identity_residual",
    "kappa_bar",
    "kappa_hat",
    "loss_gap",
    "r_quantiles",
    "ratio",
    "rp_holds",
    "star_convex_fraction",
    "star_convexity",
    "step_quantities",
    "steps_to_threshold",
    "trajectory_quantities",
]
