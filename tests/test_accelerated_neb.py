"""Accelerated QM/ML NEB: the climbing image of a force-only band, and the QM calls of the
stand-in screw glide NEB against FIRE's."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.io import read, write

from qmml import potential_path
from qmml.nebband import make_neb, virtual_work_energies

L, TILT, STIFF = 2.0, 0.3, 5.0


def valley(x: float, y: float) -> float:
    """A tilted barrier along x (saddle off the middle), a harmonic valley in y."""
    return np.sin(np.pi * x / L) ** 2 + TILT * x / L + 0.5 * STIFF * y ** 2


class ForcesOnly(Calculator):
    """Forces of :func:`valley` on atom 0 and zero energy, as force mixing reports."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x, y, _ = self.atoms.positions[0]
        forces = np.zeros((len(self.atoms), 3))
        forces[0] = [-np.pi / L * np.sin(2 * np.pi * x / L) - TILT / L, -STIFF * y, 0.0]
        self.results = {"energy": 0.0, "forces": forces}


def band(n: int) -> list[Atoms]:
    images = []
    for x in np.linspace(0.0, L, n):
        atoms = Atoms("H", [[x, 0.3 * np.sin(np.pi * x / L), 0.0]])
        atoms.calc = ForcesOnly()
        images.append(atoms)
    return images


def test_virtual_work_energies_follow_the_potential():
    """Trapezoid rule along the band: error ~ h², so halving the spacing quarters it."""
    def error(n: int) -> float:
        images = band(n)
        forces = np.array([im.get_forces() for im in images])
        exact = np.array([valley(*im.positions[0, :2]) for im in images]) - valley(0, 0)
        return float(np.abs(virtual_work_energies(images, forces) - exact).max())

    coarse, fine = error(41), error(81)
    assert coarse < 3e-3  # of a 1.15 eV barrier
    assert 3.5 < coarse / fine < 4.5


def test_climbing_image_ends_at_the_saddle_of_a_force_only_band():
    """Zero energies everywhere (force mixing): the climbing image is the virtual-work
    maximum and converges onto the saddle of the potential, x = L/2 + L/(2π)·asin(t/π)
    (dV/dx = 0 with negative curvature), y = 0."""
    from ase.optimize import FIRE

    images = band(7)
    neb = make_neb(images, k=0.5, climb=True)
    FIRE(neb, logfile=None).run(fmax=1e-4, steps=3000)
    saddle_x = L / 2 + L / (2 * np.pi) * np.arcsin(TILT / np.pi)
    assert neb.imax == 3  # the middle image (x = L/2 at the start) is the highest
    x, y, _ = images[3].positions[0]
    assert abs(x - saddle_x) < 1e-3 and abs(y) < 1e-3
    assert np.abs(images[3].get_forces()).max() < 1e-3  # the true force vanishes there


