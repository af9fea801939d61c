"""Figures and the HTML report from a small but real qmml run.

The run: a ½⟨111⟩ screw glide case (R = 15 Å, one b thick) relaxed and NEB'd with
force mixing (QM = the classical stand-in W_2940_2017_2 + ZBL, ML = W_milady_lml),
forces extracted with ``qmml extract-forces``, Θ retrained on them (linear, hard rows =
strained bcc cells), elastic constants measured for both potentials.
"""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from ase.io import write

from conftest import MILADY
from qmml import QmmlError, potential_path
from qmml import figures as F
from qmml.report import format_value, read_captions, write_report

RADIUS, FIXED, QM_RADIUS, BUFFER = 15.0, 5.0, 3.0, 5.0
WORKFLOW_REPORT = potential_path("x").parents[2] / "workflow" / "report"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """iter_0 (Θ0 = W_milady_lml, QM/ML frames, targets) and iter_1 (retrained Θ)."""
    from qmml.build import build_case, default_settings
    from qmml.cli import main
    from qmml.elastic import bcc_cell, measure_cubic_elastic, strained
    from qmml.engines import engine_label
    from qmml.potential import SNAPPotential
    from qmml.qmcache import CachedQMCalculator
    from qmml.io import write_frames
    from qmml.frames import output_frame, provenance
    from qmml.qmmm import neb, relax
    from qmml.io import read_frames
    from qmml.retrain import retrain
    from qmml.validation import peierls_profile

    R = tmp_path_factory.mktemp("results")
    it0, it1 = R / "iter_0", R / "iter_1"
    pot0 = SNAPPotential.read(potential_path("W_milady_lml"))
    pot0.write(it0 / "potential")
    states, _ = build_case(default_settings(kind="screw111", radius=RADIUS, fixed_width=FIXED,
                                            qm_radius=QM_RADIUS, buffer=BUFFER, glide=True,
                                            **MILADY))
    (it0 / "structures").mkdir()
    for state, name in zip(states, ("initial", "final")):
        write(it0 / "structures" / f"screw_{name}.xyz", state, format="extxyz")

    cfg = {"engine": "reference"}
    qm = CachedQMCalculator.from_config(cfg, R / "qm_cache")
    for state in states:
        assert relax(state, qm, pot0.calculator(), BUFFER, fmax=0.03, log=None).converged
    images, stats, profile = neb(states[0], states[1], 5, qm, pot0.calculator, BUFFER,
                                 fmax=0.1, log=None)
    info = provenance(stats, engine_label(cfg), qm.cache.settings_hash, "W_milady_lml",
                      BUFFER)
    neb_info = dict(info, neb_barrier_virtual_work=profile["barrier"])
    for state, name in zip(states, ("initial", "final")):
        write_frames(it0 / "qmml" / f"screw_{name}.xyz", [output_frame(state, info)])
    # stored as qmml neb does: virtual-work energy at s = k/(n-1)
    e_images = np.interp(np.linspace(0, 1, len(images)), profile["s"], profile["energy"])
    write_frames(it0 / "qmml" / "screw_neb.xyz", [
        output_frame(im, dict(neb_info, neb_image=k, neb_energy_virtual_work=float(e_images[k])))
        for k, im in enumerate(images)])
    frames = [str(it0 / "qmml" / f"screw_{n}.xyz") for n in ("initial", "final", "neb")]
    assert main(["extract-forces", *frames, "--potential", str(it0 / "potential"),
                 "--output", str(it0 / "targets.xyz"),
                 "--summary", str(it0 / "targets.json")]) == 0

    a0 = MILADY["a0"]
    modes = [*np.eye(6), np.array([1, 1, 1, 0, 0, 0])]  # six Voigt strains + hydrostatic
    hard = [bcc_cell(a0, 2)] + [strained(bcc_cell(a0, 2), m * e) for m in modes
                                for e in (-0.01, -0.005, 0.005, 0.01)]
    targets = [(f"t{k}", a) for k, a in enumerate(read_frames(it0 / "targets.xyz"))]
    pot1, report = retrain(pot0, targets, hard, [], lambda0=500.0)
    pot1.write(it1 / "potential")
    (it1 / "retrain.json").write_text(json.dumps(report))
    for it, pot in ((it0, pot0), (it1, pot1)):
        measured = measure_cubic_elastic(pot.calculator(), 3.18)
        (it / "elastic.json").write_text(json.dumps({k: float(v) for k, v in measured.items()}))
    (R / "binding.csv").write_text(
        "defect,dislocation,distance,E_b_qmml,E_b_qmml_path_error,E_b_ml,path_file\n"
        "vac,screw,6.0,0.05,0.004,0.02,paths/vac_1.xyz\nvac,screw,0.0,0.71,-0.01,0.52,paths/vac_0.xyz\n"
        "he,screw,0.0,0.43,0.02,0.61,paths/he_0.xyz\nhe,screw,6.0,0.0,0.0,0.0,paths/he_1.xyz\n")
    # iteration-keyed, as the workflow gives them: (iteration, path) pairs
    inputs = {"elastic": [(0, it0 / "elastic.json"), (1, it1 / "elastic.json")],
              "potentials": [(0, it0 / "potential.snapcoeff"), (1, it1 / "potential.snapcoeff")],
              "targets": [(0, it0 / "targets.xyz")],
              "targets_summary": [(0, it0 / "targets.json")],
              "retrain": [(1, it1 / "retrain.json")],
              "relaxed": [(0, it0 / "qmml/screw_initial.xyz")],
              "structures": [it0 / "structures/screw_initial.xyz"],
              "neb": [(0, it0 / "qmml/screw_neb.xyz")], "binding": [R / "binding.csv"],
              "ml_profiles": [(0, it0 / "ml_neb_profiles.json"),
                              (1, it1 / "ml_neb_profiles.json")]}
    # the ML-only glide NEBs of both potentials, as their validation writes them
    neb_images = read_frames(it0 / "qmml" / "screw_neb.xyz")
    for it in (it0, it1):
        profile = peierls_profile(neb_images, SNAPPotential.read(it / "potential").calculator(),
                                  "screw_neb.xyz")
        (it / "ml_neb_profiles.json").write_text(json.dumps({"screw": profile}))
    outputs = {name: R / "figures" / f"{name}.png" for name in F.FIGURES}
    numbers = {name: F.make_figure(name, inputs, outputs[name]) for name in F.FIGURES}
    return {"R": R, "inputs": inputs, "outputs": outputs, "numbers": numbers}


