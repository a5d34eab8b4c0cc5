"""MRML node <-> numpy conversion and result-node creation for the CardiacPerfusion panels (needs Slicer).

Geometry: a slice series in the Lib is float32 (T, Y, X) with times (s), spacing (dy, dx) mm and a 4x4 matrix that maps
voxel (column x, row y, slice 0, 1) to patient LPS mm. Slicer's IJK is (column, row, slice) and its world is RAS, so
affine_LPS = diag(-1, -1, 1, 1) @ IJKToRAS and back. Every call here must run on the main (GUI) thread: MRML is not
thread-safe. Nodes are always created new with names from ``GenerateUniqueName``: a user's nodes are never overwritten.
"""
from __future__ import annotations

import json
import logging

import numpy as np

import slicer
import vtk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# what a Sequence made by this extension carries besides its frames (so a series survives the trip through MRML)
PD_REFERENCE_ROLE = "CardiacPerfusionPD"          # volume of the proton-density frames (P slices)
METADATA_ATTRIBUTE = "CardiacPerfusion.metadata"  # JSON of SliceSeries.metadata (sequence parameters, ...)
UNITS_ATTRIBUTE = "CardiacPerfusion.units"        # SliceSeries.units

# CONVENTIONS: label value, Slicer segment name, colour (RGB 0-1)
SEGMENTS = (
    (1, "LV blood pool", (0.85, 0.20, 0.20)),
    (2, "LV myocardium", (0.20, 0.70, 0.85)),
    (3, "RV blood pool", (0.95, 0.75, 0.20)),
)

# AHA 16 segments (CONVENTIONS) and coronary territories (Cerqueira 2002)
AHA_NAMES = {
    1: "basal anterior", 2: "basal anteroseptal", 3: "basal inferoseptal", 4: "basal inferior",
    5: "basal inferolateral", 6: "basal anterolateral", 7: "mid anterior", 8: "mid anteroseptal",
    9: "mid inferoseptal", 10: "mid inferior", 11: "mid inferolateral", 12: "mid anterolateral",
    13: "apical anterior", 14: "apical septal", 15: "apical inferior", 16: "apical lateral",
}
TERRITORY = {s: "LAD" for s in (1, 2, 7, 8, 13, 14)}
TERRITORY.update({s: "RCA" for s in (3, 4, 9, 10, 15)})
TERRITORY.update({s: "LCX" for s in (5, 6, 11, 12, 16)})
# one hue per territory, lighter towards the apex so neighbouring segments stay distinguishable
TERRITORY_RGB = {"LAD": (0.16, 0.44, 0.80), "RCA": (0.84, 0.30, 0.26), "LCX": (0.22, 0.66, 0.35)}
RING_SHADE = {"basal": 0.0, "mid": 0.25, "apical": 0.45}

# perfusion colour maps shipped with Slicer, first one found is used
PERFUSION_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileColdToHotRainbow.txt",
                            "vtkMRMLColorTableNodeRainbow")


def uniqueName(base: str) -> str:
    return slicer.mrmlScene.GenerateUniqueName(base)


def _ring(segment: int) -> str:
    return "basal" if segment <= 6 else ("mid" if segment <= 12 else "apical")


def ahaColour(segment: int) -> tuple:
    base = np.array(TERRITORY_RGB[TERRITORY[segment]])
    shade = RING_SHADE[_ring(segment)]
    return tuple(float(c) for c in base + (1.0 - base) * shade)


