"""Linear (and quadratic) SNAP potentials: LAMMPS file I/O and a persistent LAMMPS calculator.

A potential prefix ``P`` means the pair of files ``P.snapcoeff`` + ``P.snapparam``.
Energy is linear in the coefficients Θ: E = Σ_i Θ·D_i with D_i = [1, B_i] (linear) or
[1, B_i, ½B_ik², B_ik B_il (k<l)] (``quadraticflag 1``, LAMMPS ordering).
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lammps import Prism
from ase.data import atomic_masses, atomic_numbers

from qmml import QmmlError
from qmml.io import write_text
from qmml.lmp import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR, new_lammps

# snapparam keys that change the descriptor space: two potentials can share a design
# matrix only when these agree.
DESCRIPTOR_KEYS = ("rcutfac", "twojmax", "rfac0", "rmin0", "bzeroflag", "switchflag",
                   "bnormflag", "wselfallflag", "chemflag", "switchinnerflag")
_DEFAULTS = {"rfac0": 0.99363, "rmin0": 0.0, "bzeroflag": 1, "quadraticflag": 0,
             "switchflag": 1, "bnormflag": 0, "wselfallflag": 0, "chemflag": 0,
             "switchinnerflag": 0}
_INT_KEYS = {"twojmax", "bzeroflag", "quadraticflag", "switchflag", "bnormflag",
             "wselfallflag", "chemflag", "switchinnerflag"}


def n_bispectrum(twojmax: int) -> int:
    """Number of bispectrum components B_k for a given 2J (LAMMPS SNA ordering)."""
    count = 0
    for j1 in range(twojmax + 1):
        for j2 in range(j1 + 1):
            for j in range(j1 - j2, min(twojmax, j1 + j2) + 1, 2):
                if j >= j1:
                    count += 1
    return count


def n_coefficients(twojmax: int, quadratic: bool) -> int:
    nb = n_bispectrum(twojmax)
    return 1 + nb + (nb * (nb + 1) // 2 if quadratic else 0)


@dataclass
class SNAPPotential:
    """Descriptor parameters + per-element coefficients of a SNAP potential."""

    elements: list[str]
    radii: list[float]
    weights: list[float]
    coeffs: np.ndarray  # (n_elements, n_coefficients)
    params: dict = field(default_factory=dict)
    header: str = ""

    def __post_init__(self) -> None:
        self.coeffs = np.atleast_2d(np.asarray(self.coeffs, dtype=float))
        for key in ("rcutfac", "twojmax"):
            if key not in self.params:
                raise QmmlError(f"snapparam: required key '{key}' missing")
        expected = n_coefficients(self.twojmax, self.quadratic)
        if self.coeffs.shape != (len(self.elements), expected):
            raise QmmlError(
                f"snapcoeff: {self.coeffs.shape[1]} coefficients per element, but twojmax="
                f"{self.twojmax} quadraticflag={int(self.quadratic)} needs {expected}")

    # ---- properties -------------------------------------------------------------------
    def param(self, key: str):
        return self.params.get(key, _DEFAULTS.get(key))

    @property
    def twojmax(self) -> int:
        return int(self.params["twojmax"])

    @property
    def quadratic(self) -> bool:
        return bool(int(self.param("quadraticflag")))

    @property
    def n_coefficients(self) -> int:
        return self.coeffs.shape[1]

    @property
    def theta(self) -> np.ndarray:
        """Coefficient vector of a single-element potential (what the fitting code changes)."""
        if len(self.elements) != 1:
            raise QmmlError("fitting supports single-element potentials only "
                            f"(this one has {self.elements})")
        return self.coeffs[0].copy()

    @property
    def cutoff(self) -> float:
        """Largest pair cutoff rcutfac·(R_i + R_j) in Å."""
        return float(self.params["rcutfac"]) * 2 * max(self.radii)

    def descriptor_signature(self) -> dict:
        sig = {k: self.param(k) for k in DESCRIPTOR_KEYS}
        sig["elements"] = tuple(self.elements)
        sig["radii"] = tuple(self.radii)
        sig["weights"] = tuple(self.weights)
        return sig

    def check_compatible(self, other: "SNAPPotential", what: str = "potential") -> None:
        a, b = self.descriptor_signature(), other.descriptor_signature()
        diff = [k for k in a if not _close(a[k], b[k])]
        if diff:
            k = diff[0]
            raise QmmlError(f"{what}: descriptor parameter '{k}' differs ({a[k]} vs {b[k]})")

    # ---- transformations --------------------------------------------------------------
    def with_theta(self, theta: np.ndarray) -> "SNAPPotential":
        theta = np.asarray(theta, dtype=float)
        quadratic = theta.size != n_coefficients(self.twojmax, False)
        params = dict(self.params, quadraticflag=int(quadratic))
        return replace(self, coeffs=theta[None, :].copy(), params=params)

    def to_quadratic(self) -> "SNAPPotential":
        """Embed a linear potential in the quadratic space (quadratic terms zero)."""
        if self.quadratic:
            return replace(self, coeffs=self.coeffs.copy(), params=dict(self.params))
        nq = n_coefficients(self.twojmax, True)
        coeffs = np.zeros((len(self.elements), nq))
        coeffs[:, : self.n_coefficients] = self.coeffs
        return replace(self, coeffs=coeffs, params=dict(self.params, quadraticflag=1))

    # ---- I/O --------------------------------------------------------------------------
    @classmethod
    def read(cls, prefix: str | Path) -> "SNAPPotential":
        """From ``prefix`` (P.snapcoeff + P.snapparam) or a shipped name (W_milady_lml)."""
        prefix = resolve_prefix(prefix)
        coeff_file, param_file = Path(f"{prefix}.snapcoeff"), Path(f"{prefix}.snapparam")
        for f in (coeff_file, param_file):
            if not f.is_file():
                raise QmmlError(f"{f}: potential file not found")
        params = _read_snapparam(param_file)
        header, elements, radii, weights, coeffs = _read_snapcoeff(coeff_file)
        try:
            return cls(elements, radii, weights, coeffs, params, header)
        except QmmlError as err:
            raise QmmlError(f"{coeff_file}: {err}") from None

    def write(self, prefix: str | Path, comment: str = "") -> Path:
        prefix = Path(_strip_suffix(prefix))
        prefix.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"# {line}" for line in (comment or self.header or "written by qmml").splitlines()]
        lines += ["#", f"{len(self.elements)} {self.n_coefficients}"]
        for el, r, w, row in zip(self.elements, self.radii, self.weights, self.coeffs):
            lines.append(f"{el} {r!r} {w!r}")
            lines += [repr(float(c)) for c in row]
        write_text(Path(f"{prefix}.snapcoeff"), "\n".join(lines) + "\n")
        params = dict(self.params)
        plines = [f"{k} {v}" for k, v in params.items()]
        write_text(Path(f"{prefix}.snapparam"), "\n".join(plines) + "\n")
        return prefix

    def pair_commands(self, prefix: Path, type_elements: list[str],
                      zbl: tuple[float, float] | None = None) -> list[str]:
        """pair_style/pair_coeff lines for LAMMPS types mapped to ``type_elements``.

        Types whose element the potential does not know are mapped to NULL: they get no
        ML force and do not enter the ML environment of other atoms.
        """
        known = [el if el in self.elements else "NULL" for el in type_elements]
        files = f"{prefix}.snapcoeff {prefix}.snapparam {' '.join(known)}"
        if zbl is None and "NULL" not in known:
            return ["pair_style snap", f"pair_coeff * * {files}"]
        styles = ["pair_style hybrid/overlay zero %.3f" % (self.cutoff + 1.0)]
        coeffs = ["pair_coeff * * zero"]
        if zbl is not None:
            styles[0] += " zbl %g %g" % zbl
            for i, el in enumerate(type_elements, 1):
                for j, el2 in enumerate(type_elements[i - 1:], i):
                    if el in self.elements and el2 in self.elements:
                        coeffs.append(f"pair_coeff {i} {j} zbl {atomic_numbers[el]} "
                                      f"{atomic_numbers[el2]}")
        styles[0] += " snap"
        return styles + coeffs + [f"pair_coeff * * snap {files}"]

    def calculator(self, zbl: tuple[float, float] | None = None, ranks: int = 1
                   ) -> Calculator:
        """An ASE calculator of this potential: LAMMPS in this process, or with ``ranks``
        > 1 in a group of MPI processes (:class:`qmml.lammps_mpi.MPISNAPCalculator`)."""
        if ranks > 1:
            from qmml.lammps_mpi import MPISNAPCalculator

            return MPISNAPCalculator(self, zbl=zbl, ranks=ranks)
        return SNAPCalculator(self, zbl=zbl)


def resolve_prefix(name: str | Path) -> Path:
    """The files a potential name means: an existing prefix P (P.snapcoeff), else a
    potential shipped with qmml (data/potentials/NAME), else the name as given."""
    prefix = Path(_strip_suffix(name))
    if not Path(f"{prefix}.snapcoeff").is_file() and prefix.parent == Path("."):
        from qmml import potential_path

        shipped = potential_path(prefix.name)
        if Path(f"{shipped}.snapcoeff").is_file():
            return shipped
    return prefix


def reference_potential() -> tuple[SNAPPotential, tuple[float, float]]:
    """W_2940_2017_2 SNAP + ZBL (Wood & Thompson 2017): the classical stand-in for QM.

    Returns the potential and its ZBL overlay (inner, outer) exactly as in
    ``W_2940_2017_2.snap``; the SNAP part alone has no zero-pressure lattice constant.
    """
    from qmml import potential_path

    return SNAPPotential.read(potential_path("W_2940_2017_2")), (4.0, 4.8)


class SNAPCalculator(Calculator):
    """ASE calculator on one persistent LAMMPS instance running ``pair_style snap``.

    Positions (and the cell) are written into LAMMPS in place; the instance is rebuilt
    only when the species, atom count or periodicity change.  Works on strained cells
    (triclinic boxes), on open clusters (shrink-wrapped non-periodic directions) and
    with species the potential does not know (no ML force on them).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    ranks = 1  # LAMMPS in this process (qmml.lammps_mpi: on several)

    def __init__(self, potential: SNAPPotential, zbl: tuple[float, float] | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.potential = potential
        self.zbl = zbl
        self._lmp = None
        self._key = None
        self.n_lammps_runs = 0

    # public: swap coefficients without rebuilding the system (surrogate retraining)
    def set_potential(self, potential: SNAPPotential) -> None:
        self.potential.check_compatible(potential, "set_potential")
        self.potential = potential
        if self._lmp is not None:
            self._set_pair_style(self._lmp)
        self.reset()

    def calculate(self, atoms: Atoms | None = None, properties=("energy",),
                  system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        key = (tuple(atoms.get_chemical_symbols()), tuple(bool(p) for p in atoms.pbc))
        if self._lmp is None or key != self._key:
            self._build(atoms)
            self._key = key
        elif "cell" in system_changes:
            self._set_cell(atoms.cell)
        self._set_positions(atoms.positions)
        self._lmp.command("run 0 post no")
        self.n_lammps_runs += 1
        self._read_results(atoms)

    # ---- internals --------------------------------------------------------------------
    def _build(self, atoms: Atoms) -> None:
        if self._lmp is not None:
            self._lmp.close()
        self._type_elements = type_elements(atoms, self.potential)
        lmp, self._prism = lammps_system(atoms, self._type_elements)
        self._triclinic = bool(lmp.extract_global("triclinic"))
        # under mpiexec (qmml.lammps_mpi) the atoms are spread over the ranks
        self._distributed = lmp.extract_setting("world_size") > 1
        self._set_pair_style(lmp)
        lmp.commands_list([
            "thermo_style custom step pe pxx pyy pzz pxy pxz pyz",
            "thermo_modify norm no",
        ])
        self._lmp = lmp

    def _set_pair_style(self, lmp) -> None:
        # LAMMPS reads the coefficient files when pair_coeff runs, so they live only that
        # long (a directory held for the calculator's lifetime outlives killed processes)
        with tempfile.TemporaryDirectory(prefix="qmml-snap-") as folder:
            files = Path(folder) / "pot"
            self.potential.write(files)
            lmp.commands_list(self.potential.pair_commands(files, self._type_elements, self.zbl))

    def _set_cell(self, cell) -> None:
        self._prism = Prism(np.array(cell), pbc=self.atoms.pbc)
        xhi, yhi, zhi, xy, xz, yz = self._prism.get_lammps_prism()
        dims = [f"{d} final 0 {h:.16g}" for d, h, p in zip("xyz", (xhi, yhi, zhi), self.atoms.pbc)
                if p]
        tilts = ""
        if self._triclinic:
            tilts = f" xy final {xy:.16g} xz final {xz:.16g} yz final {yz:.16g}"
        elif self._prism.is_skewed():
            raise QmmlError("SNAPCalculator: a skewed cell needs periodic boundaries in all directions")
        self._lmp.command(f"change_box all {' '.join(dims)}{tilts} units box")

    def _set_positions(self, positions: np.ndarray) -> None:
        if self._distributed:  # by atom ID, on whichever rank owns the atom
            x = np.ascontiguousarray(self._prism.vector_to_lammps(positions)).ravel()
            self._lmp.scatter_atoms("x", 1, 3, np.ctypeslib.as_ctypes(x))
            return
        x = self._lmp.numpy.extract_atom("x")
        ids = self._lmp.numpy.extract_atom("id")
        n = len(positions)
        x[:n] = self._prism.vector_to_lammps(positions)[ids[:n] - 1]

    def _read_results(self, atoms: Atoms) -> None:
        lmp = self._lmp
        n = len(atoms)
        if self._distributed:  # gathered in atom-ID order
            forces = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(n, 3)
        else:
            ids = lmp.numpy.extract_atom("id")[:n]
            forces = np.empty((n, 3))
            forces[ids - 1] = lmp.numpy.extract_atom("f")[:n]
        self.results["forces"] = self._prism.vector_to_ase(forces)
        energy = float(lmp.get_thermo("pe"))
        self.results["energy"] = self.results["free_energy"] = energy
        if all(atoms.pbc):
            p = lmp.numpy.extract_compute("thermo_press", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)
            pxx, pyy, pzz, pxy, pxz, pyz = np.array(p[:6])
            # LAMMPS' own pressure unit, so stresses agree exactly with compute snap virials
            to_ev_a3 = 1.0 / lmp.extract_global("nktv2p")
            tensor = -to_ev_a3 * np.array([[pxx, pxy, pxz], [pxy, pyy, pyz], [pxz, pyz, pzz]])
            s = self._prism.tensor2_to_ase(tensor)
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])

    def __del__(self) -> None:
        if getattr(self, "_lmp", None) is not None:
            try:
                self._lmp.close()
            except Exception:
                pass


