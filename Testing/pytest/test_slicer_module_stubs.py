"""Import the two module files against minimal stand-ins of slicer/qt/vtk and run the console Logic paths that need
no MRML node (SliceSeries in, plain results out, create_nodes=False).

This catches what py_compile cannot: module-level code (parameter-node annotations, class definitions), imports,
and the Logic's use of the analysis sequence and of the dependency helpers. The stand-ins are only what those lines
touch; anything else raises AttributeError, so a test cannot pass by calling something the stubs invent.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _stub_modules():
    class _Node:  # stands for the vtkMRML* classes used in annotations
        pass

    slicer = types.ModuleType("slicer")
    for name in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLSequenceNode", "vtkMRMLTableNode"):
        setattr(slicer, name, type(name, (_Node,), {}))
    connected = []
    slicer.app = types.SimpleNamespace(connect=lambda signal, slot: connected.append((signal, slot)))
    util = types.ModuleType("slicer.util")
    util.VTKObservationMixin = type("VTKObservationMixin", (), {"__init__": lambda self: None})
    util.settingsValue = lambda key, default, **kw: default
    slicer.util = util
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.Choice = lambda choices: ("Choice", tuple(choices))
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
        setattr(slm, name, type(name, (), {"__init__": lambda self, *a: None}))
    # the real base keeps the parent (the module's qSlicerScriptedLoadableModule) and offers the documentation link
    slm.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {
        "__init__": lambda self, parent: setattr(self, "parent", parent),
        "getDefaultModuleDocumentationLink": lambda self: ""})
    slm.ScriptedLoadableModuleLogic = type("ScriptedLoadableModuleLogic", (), {"__init__": lambda self: None})
    qt = types.ModuleType("qt")
    vtk = types.ModuleType("vtk")
    return {"slicer": slicer, "slicer.util": util, "slicer.parameterNodeWrapper": pnw,
            "slicer.ScriptedLoadableModule": slm, "qt": qt, "vtk": vtk}, connected


@pytest.fixture
def modules(monkeypatch):
    stubs, connected = _stub_modules()
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(REPO / "PerfusionSeg"))
    monkeypatch.syspath_prepend(str(REPO / "PerfusionDAUGS"))
    for cached in [m for m in sys.modules if m.startswith("PerfusionSegUtils.nodes") or m.startswith(
            "PerfusionSegUtils.dependencies")]:
        monkeypatch.delitem(sys.modules, cached)
    loaded = {}
    for name in ("PerfusionSeg", "PerfusionDAUGS"):
        spec = importlib.util.spec_from_file_location(f"_stubbed_{name}", REPO / name / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded[name] = module
    loaded["connected"] = connected
    return loaded


def test_modules_define_what_slicer_needs(modules):
    seg, daugs = modules["PerfusionSeg"], modules["PerfusionDAUGS"]
    for module, name in ((seg, "PerfusionSeg"), (daugs, "PerfusionDAUGS")):
        for suffix in ("", "Widget", "Logic", "Test"):
            assert hasattr(module, name + suffix), name + suffix
    fields = seg.PerfusionSegParameterNode.__annotations__
    assert {f"{c}{lv}" for c in ("stress", "rest") for lv in ("Basal", "Mid", "Apical")} <= set(fields)
    assert fields["method"].__metadata__[0] == ("Choice", ("Automatic", "ResUNet", "DAUGS"))
    assert seg.PerfusionSegParameterNode.method == "Automatic"
    assert daugs.PerfusionDAUGSParameterNode.umapStride == 2 and daugs.PerfusionDAUGSParameterNode.segStride == 16
    # the staged search and fp32 by default; the panel's options reach the analysis
    assert daugs.PerfusionDAUGSParameterNode.exhaustiveSearch is False and daugs.PerfusionDAUGSParameterNode.bf16 is False
    options = daugs.PerfusionDAUGSLogic.options(exhaustive=True, bf16=True)
    assert (options.method, options.exhaustive, options.bf16) == ("daugs", True, True)
    assert daugs.PerfusionDAUGSLogic.options().exhaustive is False
    # labels from the chosen member alone unless the panel asks for an ensemble
    assert daugs.PerfusionDAUGSParameterNode.ensembleMembers == 1
    assert daugs.PerfusionDAUGSParameterNode.__annotations__["ensembleMembers"].__metadata__[0] == ("WithinRange", 1, 16)
    assert daugs.PerfusionDAUGSLogic.options().ensemble == 1 and daugs.PerfusionDAUGSLogic.options(ensemble=5).ensemble == 5
    assert seg.PerfusionSegParameterNode.patientId == ""
    # the main panel's bfloat16 option (off by default) reaches the analysis
    assert seg.PerfusionSegParameterNode.bf16 is False
    assert seg.PerfusionSegLogic().analysisOptions(bf16=True).bf16 is True
    assert seg.PerfusionSegLogic().analysisOptions().bf16 is False
    seg.PerfusionSeg(types.SimpleNamespace())  # registers the sample data at startup
    assert modules["connected"][-1][0] == "startupCompleted()"


def test_console_process_without_nodes(modules):
    from PerfusionSegLib.phantom import generate_study

    logic = modules["PerfusionSeg"].PerfusionSegLogic()
    ph = generate_study(seed=1, condition="stress", n_slices=3, units="mmol/L", n_frames=40)
    truth = {("stress", s.level): t.labels for s, t in zip(ph.study.slices, ph.truth)}
    out = logic.process(stress=list(ph.study.slices), stressAif=ph.study.aif, labelsOverride=truth,
                        create_nodes=False, progress=lambda f, text: None)
    assert out["nodes"] is None
    analysis = out["analysis"]
    assert [s.level for s in analysis.slices] == ["basal", "mid", "apical"]
    assert analysis.table["Rest MBF"] == [None] * 17 and analysis.table["Stress MBF"][-1] > 0
    assert np.isfinite(analysis.slice("stress", "mid").mbf).any()
    # a single series is taken as the mid slice; options reach the analysis
    options = logic.analysisOptions(method="daugs", device="GPU", umapStride=4)
    assert (options.method, options.device, options.umap_stride) == ("daugs", "cuda", 4)
    # no user folder set (settings stand-in returns the default): the extension's own Resources/Models is searched
    assert Path(options.models_dirs[0]) == REPO / "Resources" / "Models"
    assert logic._byLevel(ph.study.slices[1]) == {"mid": ph.study.slices[1]}


def test_export_of_a_coarse_labelled_case_from_the_logic(modules, monkeypatch, tmp_path):
    """The labelling panel's "Coarse labels" option (parameter coarseLabels, off by default) reaches case.json."""
    import json

    from test_labelling import synthetic_slice

    from PerfusionSegUtils import nodes

    seg = modules["PerfusionSeg"]
    assert seg.PerfusionSegParameterNode.coarseLabels is False
    series, labels = synthetic_slice(seed=0)
    monkeypatch.setattr(nodes, "seriesFromNode", lambda node, **kw: (series, "reference"))
    monkeypatch.setattr(nodes, "labelsFromSegmentation", lambda node, reference: labels)
    segmentation = types.SimpleNamespace(GetName=lambda: "labels")
    logic = seg.PerfusionSegLogic()
    for coarse, case in ((True, "pA_mid"), (False, "pB_mid")):
        folder = logic.exportLabelledCase(object(), segmentation, str(tmp_path), case, coarse=coarse)
        meta = json.loads((Path(folder) / "case.json").read_text())
        assert meta["label_quality"] == ("coarse" if coarse else "exact")


def test_daugs_logic_process_passes_the_ensemble_option(modules, tmp_path):
    """The DAUGS panel's console/self-test path: `process(..., ensemble=K)` reaches run_daugs; choice unchanged."""
    from test_qc_calibration import _tiny_pool

    from PerfusionSegLib.phantom import generate_study

    logic = modules["PerfusionDAUGS"].PerfusionDAUGSLogic()
    series = generate_study(seed=2, condition="stress", n_slices=1, n_frames=30).study.slices[0]
    pool = str(_tiny_pool(tmp_path, n_members=3))
    kw = dict(pool=pool, umapStride=16, segStride=16, device="cpu", create_nodes=False, exhaustive=True,
              progress=lambda f, text: None)
    one = logic.process(series, **kw)["result"]
    three = logic.process(series, ensemble=3, **kw)["result"]
    assert one.ensemble == [one.chosen] and three.chosen == one.chosen and three.ensemble[0] == one.chosen
    assert len(three.ensemble) == 3 and np.array_equal(three.umap, one.umap)