def test_band_forces_equal_ases_spline_after_every_move():
    """The band fits its spline once per set of positions: its NEB forces equal ASE's own
    (which refits at every read), at the start and after one image moves, with and
    without a climbing image and with the Exp preconditioner."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.optimize.precon import PreconImages

    start = bulk("Cu", cubic=True).repeat(2)
    end = start.copy()
    end.positions[0] += [0.9, 0.4, 0.2]
    rng = np.random.default_rng(3)

    def images() -> list[Atoms]:
        out = []
        for t in np.linspace(0.0, 1.0, 5):
            atoms = start.copy()
            atoms.positions += t * (end.positions - start.positions)
            atoms.positions[1:] += 0.02 * rng.standard_normal((len(atoms) - 1, 3))
            atoms.calc = EMT()
            out.append(atoms)
        return out

    for climb, precon in ((False, None), (True, None), (False, "Exp")):
        ours = images()
        theirs = [im.copy() for im in ours]
        for im in theirs:
            im.calc = EMT()
        neb, reference = make_neb(ours, climb=climb, precon=precon), \
            make_neb(theirs, climb=climb, precon=precon)
        for move in (None, 0.05 * rng.standard_normal((len(start), 3))):
            if move is not None:
                for band in (ours, theirs):
                    band[2].positions += move
            reference.precon = PreconImages(precon, theirs)  # ASE's, refitting every read
            assert np.abs(neb.get_forces() - reference.get_forces()).max() < 1e-12
            assert np.abs(neb.get_forces()).max() > 1e-2


# The user's stand-in screw case: R 20 Å cylinder, QM radius 4 Å, buffer 5 Å, end points
# relaxed to 0.01 eV/Å, 7 images, fmax 0.02 eV/Å.  FIRE's NEB from the same interpolated
# path, measured once (stand-in W_2940_2017_2 + ZBL as "QM", W_milady_lml as ML):
#   qmml neb --initial ini.xyz --final fin.xyz --images 7 --fmax 0.02 --potential \
#     W_milady_lml --engine reference --buffer 5 --optimizer FIRE --cache C --output O
# converged (fmax 0.01697) after 40 steps with 205 new QM calls, virtual-work barrier
# 0.0558 eV.
FIRE_QM_CALLS = 205
FIRE_BARRIER = 0.0558


@pytest.mark.slow
def test_stand_in_screw_neb_takes_a_tenth_of_fires_qm_calls(tmp_path):
    def qmml(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "qmml.cli", *args], cwd=tmp_path,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr

    milady = str(potential_path("W_milady_lml"))
    qmml("build", "--kind", "screw111", "--radius", "20", "--qm-radius", "4", "--buffer",
         "5", "--glide", "--potential", milady, "--output", "screw.xyz")
    ini, fin = read(tmp_path / "screw.xyz", index=":")
    run = ["--potential", milady, "--engine", "reference", "--buffer", "5", "--cache",
           "cache", "--quiet"]
    for name, state in (("ini", ini), ("fin", fin)):
        write(tmp_path / f"{name}.xyz", state, format="extxyz")
        qmml("relax", "--input", f"{name}.xyz", "--output", f"{name}.relaxed.xyz",
             "--fmax", "0.01", "--optimizer", "accelerated", *run)
    qmml("neb", "--initial", "ini.relaxed.xyz", "--final", "fin.relaxed.xyz", "--images",
         "7", "--fmax", "0.02", "--optimizer", "accelerated", "--output", "neb.xyz", *run)
    path = read(tmp_path / "neb.xyz", index=":")
    info = path[0].info
    assert len(path) == 7 and info["converged"] and info["fmax"] <= 0.02
    assert info["n_qm_real_calls"] <= FIRE_QM_CALLS / 10
    assert abs(info["neb_barrier_virtual_work"] - FIRE_BARRIER) < 0.005


def small_screw_glide_band(milady) -> list[Atoms]:
    """A linearly interpolated 7-image stand-in screw glide band (R = 16 Å, QM atoms within 3 Å
    of the glide path, 5 Å buffer): small enough for single outer steps in a test."""
    from conftest import MILADY
    from qmml.regions import cylinder_region
    from qmml.structures import glide_endpoints

    ini, fin = glide_endpoints("screw111", radius=16.0, fixed_width=6.0, **MILADY)
    path = ini.info["glide_path"]
    cylinder_region(ini, None, 3.0, 5.0, milady.cutoff, path=[path[:2], path[2:]])
    fin.arrays["region"] = ini.arrays["region"].copy()
    images = [ini.copy() for _ in range(6)] + [fin.copy()]
    make_neb(images).interpolate(method="linear")
    return images


def test_a_probe_surrogate_that_runs_to_the_trust_radius_leaves_the_band_where_probed(
        milady, tmp_path, monkeypatch):
    """The probes' surrogate knows a few single images only; when its relaxation runs to
    the trust radius it is unstable, and the band it proposes is not taken: the band is
    QM-called where the probes were, so their calls are repeated from the cache."""
    from qmml.accelerated import MixedSystem, neb_accelerated
    from qmml.accelerated.records import SurrogateStep
    from qmml.forcemixing import neb_moving_images
    from qmml.qmcache import CachedQMCalculator

    images = small_screw_glide_band(milady)

    def unstable(self, theta, x, probed, settings, fmax):  # as if it had run away
        return SurrogateStep(x + 0.2, np.zeros_like(x), 5, True)

    monkeypatch.setattr(MixedSystem, "probe_step", unstable)
    qm = CachedQMCalculator.from_config({"engine": "reference"}, tmp_path / "cache")
    ml_band = []
    relax_ml = MixedSystem.relax_ml

    def keep_ml_band(self, *args, **kwargs):
        x, n = relax_ml(self, *args, **kwargs)
        ml_band.append(x)
        return x, n

    monkeypatch.setattr(MixedSystem, "relax_ml", keep_ml_band)
    stats, _ = neb_accelerated(images, qm, milady, 5.0, fmax=0.02, steps=0, log=None)
    moving = len(neb_moving_images(7))
    probes = len(range(0, moving, 2))
    # the end points, the start check, the probes, then only the images not probed
    assert qm.n_real_calls == 2 + 1 + probes + (moving - probes)
    np.testing.assert_array_equal(stats.qm_points[0].positions, ml_band[0])


def test_images_converged_at_the_anchor_stay_still_and_cost_no_qm_call(milady, tmp_path):
    """An image whose true NEB force is already below freeze_ratio·fmax is held still
    while the rest of the band moves: its QM point is reused (a cache hit), so the band's
    next evaluation QM-calls only the images that moved."""
    from dataclasses import replace

    from qmml.accelerated import AcceleratedSettings, neb_accelerated
    from qmml.qmcache import CachedQMCalculator

    fmax = 0.45
    qm = CachedQMCalculator.from_config({"engine": "reference"}, tmp_path / "cache")
    plain = AcceleratedSettings(neb_probe=False, neb_start_check=False)
    first, _ = neb_accelerated(small_screw_glide_band(milady), qm, milady, 5.0, fmax=fmax,
                               steps=0, log=None,
                               settings=plain)
    image_fmax = first.qm_points[-1].image_fmax
    # a ratio that the least-loaded image meets, while others are above fmax
    ratio = 1.05 * float(image_fmax.min()) / fmax
    still = np.flatnonzero(image_fmax <= ratio * fmax)
    assert ratio <= 1 and 0 < len(still) < len(image_fmax) and image_fmax.max() > fmax
    calls = qm.n_real_calls
    stats, _ = neb_accelerated(small_screw_glide_band(milady), qm, milady, 5.0, fmax=fmax,
                               steps=1, log=None, settings=replace(plain, freeze_ratio=ratio))
    anchor, moved = stats.qm_points[0], stats.qm_points[1]
    np.testing.assert_array_equal(moved.positions[still], anchor.positions[still])
    assert np.abs(np.delete(moved.positions - anchor.positions, still, axis=0)).max() > 0
    assert qm.n_real_calls - calls == len(image_fmax) - len(still)
    assert moved.image_fmax[still].max() <= fmax


@pytest.mark.parametrize("climb", [False, True])
def test_the_target_forces_of_given_forces_are_the_true_bands(milady, tmp_path, climb):
    """MixedSystem.target_forces, from positions and raw forces alone (how a step's
    predicted fmax is read), gives the NEB forces the true band has there, with its
    springs, spline tangents, fixed atoms and (climb) virtual-work climbing image."""
    from qmml.accelerated import AcceleratedSettings, MixedSystem
    from qmml.forcemixing import neb_moving_images
    from qmml.qmcache import CachedQMCalculator

    images = small_screw_glide_band(milady)
    qm = CachedQMCalculator.from_config({"engine": "reference"}, tmp_path / "cache")
    system = MixedSystem(images, neb_moving_images(len(images)), qm, milady.calculator,
                         milady, AcceleratedSettings(), 5.0, 5.0, {"k": 0.1, "climb": climb})
    ev = system.evaluate_true()
    band = np.asarray(system.true_target.get_forces()).reshape(ev.forces.shape)
    given = system.target_forces(ev.positions, ev.forces)
    np.testing.assert_allclose(given, band, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(given, axis=-1).max(axis=1), ev.image_fmax)
    assert np.abs(given[:, ~system.free]).max() == 0.0
    # the projection is the band's at the given positions: with the forces kept, a moved
    # image changes its own tangent and springs and its neighbours'
    moved = ev.positions.copy()
    moved[2, system.qm_mask] += 0.05
    assert np.abs(system.target_forces(moved, ev.forces) - given).max() > 1e-3
