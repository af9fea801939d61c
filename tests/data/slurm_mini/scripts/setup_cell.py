"""Write a rattled bcc W supercell (light, local step of the mini workflow)."""
import sys

from ase.build import bulk

a, n, stdev, seed, out = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
atoms = bulk("W", "bcc", a=a, cubic=True).repeat(n)
atoms.rattle(stdev=stdev, seed=seed)
atoms.write(out, format="extxyz")
