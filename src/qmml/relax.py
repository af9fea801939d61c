"""``qmml relax`` and ``qmml neb``: force-mixed QM/ML relaxation and glide-path NEB.

Both commands cache every QM call in ``--cache`` and checkpoint every optimiser step, so a
killed run started again with the same arguments repeats no QM call and continues.
Outputs are extxyz frames with the mixed QM/ML ``forces``, ``region`` and ``fix_mask``
arrays and provenance info keys (engine, settings hash, fmax, QM call count, potential);
they are readable by ``ForceQMMM.import_extxyz`` and by ``qmml retrain``.  With
``--optimizer accelerated``, ``--qm-frames`` also writes every QM-called geometry in the
same format (the surrogates' training data, for retraining), and ``--seed-frames`` reads
such a file of an earlier run of the same structure: its cached QM points are reused, not
recomputed.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from qmml import QmmlError


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The QM engine options, read back by :func:`load_engine_config`."""
    eng = parser.add_mutually_exclusive_group(required=True)
    eng.add_argument("--engine-config", help="YAML engine config (key 'engine' + settings)")
    eng.add_argument("--engine", help="engine name with default settings: tblite, gpaw, "
                     "vasp, espresso, castep, reference (classical stand-in, not QM)")
    parser.add_argument("--kpts-line", type=int, default=None,
                        help="k-points along the dislocation line (tblite: replicas)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--potential", required=True,
                        help="ML potential prefix (PREFIX.snapcoeff + PREFIX.snapparam)")
    add_engine_arguments(parser)
    parser.add_argument("--optimizer", default="FIRE",
                        choices=["FIRE", "LBFGS", "ODE12r", "PreconLBFGS", "accelerated"],
                        help="accelerated: relax with the ML potential alone first, then "
                        "retrain a surrogate potential on the QM forces after each QM call "
                        "and relax it between QM calls (qmml.accelerated)")
    parser.add_argument("--hard", nargs="+", default=None, metavar="H.xyz",
                        help="accelerated only: hard-constraint extxyz files kept exact by "
                        "every surrogate (default: a small strain set of the potential, "
                        "generated in process)")
    parser.add_argument("--descriptor-cache", metavar="DIR", default=None,
                        help="accelerated only: folder of cached descriptor sums (as "
                        "`qmml retrain --descriptor-cache`); the hard rows are read from it "
                        "when present, else computed and stored")
    parser.add_argument("--qm-frames", metavar="FRAMES.xyz", default=None,
                        help="accelerated only: also write every QM-called geometry with its "
                        "true QM/ML forces (rejected probes and the final point included): "
                        "the QM data its surrogates were trained on, for retraining")
    parser.add_argument("--seed-frames", nargs="+", metavar="FRAMES.xyz", default=None,
                        help="accelerated only: --qm-frames files of earlier runs of the same "
                        "structure (e.g. the previous iteration's); their QM points found in "
                        "the cache train the surrogate without a QM call and the run starts "
                        "from the best of them")
    parser.add_argument("--surrogate-space", choices=["linear", "quadratic"],
                        help="accelerated only: descriptor space of the surrogate "
                        "(default: AcceleratedSettings.space, quadratic)")
    parser.add_argument("--buffer", type=float, default=8.0, help="buffer width in Å")
    parser.add_argument("--vacuum", type=float, default=5.0, help="vacuum around the QM cluster")
    parser.add_argument("--steps", type=int, default=1000, help="maximum optimiser steps")
    parser.add_argument("--cache", required=True, help="QM cache directory")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file (default: OUTPUT.ckpt)")
    parser.add_argument("--output", required=True, help="output extxyz")
    parser.add_argument("--quiet", action="store_true", help="no per-step progress lines")
    parser.add_argument("--allow-unconverged", action="store_true",
                        help="exit 0 when --steps run out before fmax (the output records "
                             "converged=False); default: exit 1")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``qmml relax`` (``qmml neb`` uses :func:`configure_neb`)."""
    parser.add_argument("--input", required=True,
                        help="extxyz with 'region' (QM/buffer/MM) and 'fix_mask' arrays")
    parser.add_argument("--fmax", type=float, default=0.01, help="force tolerance, eV/Å")
    _common(parser)


def configure_neb(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--initial", required=True, help="relaxed initial state (extxyz)")
    parser.add_argument("--final", required=True, help="relaxed final state (extxyz)")
    parser.add_argument("--images", type=int, default=7, help="images including end points")
    parser.add_argument("--spring", type=float, default=0.1, help="NEB spring constant, eV/Å²")
    parser.add_argument("--fmax", type=float, default=0.05, help="force tolerance, eV/Å")
    _common(parser)


def load_engine_config(args: argparse.Namespace) -> dict:
    """The engine config of :func:`add_engine_arguments`' options."""
    if args.engine_config:
        from qmml.engines import read_engine_config

        cfg = read_engine_config(args.engine_config)
    else:
        cfg = {"engine": args.engine}
    if args.kpts_line is not None:
        cfg["kpts_line"] = args.kpts_line
    return cfg


def _read_structure(path: str):
    from qmml.io import read_frame

    atoms = read_frame(path)
    atoms.calc = None
    if "region" not in atoms.arrays:
        raise QmmlError(f"{path}: no 'region' array (QM/buffer/MM per atom)")
    return atoms


