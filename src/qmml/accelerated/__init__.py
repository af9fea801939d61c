"""ML-accelerated QM/ML relaxation: a retrained surrogate between QM calls.

QM calls are the whole cost of force-mixed QM/ML, and the ML potential is linear in Θ, so a
potential retrained on the QM forces gathered so far is one small linear solve.

0. before the first QM call, relax with the iteration's potential Θ_i alone (the ML
   minimum, no QM call; ``ml_prerelax``): a built dislocation starts from its elastic
   field, several eV/Å from equilibrium, and the ML potential makes those large moves
   for free, so QM calls start where only the QM−ML difference is left to relax.

The outer loop (one QM call per image per outer step):

1. evaluate the TRUE QM/ML forces at the current geometry x_k (through the QM cache);
   converged when they are below ``fmax`` (the only convergence test ever used);
2. retrain a surrogate Θ_k on the raw QM forces of the QM atoms at EVERY QM-called
   geometry of this relaxation (:class:`ForceDifferences`): as secants, the force change
   from the anchor x_k to each geometry divided by its distance from x_k, and as the
   absolute forces themselves (weight ``force_weight``, from the first call on); hard
   rows = energy rows of the hard set (exact, residual recorded per surrogate), Tikhonov
   towards the iteration's potential Θ_i (``qmml.fitting.solve_constrained``);
3. surrogate force field = force mixing with the surrogate in place of QM: QM atoms get
   Θ_k forces + a constant per-atom offset δ = F_QM(x_k) − F_Θk(x_k) (the Δ-correction:
   the surrogate reproduces the true QM/ML forces exactly at x_k, so a QM/ML stationary
   point is a surrogate stationary point), all other atoms get Θ_i forces exactly as in the
   real QM/ML calculator, with the same zero-mean correction as ASE ``ForceQMMM``;
   plus a linear term J·d on the QM atoms (d: displacement of the QM cluster's atoms from
   x_k), J the least-norm matrix that makes the surrogate equal the true QM forces at
   EVERY QM-called geometry (a multisecant Broyden update on top of the physical model:
   what the constrained SNAP cannot fit of the secants, J carries);
4. relax the surrogate (cheap: two SNAP evaluations per step) to ``inner_fmax_ratio``·fmax,
   but never further than the trust radius r (max atomic displacement from x_k); if the
   relaxation reaches r, look for the surrogate's fixed point nearest x_k by Newton-Krylov
   and step there if it lies inside r (``fixed_point_step``): near the QM/ML minimum the
   surrogate can have negative curvature along a core mode the secants have not explored
   (Θ_i's own), which a minimiser leaves and Newton does not (a minimiser leaves such a
   saddle slowly: a relaxation that reaches r in a few steps gets no search);
5. call QM at the new point x_{k+1}.  Prediction error e = max |F_sur(x_{k+1}) − F_true|.
   Accept x_{k+1} if its true fmax dropped or e < fmax_true(x_k) (the surrogate predicted
   better than "nothing changes"); otherwise reject (stay at x_k; the new point still
   joins the training data) and shrink r.  Grow r after a good step that hit r.  A
   surrogate relaxation that fails is a rejected step without a QM call.  After
   ``fallback_after`` consecutive rejections, ``fallback_steps`` plain FIRE steps on the
   true QM/ML forces are taken (each one a QM call, all of them training data).

NEB.  The moving images form one system: one surrogate is trained on the rows of every
image (their QM clusters differ, the surrogate is one potential), and the surrogate band
(ASE NEB, spline tangents, optional climbing image: :mod:`qmml.nebband`) is relaxed in
step 4.  The band starts where it is given if its middle image, QM-called alone, already
has an NEB force below fmax (``neb_start_check``: an interpolated path can be converged,
and Θ_i's band would lead away from it); otherwise from Θ_i's ML-only band.  Three
NEB-only savings: before the first QM call on the whole band, every other image is
QM-called alone (``neb_probe``, bands of 4 or more moving images) and a surrogate fitted
to those forces relaxes the band first (unless it runs to the trust radius: unstable, not
taken); in step 4, the images whose true NEB force is already below
``freeze_ratio``·fmax stay where they are while the band relaxes around them (unless
that takes one above fmax: its NEB force there is exact, only its tangent and springs
change), and after it an image whose move can be undone with the surrogate band still
below ``keep_ratio``·fmax is put back at its QM point; in step 5 both are cache hits.

Everything is retrained from the data, nothing is fitted across relaxations: the
surrogates are per-relaxation scaffolding and are never written as a potential.  What is
kept is their training data: every QM-called geometry with its true mixed forces
(:func:`qm_point_frames`, ``qmml relax/neb --qm-frames``), which the pipeline's retraining
reads instead of the final frame alone.

Hard set.  The caller passes the iteration's hard configurations (the pipeline's strain +
vacancy-NEB sets); without them, :func:`default_hard_set` generates a SMALL strain set of
Θ_i in process (3×3×3 cells, 6 modes × 5 strains in ±1 %): it has the same row space for
homogeneous strain as the paper's 102-cell set at a fraction of the cost, so the elastic
constants and lattice parameter of every surrogate equal Θ_i's.  (Surrogates only steer
the relaxation; the hard rows keep their bulk physics sane far from the core.)

Seeds.  ``seeds`` are the QM points of an earlier run of the same structure (the next
iteration's relaxation of the same dislocation, a rerun with a new potential or a tighter
fmax; ``qmml relax/neb --seed-frames``).  The QM forces of their QM atoms do not depend on
the ML potential, so each seed whose QM clusters are all in the cache joins the training
data without a QM call (a seed missing from the cache is skipped, never computed), and
the run starts from the seed with the lowest true fmax instead of the ML minimum.

Resume.  After every outer step the loop state (all QM-called geometries, the accepted
index, trust radius, counters: one :class:`~qmml.accelerated.loop.LoopState`) is pickled
atomically.  A restarted run replays the stored geometries through the QM cache (zero
real QM calls), rebuilds the training rows and continues.  A checkpoint that is not such
a state is foreign: the run starts afresh, and every QM call it had made is a cache hit.

A wrong surrogate is a rejected step, never a crash: a surrogate relaxation that fails
(a LAMMPS error such as lost atoms, non-finite forces or positions) is counted as a
rejected step (``surrogate_failures``), logged in one line, and shrinks the trust radius;
no QM call is made for it.

Modules: :mod:`~qmml.accelerated.settings` (knobs and statistics),
:mod:`~qmml.accelerated.surrogate` (the surrogate force field, its training data and
hard set), :mod:`~qmml.accelerated.system` (true and surrogate copies of the moving
images), :mod:`~qmml.accelerated.records` (what an outer step produces and judges),
:mod:`~qmml.accelerated.loop` (the outer loop, its checkpointed state and the entry
points), :mod:`~qmml.accelerated.points` (QM points as frames and seeds).
"""
from qmml.accelerated.loop import AcceleratedOptimizer, neb_accelerated, relax_accelerated
from qmml.accelerated.points import qm_point_frames, seed_points
from qmml.accelerated.settings import INNER_OPTIMIZERS, AcceleratedSettings, AcceleratedStats
from qmml.accelerated.surrogate import ForceDifferences, SurrogateMixing, default_hard_set
from qmml.accelerated.system import MixedSystem

__all__ = ["INNER_OPTIMIZERS", "AcceleratedOptimizer", "AcceleratedSettings",
           "AcceleratedStats", "ForceDifferences", "MixedSystem", "SurrogateMixing",
           "default_hard_set", "neb_accelerated", "qm_point_frames", "relax_accelerated",
           "seed_points"]
