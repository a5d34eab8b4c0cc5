"""PerfusionSeg: first-pass perfusion MRI in 3D Slicer: LV/RV segmentation, AHA sectors, pixel-wise MBF, report.

The science lives in PerfusionSegLib (pure Python, also the `perfusion` command line). This file is the Slicer glue:
MRML nodes -> numpy (main thread) -> Lib on a worker thread (numpy/torch only) -> new MRML nodes (main thread).
"""
import logging
import os
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer import (vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLSequenceNode,
                    vtkMRMLTableNode)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

LEVELS = ("basal", "mid", "apical")
CONDITIONS = ("stress", "rest")
METHODS = {"Automatic": "auto", "ResUNet": "resunet", "DAUGS": "daugs"}  # automatic: the DAUGS pool when installed
DEVICES = {"auto": "auto", "CPU": "cpu", "GPU": "cuda"}
DATASET_DIR_SETTINGS_KEY = "CardiacPerfusion/DatasetDirectory"
PHANTOM_SAMPLE_NAME = "Perfusion phantom study"


#
# PerfusionSeg
#
class PerfusionSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Perfusion Segmentation & MBF"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = []
        self.parent.contributors = ["CardiacPerfusion developers"]
        self.parent.helpText = """
First-pass myocardial perfusion MRI: segments the LV blood pool, LV myocardium and RV blood pool of each short-axis
slice (basal, mid, apical; stress and rest) with a ResUNet or a DAUGS model pool, finds the RV insertion points, divides
the myocardium into the AHA segments, computes pixel-wise myocardial blood flow (Fermi model) and reports the
16-segment values, the myocardial perfusion reserve and a bullseye. The ground-truth labelling section prepares a
segmentation on the peak-enhancement frame, exports labelled cases for training and compares two segmentations.
Research use only: not for clinical decisions.
"""
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = """
Methods follow Xue et al. (ResUNet perfusion segmentation, Kellman lab) and Yalcinkaya et al. (DAUGS: data-adaptive
uncertainty-guided segmentation). The AHA model follows Cerqueira et al., Circulation 2002. Built on 3D Slicer, the
Sequences module and the PyTorch extension.
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


def _loadPhantomSample(source=None):
    """SampleData 'custom downloader': the phantom study is generated locally, nothing is downloaded."""
    return PerfusionSegLogic().loadPhantomStudy()


def registerSampleData():
    """Register the locally generated phantom study with the Sample Data module (its button calls the generator)."""
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Cardiac perfusion",
        sampleName=PHANTOM_SAMPLE_NAME,
        uris="generated-locally:perfusion-phantom",  # never fetched: the custom downloader generates the data
        fileNames="PerfusionPhantomStudy.seq.nrrd",
        nodeNames="PerfusionPhantomStudy",
        thumbnailFileName=os.path.join(iconsPath, "PerfusionPhantom.png"),
        loadFileType="SequenceFile",
        customDownloader=_loadPhantomSample,
    )


#
# Parameter node
#
SeriesNode = Union[vtkMRMLSequenceNode, vtkMRMLScalarVolumeNode]
AifNode = Union[vtkMRMLSequenceNode, vtkMRMLScalarVolumeNode, vtkMRMLTableNode]


@parameterNodeWrapper
class PerfusionSegParameterNode:
    stressBasal: SeriesNode
    stressMid: SeriesNode
    stressApical: SeriesNode
    restBasal: SeriesNode
    restMid: SeriesNode
    restApical: SeriesNode
    stressAif: AifNode
    restAif: AifNode
    frameInterval: Annotated[float, WithinRange(0.05, 10.0)] = 1.0
    method: Annotated[str, Choice(list(METHODS))] = "Automatic"
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    computeMbf: bool = True
    bf16: bool = False
    labelSeries: SeriesNode
    labelSegmentation: vtkMRMLSegmentationNode
    labelLevel: Annotated[str, Choice(list(LEVELS))] = "mid"
    labelCondition: Annotated[str, Choice(list(CONDITIONS))] = "stress"
    caseId: str = ""
    patientId: str = ""
    coarseLabels: bool = False      # the exported labels are rough outlines (training learns from their cores only)
    referenceSegmentation: vtkMRMLSegmentationNode


#
# Widget
#
class PerfusionSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._tasks = None   # PanelTask, made in setup()
        self._prepared = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PerfusionSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PerfusionSegLogic()

        from PerfusionSegUtils.task_panel import PanelTask
        self._tasks = PanelTask(self.ui, self._onTaskFinished, self._updateButtons,
                                cancellingText="Cancelling after the current step...")

        from PerfusionSegUtils import dependencies
        self.ui.modelsDirectoryPathLineEdit.currentPath = dependencies.userModelsDirectory()
        self.ui.modelsDirectoryPathLineEdit.currentPathChanged.connect(dependencies.setUserModelsDirectory)
        self.ui.datasetDirectoryButton.directory = slicer.util.settingsValue(DATASET_DIR_SETTINGS_KEY, "") or \
            qt.QDir.homePath()
        self.ui.datasetDirectoryButton.directoryChanged.connect(
            lambda path: qt.QSettings().setValue(DATASET_DIR_SETTINGS_KEY, path))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", lambda checked: self._tasks.cancel())
        self.ui.loadPhantomButton.connect("clicked(bool)", self.onLoadPhantomButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependenciesButton)
        self.ui.prepareLabellingButton.connect("clicked(bool)", self.onPrepareLabellingButton)
        self.ui.exportCaseButton.connect("clicked(bool)", self.onExportCaseButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.labellingCollapsibleButton.collapsed = True

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
        self._tasks.cancel(announce=False)  # its result would refer to nodes that are about to disappear
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
        p = self._parameterNode
        running = self._tasks is not None and self._tasks.running
        hasInput = bool(p) and any(getattr(p, f"{c}{lv.capitalize()}") for c in CONDITIONS for lv in LEVELS)
        self.ui.applyButton.enabled = hasInput and not running
        self.ui.applyButton.toolTip = "Run the analysis" if hasInput else "Select at least one input series"
        self.ui.cancelButton.enabled = running
        self.ui.prepareLabellingButton.enabled = bool(p) and p.labelSeries is not None
        self.ui.exportCaseButton.enabled = bool(p) and p.labelSeries is not None and p.labelSegmentation is not None
        self.ui.compareButton.enabled = bool(p) and p.labelSegmentation is not None and \
            p.referenceSegmentation is not None and p.labelSeries is not None

    # ---------------------------------------------------------------------------------------------------------
    def _inputs(self, condition):
        p = self._parameterNode
        return {lv: getattr(p, f"{condition}{lv.capitalize()}") for lv in LEVELS}

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not start the analysis.", waitCursor=True):
            p = self._parameterNode
            method = METHODS[p.method]
            self.logic.ensureDependencies(needTorch=True)
            self._prepared = self.logic.collectInputs(
                stress=self._inputs("stress"), rest=self._inputs("rest"), stressAif=p.stressAif,
                restAif=p.restAif, frameInterval=p.frameInterval)
            options = self.logic.analysisOptions(method=method, device=DEVICES[p.device], computeMbf=p.computeMbf,
                                                 bf16=p.bf16)
            self._tasks.start(self.logic.analyse, self._prepared["studies"], options, status="Running...")
        self._updateButtons()

    def _onTaskFinished(self, outcome) -> None:
        if not self._tasks.succeeded(outcome, "Analysis"):
            return
        with slicer.util.tryWithErrorDisplay("Could not create the result nodes.", waitCursor=True):
            nodes = self.logic.createNodes(outcome.result, self._prepared)
            lines = [f"Done: {len(nodes['segmentations'])} segmentation(s)"
                     + (", MBF maps and AHA table." if nodes.get("table") else ".")]
            lines += outcome.result.messages
            self.ui.statusLabel.text = "\n".join(lines)

    def onLoadPhantomButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not generate the phantom study.", waitCursor=True):
            loaded = self.logic.loadPhantomStudy()
            p = self._parameterNode
            for (condition, level), sequenceNode in loaded["series"].items():
                setattr(p, f"{condition}{level.capitalize()}", sequenceNode)
            p.stressAif = loaded["aif"].get("stress")
            p.restAif = loaded["aif"].get("rest")
            p.labelSeries = loaded["series"].get(("stress", "mid"))
            self.ui.statusLabel.text = "Phantom study loaded (generated locally). Press Apply."

    def onInstallDependenciesButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not install the dependencies.", waitCursor=True):
            self.logic.ensureDependencies(needTorch=True)
            self.ui.statusLabel.text = "Dependencies are installed."

    # ---------------------------------------------------------------------------------------------------------
    def onPrepareLabellingButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not prepare the labelling.", waitCursor=True):
            p = self._parameterNode
            segmentationNode, frameVolume, frame = self.logic.prepareLabelling(p.labelSeries, p.frameInterval)
            p.labelSegmentation = segmentationNode
            self.ui.statusLabel.text = (f"Draw on frame {frame + 1} (peak myocardial enhancement) of "
                                        f"{frameVolume.GetName()}; then come back to export.")
            from PerfusionSegUtils import nodes
            nodes.openSegmentEditor(segmentationNode, frameVolume)

    def onExportCaseButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not export the labelled case.", waitCursor=True):
            p = self._parameterNode
            caseId = p.caseId.strip()
            if not caseId:     # its first part names the patient, which training keeps on one side of validation
                raise ValueError("Enter a case id that starts with the patient, e.g. patient07_stress_mid.")
            folder = self.logic.exportLabelledCase(p.labelSeries, p.labelSegmentation,
                                                   self.ui.datasetDirectoryButton.directory, caseId,
                                                   level=p.labelLevel, condition=p.labelCondition,
                                                   frameInterval=p.frameInterval,
                                                   patientId=p.patientId.strip() or None,
                                                   coarse=p.coarseLabels)
            self.ui.statusLabel.text = f"Exported {folder}"

    def onCompareButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not compare the segmentations.", waitCursor=True):
            p = self._parameterNode
            metrics, tableNode = self.logic.compareSegmentations(p.labelSegmentation, p.referenceSegmentation,
                                                                 p.labelSeries, p.frameInterval)
            from PerfusionSegUtils import nodes
            nodes.showResultLayout(None, tableNode=tableNode)
            myo = metrics.get("myocardium", {})
            self.ui.statusLabel.text = (f"Myocardium Dice {myo.get('dice', float('nan')):.3f}, "
                                        f"HD {myo.get('hd_mm', float('nan')):.1f} mm; all metrics in "
                                        f"{tableNode.GetName()}")


#
# Logic
#
class PerfusionSegLogic(ScriptedLoadableModuleLogic):
    """Console use (no widget needed)::

        logic = slicer.util.getModuleLogic("PerfusionSeg")
        result = logic.process(stress={"mid": getNode("stress_mid")}, method="auto", create_nodes=True)
        result["analysis"].table["Stress MBF"]         # 16 segments + global, plain floats
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PerfusionSegParameterNode(super().getParameterNode())

    # -- dependencies ---------------------------------------------------------------------------------------------
    @staticmethod
    def ensureDependencies(needTorch: bool = True, askConfirmation: bool = True) -> None:
        from PerfusionSegUtils import dependencies
        dependencies.ensurePythonPackages(askConfirmation=askConfirmation)
        if needTorch:
            dependencies.ensureTorch(askConfirmation=askConfirmation)

    @staticmethod
    def modelsDirectories() -> list:
        from PerfusionSegUtils import dependencies
        return dependencies.modelsDirectories(__file__)

    def analysisOptions(self, method="auto", device="auto", computeMbf=True, model=None, pool=None,
                        umapStride=2, segStride=16, outputDirectory=None, bf16=False):
        """``bf16``: bfloat16 inference for the ResUNet and the DAUGS pool (faster on CPUs with AVX512-BF16)."""
        from PerfusionSegLib.analysis import AnalysisOptions
        return AnalysisOptions(method=method, device=device, model=model, pool=pool,
                               models_dirs=tuple(self.modelsDirectories()), umap_stride=umapStride,
                               seg_stride=segStride, compute_mbf=computeMbf, output_dir=outputDirectory,
                               bf16=bool(bf16))

    # -- inputs (main thread) -------------------------------------------------------------------------------------
    @staticmethod
    def _byLevel(inputs) -> dict:
        """{level: node or SliceSeries} from a dict, a list ordered basal to apical, or a single node (mid)."""
        if inputs is None:
            return {}
        if isinstance(inputs, dict):
            return {lv: n for lv, n in inputs.items() if n is not None}
        if isinstance(inputs, (list, tuple)):
            from PerfusionSegLib.series import assign_levels
            return dict(zip(assign_levels(len(inputs)), inputs))
        return {"mid": inputs}

    def collectInputs(self, stress=None, rest=None, stressAif=None, restAif=None, frameInterval=None) -> dict:
        """Convert the input nodes (or SliceSeries) into Lib Studies. Returns {"studies": {condition: Study},
        "references": {(condition, level): volume node giving the output geometry}}."""
        from PerfusionSegLib.series import SliceSeries, Study
        from PerfusionSegUtils import nodes

        studies, references = {}, {}
        for condition, inputs, aifNode in (("stress", stress, stressAif), ("rest", rest, restAif)):
            slices = []
            for level, item in self._byLevel(inputs).items():
                if isinstance(item, SliceSeries):
                    slices.append(item.replace(level=level, condition=condition))
                    continue
                series, reference = nodes.seriesFromNode(item, level=level, condition=condition,
                                                         frameInterval=frameInterval)
                slices.append(series)
                references[(condition, level)] = reference
            if slices:
                aif = aifNode if (aifNode is None or not hasattr(aifNode, "GetID")) else \
                    nodes.aifFromNode(aifNode, frameInterval=frameInterval, condition=condition)
                studies[condition] = Study(slices=slices, aif=aif, condition=condition)
        return {"studies": studies, "references": references}

    # -- computation (worker-safe: no MRML) ----------------------------------------------------------------------
    @staticmethod
    def analyse(context, studies, options, labelsOverride=None):
        from PerfusionSegLib.analysis import analyse_studies
        return analyse_studies(context, studies, options, labels_override=labelsOverride)

    # -- outputs (main thread) -----------------------------------------------------------------------------------
    def createNodes(self, result, prepared, showLayout=True) -> dict:
        """New nodes for an AnalysisResult: a segmentation per slice, AHA sector label maps with one colour table,
        MBF maps, the 16-segment table and the bullseye; grouped in a subject-hierarchy folder. Never reuses names."""
        from PerfusionSegUtils import nodes

        created = {"segmentations": {}, "sectors": {}, "mbf": {}, "umap": {}, "colorTable": None, "table": None,
                   "bullseye": None}
        references = prepared["references"]
        for item in result.slices:
            key = (item.condition, item.level)
            reference = references.get(key)
            if reference is None:
                reference = self._referenceFromSeries(prepared, key)
            base = f"{item.source or 'series'} {item.condition} {item.level}"
            created["segmentations"][key] = nodes.createSegmentationNode(item.labels, reference, f"{base} segmentation")
            if item.sectors is not None:
                if created["colorTable"] is None:
                    created["colorTable"] = nodes.createAhaColorTable()
                created["sectors"][key] = nodes.createSectorLabelmap(item.sectors, reference, created["colorTable"],
                                                                     f"{base} AHA sectors")
            if item.mbf is not None:
                created["mbf"][key] = nodes.createMapVolume(item.mbf, reference, f"{base} MBF", window=(0.0, 5.0),
                                                            unit="ml/min/g")
            if item.umap is not None:
                created["umap"][key] = nodes.createMapVolume(item.umap, reference, f"{base} U-map", window=(0.0, 0.5))
        if result.table:
            created["table"] = nodes.createTableNode(
                result.table, "Perfusion AHA report",
                units={"Stress MBF": "ml/min/g", "Rest MBF": "ml/min/g"},
                descriptions={"Reserve": "myocardial perfusion reserve = stress MBF / rest MBF"})
        if result.bullseye_png:
            created["bullseye"] = nodes.loadImageAsVolume(result.bullseye_png, "Perfusion bullseye")
        allNodes = [n for group in ("segmentations", "sectors", "mbf", "umap") for n in created[group].values()]
        allNodes += [created["colorTable"], created["table"], created["bullseye"]]
        nodes.putInFolder(allNodes, "Perfusion results")
        if showLayout and created["segmentations"]:
            key = ("stress", "mid") if ("stress", "mid") in created["segmentations"] else \
                next(iter(created["segmentations"]))
            nodes.showResultLayout(references.get(key), created["mbf"].get(key) or created["umap"].get(key),
                                   created["sectors"].get(key), created["table"])
        return created

    @staticmethod
    def _referenceFromSeries(prepared, key):
        """For SliceSeries given directly (console), make a hidden 2-D volume that carries the slice geometry."""
        from PerfusionSegUtils import nodes
        study = prepared["studies"][key[0]]
        series = study.by_level(key[1])
        volume = slicer.util.addVolumeFromArray(series.data[:1], name=nodes.uniqueName(f"{series.source} {key[1]}"))
        volume.SetIJKToRASMatrix(nodes.rasMatrixFromLps(series.affine if series.affine is not None else
                                                        [[series.spacing[1], 0, 0, 0], [0, series.spacing[0], 0, 0],
                                                         [0, 0, 1, 0], [0, 0, 0, 1]]))
        prepared["references"][key] = volume
        return volume

    def process(self, stress=None, rest=None, stressAif=None, restAif=None, method="auto", device="auto",
                frameInterval=None, computeMbf=True, model=None, pool=None, labelsOverride=None, create_nodes=True,
                progress=None, bf16=False) -> dict:
        """Run everything synchronously (console scripting, tests). stress/rest: {level: node or SliceSeries}, a list
        ordered basal to apical, or one node. Returns {"analysis": AnalysisResult (plain arrays and numbers),
        "nodes": created nodes or None}."""
        from PerfusionSegLib.background import SyncContext

        prepared = self.collectInputs(stress=stress, rest=rest, stressAif=stressAif, restAif=restAif,
                                      frameInterval=frameInterval)
        options = self.analysisOptions(method=method, device=device, computeMbf=computeMbf, model=model, pool=pool,
                                       bf16=bf16)
        context = SyncContext(progress or (lambda f, text: logging.info(f"PerfusionSeg {100 * f:.0f}% {text}")))
        analysis = self.analyse(context, prepared["studies"], options, labelsOverride)
        created = self.createNodes(analysis, prepared) if create_nodes else None
        return {"analysis": analysis, "nodes": created, "prepared": prepared}

    # -- labelling ------------------------------------------------------------------------------------------------
    def prepareLabelling(self, seriesNode, frameInterval=None):
        """A new segmentation with the three named segments, on the peak-myocardial-enhancement frame of the series.
        Returns (segmentationNode, frameVolumeNode, frameIndex)."""
        from PerfusionSegLib.labelling import peak_myocardial_enhancement_frame
        from PerfusionSegUtils import nodes

        series, reference = nodes.seriesFromNode(seriesNode, frameInterval=frameInterval)
        frame = peak_myocardial_enhancement_frame(series)
        frameVolume = nodes.selectFrame(seriesNode, frame)
        if frameVolume is None:  # MultiVolume or 2D+T volume: give the editor a plain 2-D volume of that frame
            frameVolume = nodes.createVolumeFromArray(series.data[frame], reference,
                                                      f"{series.source} frame {frame + 1}")
        segmentationNode = nodes.createSegmentationNode(None, frameVolume, f"{series.source} labels")
        return segmentationNode, frameVolume, frame

    def exportLabelledCase(self, seriesNode, segmentationNode, datasetDirectory, caseId, level=None, condition=None,
                           frameInterval=None, overwrite=False, patientId=None, coarse=False):
        """``patientId``: case.json's patient_id (what training splits by); None: the case id up to its first '_'.
        ``coarse``: the labels are rough outlines; training learns from their cores only (PerfusionSegLib.weak_labels)."""
        from PerfusionSegLib.labelling import export_labelled_case
        from PerfusionSegUtils import nodes

        series, reference = nodes.seriesFromNode(seriesNode, level=level, condition=condition,
                                                 frameInterval=frameInterval)
        labels = nodes.labelsFromSegmentation(segmentationNode, reference)
        return export_labelled_case(series, labels, datasetDirectory, caseId, overwrite=overwrite,
                                    extra={"slicer_segmentation": segmentationNode.GetName()}, patient_id=patientId,
                                    coarse=coarse)

    def compareSegmentations(self, segmentationNode, referenceSegmentationNode, seriesNode, frameInterval=None):
        """Metrics (PerfusionSegLib.metrics.evaluate_pair) of a segmentation against a reference, and a table node."""
        from PerfusionSegLib.metrics import evaluate_pair
        from PerfusionSegUtils import nodes

        series, reference = nodes.seriesFromNode(seriesNode, frameInterval=frameInterval)
        labels = nodes.labelsFromSegmentation(segmentationNode, reference)
        referenceLabels = nodes.labelsFromSegmentation(referenceSegmentationNode, reference)
        metrics = evaluate_pair(labels, referenceLabels, spacing=series.spacing)
        names = sorted({m for values in metrics.values() for m in values})
        columns = {"Structure": list(metrics)}
        for name in names:
            columns[name] = [metrics[s].get(name) for s in metrics]
        tableNode = nodes.createTableNode(columns, f"{segmentationNode.GetName()} vs {referenceSegmentationNode.GetName()}")
        return metrics, tableNode

    # -- sample data ----------------------------------------------------------------------------------------------
    def loadPhantomStudy(self, seed=0, conditions=CONDITIONS, preset="siemens-flash-3t"):
        """Generate the phantom stress/rest study locally (PerfusionSegLib.phantom) and load it as Sequences.
        Returns {"series": {(condition, level): sequenceNode}, "aif": {condition: tableNode},
        "truth": {(condition, level): segmentationNode}, "phantom": {condition: PhantomStudy}}."""
        from PerfusionSegLib.phantom import generate_study
        from PerfusionSegUtils import nodes

        loaded = {"series": {}, "aif": {}, "truth": {}, "phantom": {}}
        for condition in conditions:
            phantom = generate_study(preset=preset, seed=seed, condition=condition, n_slices=3)
            loaded["phantom"][condition] = phantom
            for series, truth in zip(phantom.study.slices, phantom.truth):
                name = f"Phantom {condition} {series.level}"
                sequence, browser, proxy = nodes.createSequenceFromSeries(series, name)
                loaded["series"][(condition, series.level)] = sequence
                loaded["truth"][(condition, series.level)] = nodes.createSegmentationNode(
                    truth.labels, proxy, f"{name} truth")
            if phantom.study.aif is not None:
                loaded["aif"][condition] = nodes.createAifTable(phantom.study.aif, f"Phantom {condition} AIF")
        return loaded