def _setup(args: argparse.Namespace):
    from qmml.engines import engine_label
    from qmml.potential import SNAPPotential
    from qmml.qmcache import CachedQMCalculator

    cfg = load_engine_config(args)
    pot = SNAPPotential.read(args.potential)
    log = None if args.quiet else (lambda line: print(line, flush=True))
    qm = CachedQMCalculator.from_config(cfg, args.cache, log=log)
    settings_hash = qm.cache.settings_hash
    label = engine_label(cfg)
    if log and cfg["engine"] == "reference":
        log(f"QM engine: {label}")
    # the potential's coefficients are part of the run identity (resume safety)
    pot_id = (hashlib.sha256(pot.coeffs.tobytes()).hexdigest()[:16],)
    return cfg, settings_hash, pot, qm, label, log, pot_id


def _accelerated_options(args: argparse.Namespace, images, moving) -> dict:
    """hard set, settings and seeds for ``--optimizer accelerated`` (empty dict otherwise);
    ``images``/``moving``: the run's images and the indices of those that move."""
    if args.optimizer != "accelerated":
        for flag, value in (("--hard", args.hard), ("--descriptor-cache", args.descriptor_cache),
                            ("--qm-frames", args.qm_frames), ("--seed-frames", args.seed_frames)):
            if value:
                raise QmmlError(f"{flag} is only used with --optimizer accelerated")
        return {}
    from qmml.accelerated import AcceleratedSettings, seed_points
    from qmml.descriptors import DescriptorCache
    from qmml.io import read_frames

    hard = [a for path in args.hard for a in read_frames(path)] if args.hard else None
    space = {"space": args.surrogate_space} if args.surrogate_space else {}
    seeds = [x for path in args.seed_frames or ()
             for x in seed_points(read_frames(path), images, moving, path)]
    return {"hard": hard, "accelerated": AcceleratedSettings(**space),
            "descriptor_cache": DescriptorCache(args.descriptor_cache)
            if args.descriptor_cache else None, "seeds": seeds}


def _write_qm_frames(args: argparse.Namespace, images, moving, stats, info: dict) -> None:
    if args.qm_frames:
        from qmml.accelerated import qm_point_frames
        from qmml.io import write_frames

        write_frames(args.qm_frames, qm_point_frames(images, moving, stats, info))


def run(args: argparse.Namespace) -> int:
    from qmml.io import write_frames
    from qmml.qmmm import output_frame, provenance, relax

    atoms = _read_structure(args.input)
    cfg, settings_hash, pot, qm, label, log, pot_id = _setup(args)
    checkpoint = args.checkpoint or f"{args.output}.ckpt"
    Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    stats = relax(atoms, qm, pot.calculator(), args.buffer, optimizer=args.optimizer,
                  fmax=args.fmax, steps=args.steps, checkpoint=checkpoint,
                  vacuum=args.vacuum, log=log, fingerprint_extra=pot_id,
                  **_accelerated_options(args, [atoms], [0]))
    info = provenance(stats, label, settings_hash, str(args.potential), args.buffer)
    write_frames(args.output, [output_frame(atoms, info)])
    _write_qm_frames(args, [atoms], [0], stats, info)
    if args.optimizer == "accelerated":
        print(f"relax: accelerated, {stats.outer_steps} outer steps, surrogate hard "
              f"residual max {stats.surrogate_hard_residual_max:.2e} eV/atom")
    print(f"relax: {'converged' if stats.converged else 'NOT converged'} fmax "
          f"{stats.fmax:.5f} eV/A after {stats.steps} steps; QM calls {stats.n_qm_calls} "
          f"(new {stats.n_qm_real_calls}, {stats.qm_seconds:.1f} s in QM, "
          f"{stats.wall_seconds:.1f} s total); engine {label}; wrote {args.output}")
    return 0 if stats.converged or args.allow_unconverged else 1


def run_neb(args: argparse.Namespace) -> int:
    from qmml.io import write_frames
    from qmml.qmmm import neb, neb_moving_images, output_frame, provenance

    initial, final = _read_structure(args.initial), _read_structure(args.final)
    cfg, settings_hash, pot, qm, label, log, pot_id = _setup(args)
    checkpoint = args.checkpoint or f"{args.output}.ckpt"
    Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    images, stats, profile = neb(initial, final, args.images, qm, pot.calculator,
                                 args.buffer, optimizer=args.optimizer, fmax=args.fmax,
                                 steps=args.steps, k=args.spring, checkpoint=checkpoint,
                                 vacuum=args.vacuum, log=log, fingerprint_extra=pot_id,
                                 **_accelerated_options(args, [initial] * args.images,
                                                        neb_moving_images(args.images)))
    info = provenance(stats, label, settings_hash, str(args.potential), args.buffer)
    info["neb_barrier_virtual_work"] = profile["barrier"]
    e_images = profile["image_energy"]
    frames = []
    for i, im in enumerate(images):
        frames.append(output_frame(im, dict(info, neb_image=i,
                                            neb_energy_virtual_work=float(e_images[i]))))
    write_frames(args.output, frames)
    _write_qm_frames(args, images, neb_moving_images(len(images)), stats, info)
    print(f"neb: {'converged' if stats.converged else 'NOT converged'} fmax {stats.fmax:.5f} "
          f"eV/A after {stats.steps} steps; virtual-work barrier {profile['barrier']:.4f} eV; "
          f"QM calls {stats.n_qm_calls} (new {stats.n_qm_real_calls}); engine {label}; "
          f"wrote {args.output}")
    return 0 if stats.converged or args.allow_unconverged else 1