def assert_real_png(path, min_side: int = 250, min_bytes: int = 10_000,
                    min_std: float = 0.05) -> None:
    import matplotlib.image as mpimg

    assert path.stat().st_size > min_bytes
    pixels = mpimg.imread(path)
    assert min(pixels.shape[:2]) >= min_side
    assert pixels[..., :3].std() > min_std  # not a blank canvas


def assert_message_png(path) -> None:
    """A 'nothing to show' panel: small, but with its text drawn."""
    assert_real_png(path, min_side=150, min_bytes=2_000, min_std=0.01)


@pytest.fixture
def drawn(monkeypatch):
    """Every matplotlib figure saved during the test, in order (laid out as saved)."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig

    def recording(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return figures


def renderer_of(fig):
    """A renderer of the saved figure, laid out again as when it was saved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # pyplot detached the closed figure from its canvas
    canvas.draw()
    return canvas.get_renderer()


def boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def assert_panels_apart(fig) -> None:
    """No two panels (axes with tick labels, labels and titles) share a pixel."""
    renderer = renderer_of(fig)
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_visible() and ax.axison]
    for k, a in enumerate(boxes):
        for b in boxes[k + 1:]:
            assert not boxes_overlap(a, b), (a, b)


def test_all_six_pngs_exist_and_are_not_blank(run):
    assert set(run["outputs"]) == set(F.FIGURES)
    for path in run["outputs"].values():
        assert_real_png(path, min_side=200)


def test_force_parity_rmse_equals_extract_and_retrain_numbers(run):
    R, parity = run["R"], run["numbers"]["force_parity"][0]
    summary = json.loads((R / "iter_0/targets.json").read_text())
    report = json.loads((R / "iter_1/retrain.json").read_text())
    # before: potential 0 via LAMMPS pair_style snap, same as qmml extract-forces
    assert parity["rmse_before"] == pytest.approx(summary["qm_force_rmse"], rel=1e-10)
    assert parity["n_qm_atoms"] == summary["n_qm_atoms"] == report["n_qm_atoms"]
    # after: potential 1 via LAMMPS vs retrain's own descriptor model G·Θ (independent path)
    assert parity["rmse_after"] == pytest.approx(report["qm_force_rmse_after"], rel=1e-8)
    assert parity["rmse_after"] < 0.6 * parity["rmse_before"]  # retraining helped

    ref, ml = F.qm_atom_forces(R / "iter_0/targets.xyz", R / "iter_0/potential")
    assert ref.shape == (summary["n_qm_atoms"], 3)
    assert F.rmse(ml, ref) == pytest.approx(np.sqrt(np.mean((ml - ref) ** 2)))


