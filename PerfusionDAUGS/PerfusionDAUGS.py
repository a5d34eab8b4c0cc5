"""PerfusionDAUGS: data-adaptive uncertainty-guided segmentation (DAUGS) of a perfusion slice in 3D Slicer.

A pool of patch-level networks segments the slice; each member's uncertainty map (U-map) and its uncertainty U_pp
are computed, and the least uncertain member's segmentation is chosen. The science is in PerfusionDAUGSLib; this file
converts nodes to arrays (main thread), runs the Lib on a worker thread, and creates new nodes (main thread).
"""
import logging
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

LEVELS = ("basal", "mid", "apical")
DEVICES = {"auto": "auto", "CPU": "cpu", "GPU": "cuda"}
POOL_SETTINGS_KEY = "CardiacPerfusion/DAUGSPool"
UMAP_WINDOW = (0.0, 0.5)


class PerfusionDAUGS(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Perfusion DAUGS"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = []
        self.parent.contributors = ["CardiacPerfusion developers"]
        self.parent.helpText = """
Segments a first-pass perfusion slice with a pool of patch-level networks and chooses, for this very image, the member
whose uncertainty map is lowest (DAUGS). Shows the chosen segmentation, its uncertainty map (0-0.5) as an overlay, a
table of U_pp and U_tot of every member (ranked), quality-control flags, and any member's result for comparison.
Research use only: not for clinical decisions.
"""
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = """
DAUGS follows Yalcinkaya et al., data-adaptive uncertainty-guided segmentation of perfusion MRI. Built on 3D Slicer
and the PyTorch extension.
"""


SeriesNode = Union[vtkMRMLSequenceNode, vtkMRMLScalarVolumeNode]


@parameterNodeWrapper
class PerfusionDAUGSParameterNode:
    inputSeries: SeriesNode
    level: Annotated[str, Choice(list(LEVELS))] = "mid"
    frameInterval: Annotated[float, WithinRange(0.05, 10.0)] = 1.0
    umapStride: Annotated[int, WithinRange(1, 32)] = 2
    segStride: Annotated[int, WithinRange(1, 64)] = 16
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    exhaustiveSearch: bool = False
    bf16: bool = False
    ensembleMembers: Annotated[int, WithinRange(1, 16)] = 1


class PerfusionDAUGSWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._tasks = None   # PanelTask, made in setup()
        self._input = None
        self._run = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PerfusionDAUGS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PerfusionDAUGSLogic()

        from PerfusionSegUtils.task_panel import PanelTask
        self._tasks = PanelTask(self.ui, self._onTaskFinished, self._updateButtons)

        self.ui.poolPathLineEdit.currentPath = slicer.util.settingsValue(POOL_SETTINGS_KEY, "") or ""
        self.ui.poolPathLineEdit.currentPathChanged.connect(lambda path: qt.QSettings().setValue(POOL_SETTINGS_KEY, path))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", lambda checked: self._tasks.cancel())
        self.ui.showMemberButton.connect("clicked(bool)", self.onShowMemberButton)
        self.ui.memberComboBox.currentIndexChanged.connect(lambda index: self._updateButtons())
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._tasks is not None:
            self._tasks.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self._tasks.cancel(announce=False)
        self._run = None
        self.ui.memberComboBox.clear()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self._tasks is not None and self._tasks.running
        hasInput = bool(self._parameterNode) and self._parameterNode.inputSeries is not None
        self.ui.applyButton.enabled = hasInput and not running
        self.ui.cancelButton.enabled = running
        self.ui.showMemberButton.enabled = self._run is not None and self.ui.memberComboBox.currentIndex >= 0

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not start DAUGS.", waitCursor=True):
            p = self._parameterNode
            self.logic.ensureDependencies()
            self._input = self.logic.collectInput(p.inputSeries, level=p.level, frameInterval=p.frameInterval)
            options = self.logic.options(pool=self.ui.poolPathLineEdit.currentPath or None, umapStride=p.umapStride,
                                         segStride=p.segStride, device=DEVICES[p.device],
                                         exhaustive=p.exhaustiveSearch, bf16=p.bf16, ensemble=p.ensembleMembers)
            status = ("Running every pool member on every window (exhaustive search: minutes on a CPU)..."
                      if p.exhaustiveSearch else "Running the pool...")
            self._tasks.start(self.logic.analyse, self._input["series"], options, status=status)
        self._updateButtons()

    def _onTaskFinished(self, outcome) -> None:
        if not self._tasks.succeeded(outcome, "DAUGS"):
            return
        with slicer.util.tryWithErrorDisplay("Could not create the result nodes.", waitCursor=True):
            self._run = {"result": outcome.result, "input": self._input,
                         "nodes": self.logic.createNodes(outcome.result, self._input)}
            ranking = self.logic.memberRanking(outcome.result)
            self.ui.memberComboBox.clear()
            for row in ranking:
                self.ui.memberComboBox.addItem(f"{row['member']}  (U_pp {row['U_pp']:.4f})" +
                                               ("  [chosen]" if row["chosen"] else ""), row["member"])
            flags = self.logic.qcFlags(outcome.result)
            self.ui.qcLabel.text = "QC: " + ("; ".join(flags) if flags else "no flags")
            self.ui.statusLabel.text = (f"Done ({outcome.result.search} search): chosen member "
                                        f"{self.logic.chosenMember(outcome.result)}.")

    def onShowMemberButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not show the member's segmentation.", waitCursor=True):
            member = self.ui.memberComboBox.itemData(self.ui.memberComboBox.currentIndex)
            node = self.logic.showMember(self._run, member)
            self.ui.statusLabel.text = f"Showing {node.GetName()}"


class PerfusionDAUGSLogic(ScriptedLoadableModuleLogic):
    """Console use::

        logic = slicer.util.getModuleLogic("PerfusionDAUGS")
        run = logic.process(getNode("stress_mid"), level="mid", umapStride=2, segStride=16)
        logic.memberRanking(run["result"])      # [{"member", "U_pp", "U_tot", "chosen"}, ...] lowest U_pp first
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PerfusionDAUGSParameterNode(super().getParameterNode())

    @staticmethod
    def ensureDependencies(askConfirmation: bool = True) -> None:
        from PerfusionSegUtils import dependencies
        dependencies.ensurePythonPackages(askConfirmation=askConfirmation)
        dependencies.ensureTorch(askConfirmation=askConfirmation)

    @staticmethod
    def options(pool=None, umapStride=2, segStride=16, device="auto", exhaustive=False, bf16=False, ensemble=1):
        """``exhaustive``: every member on every U-map window instead of the staged search (the reference the
        staged search is measured against; minutes per slice on a CPU). ``bf16``: bfloat16 inference.
        ``ensemble``: labels from the mean probabilities of this many best-ranked members (1: the chosen one's)."""
        from PerfusionSegUtils import dependencies
        from PerfusionSegLib.analysis import AnalysisOptions
        return AnalysisOptions(method="daugs", device=device, pool=pool, umap_stride=int(umapStride),
                               seg_stride=int(segStride), compute_mbf=False, exhaustive=bool(exhaustive),
                               bf16=bool(bf16), ensemble=int(ensemble),
                               models_dirs=tuple(dependencies.modelsDirectories(__file__)))

    @staticmethod
    def collectInput(seriesNode, level="mid", frameInterval=None) -> dict:
        from PerfusionSegLib.series import SliceSeries
        from PerfusionSegUtils import nodes

        if isinstance(seriesNode, SliceSeries):
            return {"series": seriesNode.replace(level=level), "reference": None, "node": None}
        series, reference = nodes.seriesFromNode(seriesNode, level=level, frameInterval=frameInterval)
        return {"series": series, "reference": reference, "node": seriesNode}

    @staticmethod
    def analyse(context, series, options):
        """Worker-safe: loads the pool and runs DAUGS on plain arrays (PerfusionDAUGSLib)."""
        from PerfusionSegLib.analysis import run_daugs_series
        return run_daugs_series(context, series, options)

    # -- results -------------------------------------------------------------------------------------------------
    @staticmethod
    def memberRanking(result) -> list:
        from PerfusionSegLib.analysis import daugs_member_ranking
        return daugs_member_ranking(result)

    @staticmethod
    def chosenMember(result) -> str:
        return str(result.chosen)

    @staticmethod
    def qcFlags(result) -> list:
        from PerfusionSegLib.analysis import daugs_qc_flags
        return daugs_qc_flags(result)

    def _reference(self, input):
        if input.get("reference") is None:
            from PerfusionSegUtils import nodes
            series = input["series"]
            volume = slicer.util.addVolumeFromArray(series.data[:1], name=nodes.uniqueName(f"{series.source} frame"))
            if series.affine is not None:
                volume.SetIJKToRASMatrix(nodes.rasMatrixFromLps(series.affine))
            input["reference"] = volume
        return input["reference"]

    def createNodes(self, result, input, showLayout=True) -> dict:
        """New nodes: chosen segmentation, U-map overlay (0-0.5 with a colour legend), ranked member table."""
        from PerfusionSegUtils import nodes

        reference = self._reference(input)
        base = f"{input['series'].source or 'series'} {input['series'].level or ''}".strip()
        created = {
            "segmentation": nodes.createSegmentationNode(result.labels, reference,
                                                         f"{base} DAUGS ({self.chosenMember(result)})"),
            "umap": nodes.createMapVolume(result.umap, reference, f"{base} U-map", window=UMAP_WINDOW),
            "members": {},
        }
        ranking = self.memberRanking(result)
        created["table"] = nodes.createTableNode(
            {"Rank": [i + 1 for i in range(len(ranking))], "Member": [r["member"] for r in ranking],
             "U_pp": [r["U_pp"] for r in ranking], "U_tot": [r["U_tot"] for r in ranking],
             "Chosen": ["yes" if r["chosen"] else "" for r in ranking]},
            f"{base} DAUGS pool",
            descriptions={"U_pp": "per-pixel uncertainty of the member (lower is more certain)",
                          "U_tot": "total uncertainty of the member's U-map"})
        created["segmentation"].SetAttribute("CardiacPerfusion.QC", "; ".join(self.qcFlags(result)))
        nodes.putInFolder([created["segmentation"], created["umap"], created["table"]], f"{base} DAUGS")
        if showLayout:
            nodes.showResultLayout(reference, created["umap"], None, created["table"], foregroundOpacity=0.5)
        return created

    def showMember(self, run, member):
        """A segmentation node of one pool member (created once per member), shown for comparison."""
        from PerfusionSegUtils import nodes
        from PerfusionSegLib.analysis import daugs_member_labels

        if member in run["nodes"]["members"]:
            segmentationNode = run["nodes"]["members"][member]
        else:
            labels = daugs_member_labels(run["result"], member, run["input"]["series"])
            segmentationNode = nodes.createSegmentationNode(labels, self._reference(run["input"]),
                                                            f"{run['input']['series'].source} DAUGS member {member}")
            run["nodes"]["members"][member] = segmentationNode
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)
        return segmentationNode

    def process(self, seriesNode, pool=None, umapStride=2, segStride=16, device="auto", level="mid",
                frameInterval=None, create_nodes=True, progress=None, exhaustive=False, bf16=False,
                ensemble=1) -> dict:
        """Synchronous run (console, tests): {"result": DAUGSResult, "input": ..., "nodes": created or None}."""
        from PerfusionSegLib.background import SyncContext

        input = self.collectInput(seriesNode, level=level, frameInterval=frameInterval)
        options = self.options(pool=pool, umapStride=umapStride, segStride=segStride, device=device,
                               exhaustive=exhaustive, bf16=bf16, ensemble=ensemble)
        context = SyncContext(progress or (lambda f, text: logging.info(f"PerfusionDAUGS {100 * f:.0f}% {text}")))
        result = self.analyse(context, input["series"], options)
        run = {"result": result, "input": input, "nodes": None}
        if create_nodes:
            run["nodes"] = self.createNodes(result, input)
        return run


class PerfusionDAUGSTest(ScriptedLoadableModuleTest):
    """Runs the DAUGS Logic on one slice of the locally generated phantom (needs a trained pool)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_daugsOnPhantom()

    def test_daugsOnPhantom(self):
        import numpy as np
        from PerfusionSeg import PerfusionSegLogic
        from PerfusionSegLib.analysis import default_pool_available

        logic = PerfusionDAUGSLogic()
        options = logic.options()
        if not default_pool_available(options):
            self.delayDisplay("No trained DAUGS pool in the models folders: DAUGS run not tested")
            return
        loaded = PerfusionSegLogic().loadPhantomStudy(seed=4, conditions=("stress",))
        run = logic.process(loaded["series"][("stress", "mid")], level="mid", umapStride=4, segStride=16)
        created = run["nodes"]
        names = [created["segmentation"].GetSegmentation().GetNthSegment(i).GetName() for i in range(3)]
        self.assertEqual(names, ["LV blood pool", "LV myocardium", "RV blood pool"])
        umap = slicer.util.arrayFromVolume(created["umap"])
        self.assertTrue(np.all(umap >= 0))
        display = created["umap"].GetDisplayNode()
        self.assertAlmostEqual(display.GetWindowLevelMin(), UMAP_WINDOW[0])
        self.assertAlmostEqual(display.GetWindowLevelMax(), UMAP_WINDOW[1])
        ranking = logic.memberRanking(run["result"])
        self.assertEqual(created["table"].GetNumberOfRows(), len(ranking))
        self.assertTrue(ranking[0]["chosen"])
        member = ranking[-1]["member"]
        node = logic.showMember(run, member)
        self.assertIs(logic.showMember(run, member), node)
        # "Labels from members": the same choice and U-map, the labels from the best-ranked members' probabilities
        both = logic.process(loaded["series"][("stress", "mid")], level="mid", umapStride=4, segStride=16,
                             create_nodes=False, ensemble=2)["result"]
        self.assertEqual(both.chosen, run["result"].chosen)
        self.assertEqual(both.ensemble[0], run["result"].chosen)
        self.assertLessEqual(len(both.ensemble), 2)
        self.assertTrue(np.array_equal(both.umap, run["result"].umap))