# ---- LAMMPS system set-up shared by the calculator and the descriptor code ------------
def type_elements(atoms: Atoms, potential: SNAPPotential) -> list[str]:
    """LAMMPS type order: the potential's elements first, unknown species after them."""
    return sorted(set(atoms.get_chemical_symbols()),
                  key=lambda s: (s not in potential.elements, s))


def lammps_system(atoms: Atoms, type_elements: list[str]):
    """A LAMMPS instance holding ``atoms`` (box, types, masses), no pair style yet.

    Periodic cells become (triclinic) prisms so later strains can be applied in place;
    open directions are shrink-wrapped.  Returns (lmp, prism) for frame conversions.
    """
    if len(atoms) == 0:
        raise QmmlError("cannot evaluate an empty configuration")
    lmp = new_lammps()
    boundary = " ".join("p" if p else "s" for p in atoms.pbc)
    prism = Prism(np.array(atoms.cell), pbc=atoms.pbc)
    xhi, yhi, zhi, xy, xz, yz = prism.get_lammps_prism()
    lo = np.zeros(3)
    hi = np.array([xhi, yhi, zhi])
    if not all(atoms.pbc):
        pos = prism.vector_to_lammps(atoms.positions)
        lo = np.where(atoms.pbc, 0.0, pos.min(axis=0) - 1.0)
        hi = np.where(atoms.pbc, hi, pos.max(axis=0) + 1.0)
    triclinic = all(atoms.pbc) or prism.is_skewed()
    tilt = f" {xy:.16g} {xz:.16g} {yz:.16g}" if triclinic else ""
    lmp.commands_list([
        f"boundary {boundary}",
        f"region qmml_box {'prism' if triclinic else 'block'} {lo[0]:.16g} {hi[0]:.16g} "
        f"{lo[1]:.16g} {hi[1]:.16g} {lo[2]:.16g} {hi[2]:.16g}{tilt} units box",
        f"create_box {len(type_elements)} qmml_box",
    ])
    for t, el in enumerate(type_elements, 1):
        lmp.command(f"mass {t} {atomic_masses[atomic_numbers[el]]:.6f}")
    type_of = {el: t for t, el in enumerate(type_elements, 1)}
    types = [type_of[s] for s in atoms.get_chemical_symbols()]
    n = len(atoms)
    x = prism.vector_to_lammps(atoms.positions, wrap=True).ravel()
    created = lmp.create_atoms(n, list(range(1, n + 1)), types, x.tolist(), shrinkexceed=True)
    if created != n:
        lmp.close()
        raise QmmlError(f"LAMMPS created {created} of {n} atoms (atoms outside the cell?)")
    lmp.commands_list(["neighbor 1.0 bin",
                       "neigh_modify every 1 delay 0 check yes one 10000 page 1000000"])
    return lmp, prism