def test_force_parity_panels_count_components_and_titles_stay_apart(run, tmp_path, drawn):
    R = run["R"]
    numbers = F.force_parity([(0, R / "iter_0/targets.xyz"), (1, R / "iter_0/targets.xyz")],
                             run["inputs"]["potentials"], tmp_path / "parity.png")
    assert_real_png(tmp_path / "parity.png")
    (fig,) = drawn
    renderer = renderer_of(fig)
    titles = [ax.title for ax in fig.axes]
    assert len(titles) == 2
    a, b = (t.get_window_extent(renderer) for t in titles)
    assert not boxes_overlap(a, b)
    assert_panels_apart(fig)
    for i, title in enumerate(titles):
        n = numbers[i]
        # one plotted point per Cartesian component: 3 per QM atom
        assert n["n_components"] == 3 * n["n_qm_atoms"]
        assert f"{n['n_components']} force components on {n['n_qm_atoms']} QM atoms" in \
            title.get_text()
    assert numbers[1]["rmse_before"] == pytest.approx(numbers[0]["rmse_after"])


def test_force_rmse_figure_uses_json_values(run):
    R, n = run["R"], run["numbers"]["force_rmse"]
    report = json.loads((R / "iter_1/retrain.json").read_text())
    assert n["own"] == {0: json.loads((R / "iter_0/targets.json").read_text())["qm_force_rmse"]}
    assert n["before"] == {1: report["qm_force_rmse_before"]}
    assert n["after"] == {1: report["qm_force_rmse_after"]}


def test_elastic_constants_stay_fixed_and_deviation_is_relative(run, tmp_path, drawn):
    n = run["numbers"]["elastic_constants"]
    assert n["iterations"] == [0, 1]
    for key in F.ELASTIC_KEYS:
        v = n["values"][key]
        assert n["relative_deviation"][key] == pytest.approx([0.0, (v[1] - v[0]) / v[0]])
    assert n["values"]["a0"][0] == pytest.approx(MILADY["a0"], abs=2e-4)
    # the strain hard rows keep a0 and the elastic constants of Θ0 (to ~0.2 %)
    assert max(abs(n["relative_deviation"][k][1]) for k in F.ELASTIC_KEYS) < 2e-3

    drawn.clear()
    F.elastic_constants(run["inputs"]["elastic"], tmp_path / "elastic.png")
    (fig,) = drawn
    assert len(fig.axes) == 8
    assert_panels_apart(fig)  # tick labels do not run into the next panel

    bad = tmp_path / "iter_0" / "elastic.json"
    bad.parent.mkdir()
    bad.write_text('{"a0": 3.18, "C11": 500, "C12": 200}')
    with pytest.raises(QmmlError, match=r"elastic.json: required key 'C44' missing"):
        F.elastic_constants({0: bad}, tmp_path / "e.png")


def test_glide_barriers_profiles(run, tmp_path):
    case = run["numbers"]["glide_barriers"]["screw"]
    qmml = case["qmml"][0]
    e_file = [im.info["neb_energy_virtual_work"]
              for im in F.read_neb_profile(run["inputs"]["neb"][0][1])[0]]
    np.testing.assert_allclose(qmml["energy"], np.array(e_file) - e_file[0])
    assert qmml["barrier"] == pytest.approx(max(qmml["energy"]))
    assert set(case["ml"]) == {"ML Θ0 (iteration 0)", "ML retrained (iteration 1)"}
    for profile in case["ml"].values():
        e = np.array(profile["energy"])
        assert profile["converged"]
        assert profile["s"][0] == 0 and profile["s"][-1] == pytest.approx(1.0)
        # symmetric glide step between ML-relaxed ends: saddle in the middle, ends equal
        assert profile["barrier"] == pytest.approx(e.max())
        assert 0.005 < profile["barrier"] < 0.3  # eV per b: a Peierls barrier, not noise
        assert abs(e[-1]) < 0.1 * e.max()
        assert np.argmax(e) == len(e) // 2

    empty = tmp_path / "glide.png"
    assert F.glide_barriers([], run["inputs"]["ml_profiles"], empty) == {}
    assert_message_png(empty)


