"""Settings and statistics of the accelerated optimiser (:mod:`qmml.accelerated`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from qmml import QmmlError
from qmml.forcemixing import RunStats


INNER_OPTIMIZERS = ("FIRE", "LBFGS")


@dataclass
class AcceleratedSettings:
    """Knobs of the accelerated optimiser (defaults: fewest QM calls measured on stand-in and
    tblite screw and edge cores, benchmarks/README.md)."""

    space: str = "quadratic"         # surrogate descriptor space: linear | quadratic
    lambda0: float = 1e-4            # Tikhonov weight towards Θ_i (per unit GᵀG scale)
    force_weight: float = 0.1        # 1/Å: absolute QM-force rows next to the secants
                                     # (0: secants only, Θ_i until the second QM call)
    trust_radius: float = 0.3        # Å: initial max atomic displacement per outer step
    trust_min: float = 0.01
    trust_max: float = 0.3           # 1 Å let an edge core jump to another minimum
    inner_optimizer: str = "LBFGS"   # INNER_OPTIMIZERS (measured: LBFGS ~3x fewer steps)
    inner_fmax_ratio: float = 0.2    # surrogate relaxed to this fraction of fmax
    inner_steps: int = 3000
    inner_stall_steps: int = 30      # a surrogate relaxation whose largest force, once
                                     # below its start's, has not reached a new low for
                                     # this many steps ends at its lowest-force point
                                     # (0: never)
    delta_correction: bool = True
    secant_correction: bool = True   # linear residual term: surrogate = truth at every secant
    fallback_after: int = 2          # consecutive rejected steps before plain steps
    fallback_steps: int = 3          # plain FIRE steps on true forces per fallback
    ml_prerelax: bool = True         # relax with Θ_i alone before the first QM call
    fixed_point_step: bool = True    # if the relaxation hits the trust radius: Newton-Krylov
                                     # to the surrogate's nearest fixed point, if inside it
    neb_probe: bool = True           # NEB (4+ moving images): QM calls on every other
                                     # image train a first surrogate, relaxed before the
                                     # whole band is QM-called
    neb_start_check: bool = True     # NEB: first a QM call on the given band's middle
                                     # image; if its NEB force is below fmax, the band
                                     # starts where it is (no ML-only band, no probes)
    active_width: float | None = None  # Å: the surrogate relaxation moves the free atoms
                                     # within this of a QM atom (at least the buffer
                                     # width; inf: all; None: buffer + 2 ML cutoffs
                                     # where their cluster holds at most half the
                                     # atoms); the far field follows in ML-only
                                     # relaxations (no QM call)
    keep_ratio: float = 0.5          # NEB: images whose surrogate move can be undone with
                                     # the surrogate band still below keep_ratio*fmax stay
                                     # at their QM point (no QM call); 0: every image moves
    freeze_ratio: float = 0.8        # NEB: images whose true NEB force is at most this
                                     # times fmax stay still while the others move (0:
                                     # none)

    def check(self) -> None:
        if self.space not in ("linear", "quadratic"):
            raise QmmlError(f"accelerated: space must be 'linear' or 'quadratic', "
                            f"got '{self.space}'")
        if not (0 < self.trust_min <= self.trust_radius <= self.trust_max):
            raise QmmlError("accelerated: need 0 < trust_min <= trust_radius <= trust_max")
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            # the surrogate relaxation is stepped one ASE step at a time (trust radius);
            # ODE12r has no single step to take
            raise QmmlError(f"accelerated: inner_optimizer must be one of "
                            f"{', '.join(INNER_OPTIMIZERS)}, got '{self.inner_optimizer}'")
        if self.inner_stall_steps < 0:
            raise QmmlError(f"accelerated: inner_stall_steps must be >= 0, "
                            f"got {self.inner_stall_steps}")
        if self.force_weight < 0:
            raise QmmlError(f"accelerated: force_weight must be >= 0, got {self.force_weight}")
        if not 0 <= self.keep_ratio < 1:
            raise QmmlError(f"accelerated: keep_ratio must be in [0, 1), got {self.keep_ratio}")
        if not 0 <= self.freeze_ratio <= 1:
            raise QmmlError(f"accelerated: freeze_ratio must be in [0, 1], "
                            f"got {self.freeze_ratio}")
        if self.active_width is not None and not self.active_width > 0:
            raise QmmlError(f"accelerated: active_width must be > 0, got {self.active_width}")
        if self.lambda0 <= 0:
            raise QmmlError("accelerated: lambda0 must be > 0 (the fit is underdetermined "
                            "after the first QM call)")


@dataclass
class AcceleratedStats(RunStats):
    """RunStats plus what the surrogate loop did."""

    outer_steps: int = 0
    rejected_steps: int = 0
    surrogate_failures: int = 0   # rejected steps whose surrogate relaxation failed (no QM call)
    fallback_steps: int = 0
    surrogate_hard_residuals: list = field(default_factory=list)
    surrogate_thetas: list = field(default_factory=list)   # kept for audit, never written
    prediction_errors: list = field(default_factory=list)
    trust_history: list = field(default_factory=list)
    surrogate_steps: int = 0
    seconds_fit: float = 0.0        # descriptor rows and surrogate fits
    seconds_surrogate: float = 0.0  # surrogate relaxations (ML-only start included)
    kept_images: int = 0            # NEB image moves undone (QM calls saved)
    # every QM-called geometry (_Evaluation, in call order; a resumed run replays them):
    # the QM data the surrogates were trained on, kept for retraining (qm_point_frames)
    qm_points: list = field(default_factory=list)
    single_images: list = field(default_factory=list)  # NEB images QM-called alone:
                              # (moving-image index, positions, true mixed forces)
    accepted_point: int = 0   # index into qm_points of the geometry the run ended at
    n_seeds: int = 0          # the first n_seeds qm_points are replayed seeds, not new calls

    @property
    def surrogate_hard_residual_max(self) -> float:
        return max(self.surrogate_hard_residuals, default=0.0)