# ----------------------------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------------------------
def ijkToRasArray(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def lpsAffineFromVolume(volumeNode) -> np.ndarray:
    return LPS_TO_RAS @ ijkToRasArray(volumeNode)


def rasMatrixFromLps(affineLps) -> "vtk.vtkMatrix4x4":
    return slicer.util.vtkMatrixFromArray(LPS_TO_RAS @ np.asarray(affineLps, dtype=float))


def spacingYX(volumeNode) -> tuple:
    sx, sy, _ = volumeNode.GetSpacing()
    return (float(sy), float(sx))


# ----------------------------------------------------------------------------------------------------------------
# inputs: node -> arrays / SliceSeries / AIF
# ----------------------------------------------------------------------------------------------------------------
def _timeScale(unit: str) -> float:
    unit = (unit or "").strip().lower()
    return 1e-3 if unit in ("ms", "msec", "millisecond", "milliseconds") else 1.0


def sequenceForNode(node):
    """The sequence behind a node: the node itself, or the sequence a proxy volume of a browser shows."""
    if node is None:
        return None
    if node.IsA("vtkMRMLSequenceNode"):
        return node
    browser = slicer.modules.sequences.logic().GetFirstBrowserNodeForProxyNode(node)
    if browser is not None:
        return browser.GetSequenceNode(node)
    return None


def arraysFromNode(node, frameInterval: float = None) -> dict:
    """{"data": (T, Y, X) float32, "times": (T,) s, "spacing": (dy, dx), "affine": 4x4 LPS, "source": name,
    "reference": a 2-D volume node with the slice geometry}. Accepts a Sequence of 2-D volumes (or its proxy volume),
    a MultiVolume node, or a scalar volume holding the frames along its third axis (``frameInterval`` s required)."""
    from PerfusionSegLib.errors import InvalidSeriesError, MissingGeometryError

    if node is None:
        raise InvalidSeriesError("no input node selected")
    sequence = sequenceForNode(node)
    if sequence is not None:
        n = sequence.GetNumberOfDataNodes()
        if n == 0:
            raise InvalidSeriesError(f"sequence {sequence.GetName()} is empty")
        first = sequence.GetNthDataNode(0)
        if first is None or not first.IsA("vtkMRMLScalarVolumeNode"):
            raise InvalidSeriesError(f"sequence {sequence.GetName()} does not hold scalar volumes")
        frames = []
        for i in range(n):
            frameArray = slicer.util.arrayFromVolume(sequence.GetNthDataNode(i))
            if frameArray.ndim != 3 or frameArray.shape[0] != 1:
                raise InvalidSeriesError(f"sequence {sequence.GetName()} item {i} is not a single 2-D slice "
                                         f"(shape {frameArray.shape})")
            frames.append(frameArray[0].astype(np.float32))
        try:
            times = np.array([float(sequence.GetNthIndexValue(i)) for i in range(n)]) * _timeScale(sequence.GetIndexUnit())
        except ValueError:
            if not frameInterval:
                raise MissingGeometryError(f"sequence {sequence.GetName()} has non-numeric index values: set the frame "
                                           "interval") from None
            times = np.arange(n) * float(frameInterval)
        browser = slicer.modules.sequences.logic().GetFirstBrowserNodeForSequenceNode(sequence)
        proxy = browser.GetProxyNode(sequence) if browser is not None else None
        pdVolume = sequence.GetNodeReference(PD_REFERENCE_ROLE)
        return {"data": np.stack(frames), "times": times, "spacing": spacingYX(first),
                "affine": lpsAffineFromVolume(first), "source": sequence.GetName(), "reference": proxy or first,
                "pd_frames": None if pdVolume is None else slicer.util.arrayFromVolume(pdVolume).astype(np.float32),
                "metadata": json.loads(sequence.GetAttribute(METADATA_ATTRIBUTE) or "{}"),
                "units": sequence.GetAttribute(UNITS_ATTRIBUTE) or "signal"}
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InvalidSeriesError(f"{node.GetName()} is not a sequence, a MultiVolume or a scalar volume")
    array = slicer.util.arrayFromVolume(node)
    if node.IsA("vtkMRMLMultiVolumeNode") or array.ndim == 4:
        # MultiVolume (MultiVolumeExplorer): frames are the components of a (K=1, J, I, T) image
        if array.ndim != 4 or array.shape[0] != 1:
            raise InvalidSeriesError(f"MultiVolume {node.GetName()} is not a single 2-D slice over time "
                                     f"(shape {array.shape})")
        data = np.moveaxis(array[0], -1, 0).astype(np.float32)
        labels = node.GetAttribute("MultiVolume.FrameLabels")
        if labels:
            unit = node.GetAttribute("MultiVolume.FrameIdentifyingDICOMTagUnits") or "ms"
            times = np.array([float(v) for v in labels.split(",")]) * _timeScale(unit)
        elif frameInterval:
            times = np.arange(data.shape[0]) * float(frameInterval)
        else:
            raise MissingGeometryError(f"MultiVolume {node.GetName()} has no frame times: set the frame interval")
    else:
        # a 3-D scalar volume whose third axis is time (e.g. a 2D+T NIfTI loaded as a volume)
        if array.shape[0] < 2:
            raise InvalidSeriesError(f"{node.GetName()} is a single 2-D image, not a series over time")
        if not frameInterval:
            raise MissingGeometryError(f"{node.GetName()} stores frames along its third axis without times: set the "
                                       "frame interval (s)")
        data = array.astype(np.float32)
        times = np.arange(data.shape[0]) * float(frameInterval)
    affine = lpsAffineFromVolume(node)
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    affine[:3, 2] = normal / max(float(np.linalg.norm(normal)), 1e-12)  # third IJK axis was time: use a 1 mm normal
    return {"data": data, "times": times, "spacing": spacingYX(node), "affine": affine, "source": node.GetName(),
            "reference": node}


def seriesFromNode(node, *, level=None, condition=None, frameInterval=None):
    """A validated PerfusionSegLib SliceSeries (plus the reference node for geometry) from an input node."""
    from PerfusionSegLib.series import SliceSeries

    arrays = arraysFromNode(node, frameInterval)
    series = SliceSeries(data=arrays["data"], times=arrays["times"], spacing=arrays["spacing"],
                         affine=arrays["affine"], level=level, condition=condition, source=arrays["source"],
                         pd_frames=arrays.get("pd_frames"), metadata=arrays.get("metadata") or {},
                         units=arrays.get("units", "signal"))
    return series, arrays["reference"]


def aifFromNode(node, frameInterval=None, condition=None):
    """AIF from a table node (columns: time in s, then concentration in mmol/L) or from an image series node
    (the low-resolution AIF images of a dual-sequence acquisition; the curve is extracted later by the Lib)."""
    from PerfusionSegLib.errors import InvalidSeriesError
    from PerfusionSegLib.series import AIF

    if node is None:
        return None
    if node.IsA("vtkMRMLTableNode"):
        tableNode = node
        if tableNode.GetNumberOfColumns() < 2:
            raise InvalidSeriesError(f"AIF table {tableNode.GetName()} needs two columns: time (s) and value")
        times = slicer.util.arrayFromTableColumn(tableNode, tableNode.GetColumnName(0)).astype(float)
        curve = slicer.util.arrayFromTableColumn(tableNode, tableNode.GetColumnName(1)).astype(float)
        return AIF(curve=curve, times=times, units="mmol/L")
    series, _ = seriesFromNode(node, condition=condition, frameInterval=frameInterval)
    # the curve is only known once the Lib has found the LV in the AIF images: placeholder mean signal until then
    mean = series.data.reshape(series.n_frames, -1).mean(axis=1)
    return AIF(curve=mean, times=series.times, units="signal", image_series=series)


def labelsFromSegmentation(segmentationNode, referenceVolumeNode) -> np.ndarray:
    """(Y, X) uint8 project codes from a segmentation with the named segments (other segments are ignored)."""
    from PerfusionSegLib.errors import InvalidLabelsError

    labels = None
    segmentation = segmentationNode.GetSegmentation()
    found = []
    for value, name, _ in SEGMENTS:
        segmentId = segmentation.GetSegmentIdBySegmentName(name)
        if not segmentId:
            continue
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode)
        if mask is None:
            continue
        mask = np.asarray(mask)
        mask = mask[0] if mask.ndim == 3 else mask
        if labels is None:
            labels = np.zeros(mask.shape, np.uint8)
        labels[mask > 0] = value
        found.append(name)
    if labels is None or not found:
        raise InvalidLabelsError(f"segmentation {segmentationNode.GetName()} has none of the segments "
                                 f"{[s[1] for s in SEGMENTS]}")
    return labels