def test_dd_map_of_compact_screw_core(run):
    (label, summary), = run["numbers"]["dd_maps"].items()
    assert label == "screw (iteration 0)"
    assert summary["kind"] == "screw111"
    # compact ½<111> screw core: three first-neighbour pairs carry ≈ b/3 each
    assert summary["core_dd_over_b"] == pytest.approx(1 / 3, abs=0.05)
    assert summary["max_dd_over_b"] == pytest.approx(summary["core_dd_over_b"])


def test_dd_map_has_a_colour_legend_and_panels_apart(run, tmp_path, drawn):
    relaxed, structures = run["inputs"]["relaxed"], run["inputs"]["structures"]
    # two panels of the same core: labelled apart, one colour bar for both
    summary = F.dd_maps(relaxed * 2, tmp_path / "dd.png", structures * 2)
    assert len(summary) == 2
    assert_real_png(tmp_path / "dd.png")
    (fig,) = drawn
    bars = [ax for ax in fig.axes if "height along the line" in ax.get_xlabel()]
    assert len(bars) == 1
    assert bars[0].get_xlim() == (0.0, 1.0)  # the colour range of the atoms' heights
    maps = [ax for ax in fig.axes if ax not in bars and ax.axison]
    assert len(maps) == 2
    for ax in maps:  # the atoms: coloured on the colour bar's scale
        atoms = ax.collections[0]
        assert (atoms.norm.vmin, atoms.norm.vmax) == (0, 1)
        assert len(set(np.round(atoms.get_array(), 6))) == 3  # three heights per ½<111> b
    assert_panels_apart(fig)


def test_dd_reference_bulk_and_burgers_circuit(run):
    from ase.io import read

    structure = read(run["inputs"]["structures"][0], format="extxyz")
    relaxed = read(run["inputs"]["relaxed"][0][1], format="extxyz")
    bulk, info = F.reference_bulk(relaxed, structure)
    b = np.asarray(info["burgers"])
    pairs, dd = F.differential_displacements(bulk, bulk, b, info["a0"])
    assert np.abs(dd).max() == 0.0  # the perfect crystal has no DD
    pairs, dd = F.differential_displacements(relaxed, bulk, b, info["a0"])
    # Burgers circuit round the core triangle: the three DDs add up to ±b
    core = np.asarray(info["core_position"])
    mid = bulk.positions[pairs, :2].mean(axis=1)
    near = np.argsort(np.linalg.norm(mid - core, axis=1))[:3]
    i, j = pairs[near].T
    assert len(set(i) | set(j)) == 3  # one triangle of columns
    assert abs(np.abs(dd[near]).sum() - np.linalg.norm(b)) < 0.05 * np.linalg.norm(b)
    # QM/ML outputs carry the structure info themselves; without it: one clear error
    alone, _ = F.reference_bulk(relaxed)
    assert np.allclose(alone.positions, bulk.positions)
    bare = relaxed.copy()
    bare.info.clear()
    with pytest.raises(QmmlError, match="structure info 'kind' missing"):
        F.reference_bulk(bare)


