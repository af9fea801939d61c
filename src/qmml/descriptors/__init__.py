"""SNAP descriptors from LAMMPS and what is built from them.

- :mod:`~qmml.descriptors.snap`: energy, force and stress rows of one configuration;
- :mod:`~qmml.descriptors.normal`: normal equations accumulated over force rows;
- :mod:`~qmml.descriptors.sums`: force normal equations and energy rows of whole sets;
- :mod:`~qmml.descriptors.cache`: those sums on disk, found again by content;
- :mod:`~qmml.descriptors.workers`: the process pool the sums are spread over.
"""
from qmml.descriptors.cache import DescriptorCache
from qmml.descriptors.normal import ForceSums, NormalEquations
from qmml.descriptors.snap import Descriptors, compute_descriptors, compute_snap_command
from qmml.descriptors.sums import (ForceSet, descriptor_sums, energy_rows,
                                   force_normal_equations)
from qmml.descriptors.workers import close_workers, start_workers

__all__ = ["Descriptors", "DescriptorCache", "ForceSet", "ForceSums", "NormalEquations",
           "close_workers", "compute_descriptors", "compute_snap_command", "descriptor_sums",
           "energy_rows", "force_normal_equations", "start_workers"]