# ----------------------------------------------------------------------------------------------------------------
# outputs: arrays -> new nodes
# ----------------------------------------------------------------------------------------------------------------
def createVolumeFromArray(array2d, referenceVolumeNode, name, className="vtkMRMLScalarVolumeNode"):
    """A new single-slice volume with the reference volume's geometry (IJK to RAS)."""
    volume = slicer.util.addVolumeFromArray(np.asarray(array2d)[None], ijkToRAS=None, name=uniqueName(name),
                                            nodeClassName=className)
    matrix = vtk.vtkMatrix4x4()
    referenceVolumeNode.GetIJKToRASMatrix(matrix)
    volume.SetIJKToRASMatrix(matrix)
    return volume


def createSegmentationNode(labels, referenceVolumeNode, name):
    """A segmentation with the three named, coloured segments of CONVENTIONS (empty segments when labels is None)."""
    segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", uniqueName(name))
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    segmentation = segmentationNode.GetSegmentation()
    for value, segmentName, colour in SEGMENTS:
        segmentId = segmentation.AddEmptySegment(segmentName, segmentName, colour)
        if labels is not None:
            mask = (np.asarray(labels) == value).astype(np.uint8)[None]
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, segmentId, referenceVolumeNode)
    return segmentationNode


def createAhaColorTable(name="AHA 16 segments"):
    colorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", uniqueName(name))
    colorNode.SetTypeToUser()
    colorNode.SetNumberOfColors(17)
    colorNode.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for segment, segmentName in AHA_NAMES.items():
        r, g, b = ahaColour(segment)
        colorNode.SetColor(segment, f"{segment} {segmentName} ({TERRITORY[segment]})", r, g, b, 1.0)
    colorNode.SetNamesInitialised(True)
    return colorNode


