#!/usr/bin/env python3
"""Draw the module panels from their .ui files, offscreen, for the documentation (until real screenshots exist).

Slicer's custom widgets (qMRMLNodeComboBox, ctkCollapsibleButton, ctkPathLineEdit, ctkDirectoryButton, qMRMLWidget)
do not exist outside Slicer, so the .ui XML is rewritten with plain Qt stand-ins (combo box showing an example node
name, group box, line edit, push button) before loading it with PySide6's QUiLoader. Layout, labels, tooltips and
widget order are the real ones; the look is plain Qt, not Slicer's style, and collapsible sections are shown open.

Needs PySide6 (pip install PySide6-Essentials; not a project dependency). Usage:
    QT_QPA_PLATFORM=offscreen python scripts/render_ui.py [--out docs]
"""
from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PANELS = {
    "PerfusionSeg": REPO / "PerfusionSeg/Resources/UI/PerfusionSeg.ui",
    "PerfusionDAUGS": REPO / "PerfusionDAUGS/Resources/UI/PerfusionDAUGS.ui",
}
# what the stand-in widgets show (example scene: the phantom study loaded)
EXAMPLE_NODES = {
    "stressBasalSelector": "Phantom stress basal", "stressMidSelector": "Phantom stress mid",
    "stressApicalSelector": "Phantom stress apical", "restBasalSelector": "Phantom rest basal",
    "restMidSelector": "Phantom rest mid", "restApicalSelector": "Phantom rest apical",
    "stressAifSelector": "Phantom stress AIF", "restAifSelector": "Phantom rest AIF",
    "labelSeriesSelector": "Phantom stress mid", "labelSegmentationSelector": "Phantom stress mid labels",
    "referenceSegmentationSelector": "Phantom stress mid truth", "inputSeriesSelector": "Phantom stress mid",
}
COMBO_ITEMS = {  # the Choice values the parameter node fills in at run time
    "methodComboBox": ["ResUNet", "DAUGS"], "deviceComboBox": ["auto", "CPU", "GPU"],
    "labelLevelComboBox": ["mid", "basal", "apical"], "labelConditionComboBox": ["stress", "rest"],
    "levelComboBox": ["mid", "basal", "apical"],
    "memberComboBox": ["member_07  (U_pp 0.0123)  [chosen]", "member_02  (U_pp 0.0131)"],
}
SLICER_ONLY_PROPERTIES = {"nodeTypes", "showChildNodeTypes", "noneEnabled", "addEnabled", "removeEnabled",
                          "renameEnabled", "collapsed", "filters", "SlicerParameterName", "visible"}


def _string_property(name: str, text: str) -> ET.Element:
    prop = ET.Element("property", {"name": name})
    ET.SubElement(prop, "string").text = text
    return prop


def plain_qt_ui(ui_path: Path) -> bytes:
    """The .ui XML with Slicer/CTK widgets replaced by plain Qt widgets."""
    root = ET.parse(ui_path).getroot()
    for tag in ("customwidgets", "connections"):
        for el in root.findall(tag):
            root.remove(el)
    for w in root.iter("widget"):
        cls, name = w.get("class"), w.get("name")
        text = next((p.find("string").text for p in w.findall("property") if p.get("name") == "text"), None)
        for p in [p for p in w.findall("property") if p.get("name") in SLICER_ONLY_PROPERTIES]:
            w.remove(p)
        if cls == "qMRMLWidget":
            w.set("class", "QWidget")
        elif cls == "ctkCollapsibleButton":
            w.set("class", "QGroupBox")
            for p in [p for p in w.findall("property") if p.get("name") == "text"]:
                w.remove(p)
            w.insert(0, _string_property("title", "\u25bc " + (text or "")))
        elif cls == "qMRMLNodeComboBox":
            w.set("class", "QComboBox")
            item = ET.SubElement(w, "item")
            item.append(_string_property("text", EXAMPLE_NODES.get(name, "None")))
        elif cls == "ctkPathLineEdit":
            w.set("class", "QLineEdit")
            w.append(_string_property("placeholderText", "(extension default)  \u2026"))
        elif cls == "ctkDirectoryButton":
            w.set("class", "QPushButton")
            w.append(_string_property("text", "~/perfusion-labels ..."))
        if w.get("class") == "QComboBox" and name in COMBO_ITEMS:
            for value in COMBO_ITEMS[name]:
                item = ET.SubElement(w, "item")
                item.append(_string_property("text", value))
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def render(ui_path: Path, out_png: Path, width: int = 440) -> int:
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QWidget

    buffer = QBuffer()
    buffer.setData(QByteArray(plain_qt_ui(ui_path)))  # QBuffer(QByteArray) would keep a pointer to a temporary
    buffer.open(QIODevice.ReadOnly)
    widget = QUiLoader().load(buffer)
    if widget is None:
        raise RuntimeError(f"could not load {ui_path}")
    progress = widget.findChild(QWidget, "progressBar")
    if progress is not None:  # shown mid-run in the picture
        progress.setValue(40)
        progress.setVisible(True)
    cancel = widget.findChild(QWidget, "cancelButton")
    if cancel is not None:  # mid-run: Cancel is the live button
        cancel.setEnabled(True)
    status = widget.findChild(QWidget, "statusLabel")
    if status is not None:
        status.setText("stress mid: segmentation")
    widget.resize(width, 10)
    widget.adjustSize()
    widget.resize(width, widget.sizeHint().height())
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not widget.grab().save(str(out_png), "PNG"):
        raise RuntimeError(f"could not write {out_png}")
    return out_png.stat().st_size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder for panel_<Module>.png (default docs/)")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    for module, ui in PANELS.items():
        out = Path(args.out) / f"panel_{module}.png"
        size = render(ui, out)
        print(f"{out} {size} bytes")
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