#
# Test
#
class PerfusionSegTest(ScriptedLoadableModuleTest):
    """Runs the Logic on the locally generated phantom study (Slicer's own test runner)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantomWithTruthLabels()
        self.setUp()
        self.test_labellingWorkflow()
        self.setUp()
        self.test_networkIfModelAvailable()

    def test_phantomWithTruthLabels(self):
        """Truth contours in, every output node out, named as CONVENTIONS says, user nodes untouched."""
        import numpy as np
        from PerfusionSegUtils.nodes import SEGMENTS

        self.delayDisplay("Generating the phantom study")
        logic = PerfusionSegLogic()
        loaded = logic.loadPhantomStudy(seed=1)
        userNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "Perfusion AHA report")
        stress = {lv: loaded["series"][("stress", lv)] for lv in LEVELS}
        rest = {lv: loaded["series"][("rest", lv)] for lv in LEVELS}
        truth = {key: loaded["phantom"][key[0]].truth[LEVELS.index(key[1])].labels for key in loaded["series"]}
        result = logic.process(stress=stress, rest=rest, stressAif=loaded["aif"].get("stress"),
                               restAif=loaded["aif"].get("rest"), labelsOverride=truth, create_nodes=True)
        created = result["nodes"]
        self.assertEqual(len(created["segmentations"]), 6)
        for segmentationNode in created["segmentations"].values():
            segmentation = segmentationNode.GetSegmentation()
            self.assertEqual([segmentation.GetNthSegment(i).GetName() for i in range(3)], [s[1] for s in SEGMENTS])
            for i, (_, _, colour) in enumerate(SEGMENTS):
                np.testing.assert_allclose(segmentation.GetNthSegment(i).GetColor(), colour, atol=1e-6)
        self.assertEqual(len(created["sectors"]), 6)
        self.assertEqual(created["colorTable"].GetNumberOfColors(), 17)
        self.assertEqual(len(created["mbf"]), 6, result["analysis"].messages)
        self.assertIsNotNone(created["table"])
        self.assertEqual(created["table"].GetNumberOfRows(), 17)
        self.assertNotEqual(created["table"].GetID(), userNode.GetID())
        self.assertEqual(userNode.GetNumberOfRows(), 0)  # the user's node of the same name is untouched
        self.assertIsNotNone(created["bullseye"])
        sectors = slicer.util.arrayFromVolume(created["sectors"][("stress", "mid")])
        self.assertEqual(set(np.unique(sectors)) - {0}, set(range(7, 13)))
        self.delayDisplay("Phantom analysis: nodes created")

    def test_labellingWorkflow(self):
        import json
        import tempfile

        logic = PerfusionSegLogic()
        loaded = logic.loadPhantomStudy(seed=2, conditions=("stress",))
        sequence = loaded["series"][("stress", "mid")]
        segmentationNode, frameVolume, frame = logic.prepareLabelling(sequence)
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 3)
        truthNode = loaded["truth"][("stress", "mid")]
        folder = logic.exportLabelledCase(sequence, truthNode, tempfile.mkdtemp(), "phantom_mid", level="mid",
                                          condition="stress", patientId="phantom02")
        self.assertTrue(os.path.isfile(os.path.join(folder, "labels.nii.gz")))
        with open(os.path.join(folder, "case.json")) as f:
            self.assertEqual(json.load(f)["patient_id"], "phantom02")
        metrics, tableNode = logic.compareSegmentations(truthNode, truthNode, sequence)
        self.assertAlmostEqual(metrics["myocardium"]["dice"], 1.0)
        self.assertGreater(tableNode.GetNumberOfRows(), 2)

    def test_networkIfModelAvailable(self):
        logic = PerfusionSegLogic()
        from PerfusionSegLib.analysis import resolve_method
        from PerfusionSegLib.errors import UnreadableFileError
        try:
            method = resolve_method(logic.analysisOptions())      # the installed DAUGS pool, else a ResUNet
        except UnreadableFileError:
            self.delayDisplay("No trained model in the models folders: network run not tested")
            return
        self.delayDisplay(f"Segmenting a phantom slice with {method}")
        loaded = logic.loadPhantomStudy(seed=3, conditions=("stress",))
        result = logic.process(stress={"mid": loaded["series"][("stress", "mid")]}, computeMbf=False)
        self.assertEqual(len(result["nodes"]["segmentations"]), 1)