# ---- file helpers ---------------------------------------------------------------------
def _strip_suffix(prefix: str | Path) -> str:
    s = str(prefix)
    for suffix in (".snapcoeff", ".snapparam"):
        if s.endswith(suffix):
            return s[: -len(suffix)]
    return s


def _close(a, b) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)
    except (TypeError, ValueError):
        return a == b


def _read_snapparam(path: Path) -> dict:
    params: dict = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) != 2:
            raise QmmlError(f"{path}:{lineno}: expected 'key value', got '{raw.strip()}'")
        key, value = words
        try:
            params[key] = int(value) if key in _INT_KEYS else float(value)
        except ValueError:
            params[key] = value
        if isinstance(params[key], float) and not math.isfinite(params[key]):
            raise QmmlError(f"{path}:{lineno}: {key} is '{value}', not a finite number")
    return params


def _read_snapcoeff(path: Path):
    header, words, lines = [], [], []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        if raw.lstrip().startswith("#"):
            header.append(raw.lstrip()[1:].strip())
            continue
        new = raw.split("#", 1)[0].split()
        words += new
        lines += [lineno] * len(new)
    try:
        nelem, ncoeff = int(words[0]), int(words[1])
        pos = 2
        elements, radii, weights, rows = [], [], [], []
        for _ in range(nelem):
            elements.append(words[pos])
            radii.append(float(words[pos + 1]))
            weights.append(float(words[pos + 2]))
            rows.append([float(w) for w in words[pos + 3: pos + 3 + ncoeff]])
            if len(rows[-1]) != ncoeff:
                raise IndexError
            # float() reads "nan"/"inf": a potential with them gives NaN forces everywhere
            for k in range(pos + 1, pos + 3 + ncoeff):
                if not math.isfinite(float(words[k])):
                    what = ("radius", "weight")[k - pos - 1] if k < pos + 3 else \
                        f"coefficient {k - pos - 3}"
                    raise QmmlError(f"{path}:{lines[k]}: {elements[-1]} {what} is "
                                    f"'{words[k]}', not a finite number")
            pos += 3 + ncoeff
    except (IndexError, ValueError):
        raise QmmlError(f"{path}: malformed snapcoeff file") from None
    return "\n".join(h for h in header if h), elements, radii, weights, np.array(rows)