def createSectorLabelmap(sectors, referenceVolumeNode, colorNode, name):
    labelmap = createVolumeFromArray(np.asarray(sectors, dtype=np.uint8), referenceVolumeNode, name,
                                     "vtkMRMLLabelMapVolumeNode")
    labelmap.CreateDefaultDisplayNodes()
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(colorNode.GetID())
    return labelmap


def perfusionColorNodeId() -> str:
    for nodeId in PERFUSION_COLOR_NODE_IDS:
        if slicer.mrmlScene.GetNodeByID(nodeId) is not None:
            return nodeId
    return PERFUSION_COLOR_NODE_IDS[-1]


def createMapVolume(values, referenceVolumeNode, name, *, window=(0.0, 5.0), unit="", colorNodeId=None):
    """A float map (MBF, U-map) as a scalar volume with a colour map, a fixed display range and a colour legend.
    NaN (not computed) is shown as the range minimum."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=float(window[0]))
    volume = createVolumeFromArray(values, referenceVolumeNode, name)
    if unit:
        volume.SetAttribute("CardiacPerfusion.Unit", unit)
    volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    display.SetAndObserveColorNodeID(colorNodeId or perfusionColorNodeId())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(float(window[0]), float(window[1]))
    try:
        slicer.modules.colors.logic().AddDefaultColorLegendDisplayNode(volume)
    except AttributeError:  # Slicer older than 5.0: no colour legend display nodes
        logging.info("colour legend not available in this Slicer version")
    return volume


def createTableNode(columns: dict, name, units: dict = None, descriptions: dict = None):
    """A table from {column name: list of values}; str columns become text columns, others double columns."""
    tableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", uniqueName(name))
    nRows = max((len(v) for v in columns.values()), default=0)
    arrays = []
    for columnName, values in columns.items():
        isText = any(isinstance(v, str) for v in values)
        column = vtk.vtkStringArray() if isText else vtk.vtkDoubleArray()
        column.SetName(columnName)
        for v in values:
            if isText:
                column.InsertNextValue(str(v))
            else:
                column.InsertNextValue(float("nan") if v is None else float(v))
        arrays.append(column)
        tableNode.AddColumn(column)
    for columnName, unit in (units or {}).items():
        tableNode.SetColumnUnitLabel(columnName, unit)
    for columnName, text in (descriptions or {}).items():
        tableNode.SetColumnDescription(columnName, text)
    if nRows and tableNode.GetNumberOfRows() != nRows:
        raise RuntimeError(f"table {name}: expected {nRows} rows, got {tableNode.GetNumberOfRows()}")
    return tableNode


def loadImageAsVolume(pngPath, name):
    """Load a PNG (the bullseye) as a new vector volume, not shown in the slice views by default."""
    node = slicer.util.loadVolume(str(pngPath), {"singleFile": True, "show": False, "name": uniqueName(name)})
    return node


def showResultLayout(backgroundNode=None, foregroundNode=None, labelNode=None, tableNode=None, foregroundOpacity=0.6):
    """Add a table view to the layout and show the results: the series in the background, a map in the foreground,
    the sectors as the label layer. Layers not given are left as they are."""
    layoutManager = slicer.app.layoutManager()
    if layoutManager is None:  # no GUI (batch testing)
        return
    # the current layout with a table view added (as the Segment Statistics module does)
    layoutManager.setLayout(slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout))
    layers = {name: node for name, node in (("background", backgroundNode), ("foreground", foregroundNode),
                                            ("label", labelNode)) if node is not None}
    if layers:  # setSliceViewerLayers clears a layer given None, keeps it given "keep-current" (the default)
        slicer.util.setSliceViewerLayers(**layers, foregroundOpacity=foregroundOpacity if foregroundNode else None,
                                         fit=True)
    if tableNode is not None:
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetActiveTableID(tableNode.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()


def selectFrame(node, frameIndex: int):
    """Show frame ``frameIndex`` of a sequence in its browser; returns the volume node showing it (for editing)."""
    sequence = sequenceForNode(node)
    if sequence is None:
        return None
    browser = slicer.modules.sequences.logic().GetFirstBrowserNodeForSequenceNode(sequence)
    if browser is None:
        return None
    browser.SetSelectedItemNumber(int(frameIndex))
    return browser.GetProxyNode(sequence)


def openSegmentEditor(segmentationNode, sourceVolumeNode):
    """Switch to the Segment Editor with our segmentation and the frame to draw on."""
    slicer.util.selectModule("SegmentEditor")
    editorNode = slicer.modules.SegmentEditorWidget.parameterSetNode
    editorNode.SetAndObserveSegmentationNode(segmentationNode)
    if hasattr(editorNode, "SetAndObserveSourceVolumeNode"):
        editorNode.SetAndObserveSourceVolumeNode(sourceVolumeNode)
    else:  # Slicer < 5.2 names it "master" volume
        editorNode.SetAndObserveMasterVolumeNode(sourceVolumeNode)
    slicer.util.setSliceViewerLayers(background=sourceVolumeNode, fit=True)


def createSequenceFromSeries(series, name):
    """A Sequence of 2-D scalar volumes (index: time in s) with a browser, from a SliceSeries; returns
    (sequenceNode, browserNode, proxyVolumeNode)."""
    sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", uniqueName(name))
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("s")
    sequence.SetAttribute(UNITS_ATTRIBUTE, series.units)
    sequence.SetAttribute(METADATA_ATTRIBUTE, json.dumps(series.metadata, default=str))
    ijkToRas = rasMatrixFromLps(series.affine if series.affine is not None else np.diag(
        [series.spacing[1], series.spacing[0], 1.0, 1.0]))
    if series.pd_frames is not None:  # kept beside the frames: [Gd] conversion normalises by them
        pdVolume = slicer.util.addVolumeFromArray(np.ascontiguousarray(series.pd_frames),
                                                  name=uniqueName(name + " PD"))
        pdVolume.SetIJKToRASMatrix(ijkToRas)
        sequence.SetNodeReferenceID(PD_REFERENCE_ROLE, pdVolume.GetID())
    frame = slicer.vtkMRMLScalarVolumeNode()  # not in the scene: the sequence stores its own copy of each frame
    for t, image in zip(series.times, series.data):
        slicer.util.updateVolumeFromArray(frame, np.ascontiguousarray(image[None]))
        frame.SetIJKToRASMatrix(ijkToRas)
        sequence.SetDataNodeAtValue(frame, f"{float(t):.4f}")
    browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", uniqueName(name + " browser"))
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    slicer.modules.sequences.logic().UpdateAllProxyNodes()
    proxy = browser.GetProxyNode(sequence)
    if proxy is not None:
        proxy.SetName(uniqueName(name + " frame"))
    return sequence, browser, proxy


def createAifTable(aif, name):
    """The AIF curve as a table node (time s, concentration) that the AIF selector accepts."""
    return createTableNode({"time": list(map(float, aif.times)), "concentration": list(map(float, aif.curve))}, name,
                           units={"time": "s", "concentration": aif.units})


def putInFolder(nodes, folderName):
    """Group result nodes under one subject-hierarchy folder so a run is easy to find, hide or delete."""
    shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
    folder = shNode.CreateFolderItem(shNode.GetSceneItemID(), uniqueName(folderName))
    for node in nodes:
        if node is not None:
            shNode.SetItemParent(shNode.GetItemByDataNode(node), folder)
    return folder