def test_binding_energy_groups_sorted_and_errors(run, tmp_path, drawn):
    n = run["numbers"]["binding_energy"]
    assert n[("vac", "screw")] == {"distance": [0.0, 6.0], "E_b_qmml": [0.71, 0.05],
                                   "E_b_ml": [0.52, 0.02], "E_b_qmml_path_error": [-0.01, 0.004]}
    assert n[("he", "screw")]["E_b_ml"] == [0.61, 0.0]
    bad = tmp_path / "binding.csv"
    bad.write_text("defect,dislocation,distance,E_b_qmml\nvac,screw,0,1\n")
    with pytest.raises(QmmlError, match="binding.csv: required column 'E_b_ml' missing"):
        F.binding_energy(bad, tmp_path / "b.png")
    # two distances are two points (markers only); three or more trace a profile (lines)
    drawn.clear()
    F.binding_energy(run["inputs"]["binding"][0], tmp_path / "two.png")
    (fig,) = drawn
    data = [line for line in fig.axes[0].get_lines() if line.get_marker() in ("o", "s")]
    assert len(data) == 4  # QM/ML and ML-only of vac and he
    assert all(line.get_linestyle() == "None" and line.get_marker() not in ("None", "")
               for line in data)
    three = tmp_path / "three.csv"
    three.write_text(run["inputs"]["binding"][0].read_text()
                     + "vac,screw,3.0,0.3,0.01,0.25,paths/vac_2.xyz\n")
    drawn.clear()
    groups = F.binding_energy(three, tmp_path / "three.png")
    assert groups[("vac", "screw")]["distance"] == [0.0, 3.0, 6.0]
    (fig,) = drawn
    styles = {len(line.get_xdata()): line.get_linestyle() for line in fig.axes[0].get_lines()
              if line.get_marker() in ("o", "s")}
    assert styles[3] != "None" and styles[2] == "None"

    none = tmp_path / "none.png"
    assert F.binding_energy(None, none) == {}
    assert_message_png(none)


def _table(document: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', document, re.S)
    assert body, f"table {table_id} missing"
    return [re.findall(r"<td[^>]*>(.*?)</td>", row)
            for row in re.findall(r"<tr>(.*?)</tr>", body.group(1))]


def test_report_embeds_figures_and_tables(run):
    R, inputs = run["R"], run["inputs"]
    captions = read_captions(WORKFLOW_REPORT, F.FIGURES)
    assert all(len(captions[name]) > 80 for name in F.FIGURES)  # one caption per figure
    out = write_report(R / "report.html", run["outputs"], elastic=inputs["elastic"],
                       retrain=inputs["retrain"], targets_summary=inputs["targets_summary"],
                       binding=inputs["binding"][0],
                       frames=inputs["relaxed"] + inputs["neb"],
                       config={"qm": {"engine": "reference"}, "iterations": 1},
                       captions=captions)
    doc = out.read_text()
    for name, png in run["outputs"].items():
        img = re.search(rf'<img id="img-{name}" alt="{name}" '
                        r'src="data:image/png;base64,([A-Za-z0-9+/=]+)">', doc)
        assert img, name
        assert base64.b64decode(img.group(1)) == png.read_bytes()
    assert 'src="http' not in doc and "<link" not in doc  # self-contained
    engine = re.search(r'<p id="qm-engine">QM engine: <b>(.*?)</b>', doc).group(1)
    assert engine == "reference (classical stand-in, not QM)"

    elastic = _table(doc, "elastic")
    for row, (i, path) in zip(elastic, inputs["elastic"]):
        assert row[0] == str(i)
        values = json.loads(path.read_text())
        assert row[1:5] == [format_value(float(values[k])) for k in F.ELASTIC_KEYS]
    report = json.loads(inputs["retrain"][0][1].read_text())
    (retrain_row,) = _table(doc, "retrain")
    assert retrain_row[:3] == ["1", format_value(report["qm_force_rmse_before"]),
                               format_value(report["qm_force_rmse_after"])]
    summary = json.loads(inputs["targets_summary"][0][1].read_text())
    (force_row,) = _table(doc, "qm-force-errors")
    assert force_row[:2] == ["0", format_value(summary["qm_force_rmse"])]
    assert force_row[4] == str(summary["n_qm_atoms"])
    binding = _table(doc, "binding")
    assert binding[1] == ["vac", "screw", "0", "0.71", "-0.01", "0.52"]  # sorted as in file
    assert "paths/vac_0.xyz" not in doc  # path files stay in the CSV
    runs = _table(doc, "runs")
    assert [r[1] for r in runs] == ["reference (classical stand-in, not QM)"] * 2
    assert [r[0] for r in runs] == ["iter_0/screw_initial.xyz", "iter_0/screw_neb.xyz"]
    neb_barrier = format_value(profile_barrier(inputs["neb"][0][1]))
    assert runs[0][-1] == "—" and runs[1][-1] == neb_barrier
    assert dict((r[0], r[1]) for r in _table(doc, "provenance"))["qmml"]


def profile_barrier(path) -> float:
    from ase.io import read

    return float(read(path, index=-1, format="extxyz").info["neb_barrier_virtual_work"])
