"""Relax atom positions with the classical stand-in (W_2940_2017_2 + ZBL): the heavy step.

Writes energies per atom of the start, relaxed and perfect cells, the final max force
and the SLURM job id seen by this process.
"""
import json
import os
import sys

import numpy as np
from ase.io import read
from ase.optimize import FIRE

from qmml.potential import reference_potential

atoms = read(sys.argv[1])
perfect = atoms.copy()
# The perfect lattice sites: undo the rattle by snapping to the bcc cubic grid.
sites_per_edge = round(2 * (len(atoms) / 2) ** (1 / 3))  # 2 sites per cubic cell edge
frac = perfect.get_scaled_positions() * sites_per_edge
perfect.set_scaled_positions(np.round(frac) / sites_per_edge)
pot, zbl = reference_potential()
atoms.calc = pot.calculator(zbl=zbl)
e_start = atoms.get_potential_energy() / len(atoms)
opt = FIRE(atoms, logfile=None)
opt.run(fmax=1e-3, steps=500)
e_relaxed = atoms.get_potential_energy() / len(atoms)
fmax = float(np.abs(atoms.get_forces()).max())
perfect.calc = pot.calculator(zbl=zbl)
e_perfect = perfect.get_potential_energy() / len(perfect)
result = {
    "label": "reference (classical stand-in, not QM)",
    "n_atoms": len(atoms),
    "energy_per_atom_start": e_start,
    "energy_per_atom_relaxed": e_relaxed,
    "energy_per_atom_perfect": e_perfect,
    "fmax": fmax,
    "steps": opt.get_number_of_steps(),
    "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
}
with open(sys.argv[2], "w") as fh:
    json.dump(result, fh, indent=1)
