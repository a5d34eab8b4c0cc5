"""Static checks of the Slicer glue, run here where Slicer cannot run (fast: parsing only).

- every module/glue/script file compiles;
- every ``ui.<name>`` the code uses is a widget of its .ui file, and every interactive widget of the .ui is used by
  the code or bound to a parameter-node field (``SlicerParameterName``) that the parameterNodeWrapper class declares;
  every qMRMLNodeComboBox receives the scene; custom widget classes are declared;
- every Lib/glue .py file is listed in its module CMakeLists, resources exist, the self-tests are registered;
- the extension CMakeLists is complete;
- every Slicer name the glue calls (``slicer.util.*``, imports from ``slicer``, members of MRML/Slicer classes on
  variables whose class is known) is in ../shared/slicer_api/slicer_api_names.tsv, superclasses resolved through its
  ``:base`` rows. Members of plain VTK/Qt/CTK classes are not in that list: they are in the short documented
  allow-lists below (the pip ``vtk`` package is not installed here to introspect them).
"""
from __future__ import annotations

import ast
import py_compile
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
API_TSV = REPO.parent / "shared" / "slicer_api" / "slicer_api_names.tsv"
MODULES = {
    "PerfusionSeg": {"file": REPO / "PerfusionSeg/PerfusionSeg.py", "ui": REPO / "PerfusionSeg/Resources/UI/PerfusionSeg.ui",
                     "packages": ("PerfusionSegLib", "PerfusionSegUtils"), "parameterNode": "PerfusionSegParameterNode"},
    "PerfusionDAUGS": {"file": REPO / "PerfusionDAUGS/PerfusionDAUGS.py",
                       "ui": REPO / "PerfusionDAUGS/Resources/UI/PerfusionDAUGS.ui", "packages": ("PerfusionDAUGSLib",),
                       "parameterNode": "PerfusionDAUGSParameterNode"},
}
GLUE_FILES = [m["file"] for m in MODULES.values()] + sorted((REPO / "PerfusionSeg/PerfusionSegUtils").glob("*.py"))
SCRIPT_FILES = [REPO / "scripts" / n for n in ("update_cmake_lists.py", "make_icons.py", "render_ui.py")]

# Widgets that only hold or label other widgets: they need no code.
CONTAINER_OR_TEXT = {"QLabel", "QWidget", "QFrame", "QGroupBox", "ctkCollapsibleButton", "qMRMLWidget"}
# CTK widgets are part of CTK, not Slicer, so the names list does not hold them (they ship with every Slicer).
CTK_WIDGETS = {"ctkCollapsibleButton", "ctkPathLineEdit", "ctkDirectoryButton"}

# --- allow-lists: names outside the Slicer names list, each with the reason -------------------------------------
# vtkObject/vtkObjectBase/vtkAbstractArray members (plain VTK; the names list covers Slicer classes only)
VTK_BASE_MEMBERS = {
    "IsA": "vtkObjectBase::IsA, type test used on MRML nodes",
    "SetName": "vtkAbstractArray::SetName on vtkStringArray/vtkDoubleArray columns",
    "InsertNextValue": "vtkStringArray/vtkDoubleArray::InsertNextValue (column values)",
}
# Qt-level members of the application and layout manager (PythonQt slots/properties: the names list has no Qt members)
QT_MEMBERS = {
    ("slicer.app", "connect"): "QObject::connect, used for the startupCompleted() signal (module template)",
    ("slicer.app", "layoutManager"): "qSlicerApplication::layoutManager (Slicer script repository)",
    ("slicer.app", "commandOptions"): "qSlicerCoreApplication::commandOptions().testingEnabled (PyTorchUtils does it)",
    ("slicer.app", "applicationLogic"): "qSlicerCoreApplication::applicationLogic -> vtkSlicerApplicationLogic",
    ("layoutManager", "setLayout"): "qMRMLLayoutManager::setLayout slot",
    ("layoutManager", "layout"): "qMRMLLayoutManager::layout property",
}
# scripted-module attributes reached through slicer.modules (module logics: vtkSlicer*Logic, checked in the list)
MODULE_LOGICS = {"sequences": "vtkSlicerSequencesLogic", "colors": "vtkSlicerColorLogic",
                 "tables": "vtkSlicerTablesLogic"}
# events/enums are class constants, not methods: the list does not hold them
CONSTANTS = {("vtkMRMLScene", "StartCloseEvent"), ("vtkMRMLScene", "EndCloseEvent"), ("vtkCommand", "ModifiedEvent")}

# Variables whose MRML class is known from how the glue names them (the glue keeps these names for these classes).
VARIABLE_CLASSES = {
    "segmentationNode": "vtkMRMLSegmentationNode", "referenceSegmentationNode": "vtkMRMLSegmentationNode",
    "segmentation": "vtkSegmentation", "sequence": "vtkMRMLSequenceNode", "browser": "vtkMRMLSequenceBrowserNode",
    "tableNode": "vtkMRMLTableNode", "colorNode": "vtkMRMLColorTableNode", "labelmap": "vtkMRMLLabelMapVolumeNode",
    "volume": "vtkMRMLScalarVolumeNode", "referenceVolumeNode": "vtkMRMLVolumeNode", "volumeNode": "vtkMRMLVolumeNode",
    "frame": "vtkMRMLScalarVolumeNode", "first": "vtkMRMLScalarVolumeNode", "proxy": "vtkMRMLNode",
    "pdVolume": "vtkMRMLScalarVolumeNode",
    "editorNode": "vtkMRMLSegmentEditorNode", "shNode": "vtkMRMLSubjectHierarchyNode",
    "selectionNode": "vtkMRMLSelectionNode", "display": "vtkMRMLScalarVolumeDisplayNode",
    "displayNode": "vtkMRMLDisplayNode", "node": "vtkMRMLNode", "userNode": "vtkMRMLTableNode",
    "truthNode": "vtkMRMLSegmentationNode", "frameVolume": "vtkMRMLScalarVolumeNode",
}
# return types of the calls the glue chains on
RETURNS = {"GetSegmentation": "vtkSegmentation", "GetSubjectHierarchyNode": "vtkMRMLSubjectHierarchyNode",
           "GetSelectionNode": "vtkMRMLSelectionNode", "GetNthSegment": "vtkSegment",
           "GetDisplayNode": "vtkMRMLDisplayNode", "GetNthDataNode": "vtkMRMLNode",
           "GetFirstBrowserNodeForProxyNode": "vtkMRMLSequenceBrowserNode",
           "GetFirstBrowserNodeForSequenceNode": "vtkMRMLSequenceBrowserNode"}


# ------------------------------------------------------------------------------------------------------------------
def test_every_glue_file_compiles(tmp_path):
    files = GLUE_FILES + [p for p in SCRIPT_FILES if p.exists()]
    assert len(files) >= 8
    for path in files:
        py_compile.compile(str(path), cfile=str(tmp_path / (path.stem + ".pyc")), doraise=True)


# ------------------------------------------------------------------------------------------------------------------
def _ui_widgets(ui_path: Path) -> dict:
    root = ET.parse(ui_path).getroot()
    widgets = {}
    for w in root.iter("widget"):
        params = [p.find("string").text for p in w.findall("property") if p.get("name") == "SlicerParameterName"]
        widgets[w.get("name")] = {"class": w.get("class"), "parameter": params[0] if params else None}
    return widgets


def _ui_uses(source: str) -> set:
    """Names used as ``ui.<name>``, ``self.ui.<name>`` or ``self._ui.<name>`` (a helper holding the panel's ui)."""
    used = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            base = node.value
            if (isinstance(base, ast.Attribute) and base.attr in ("ui", "_ui")) or \
                    (isinstance(base, ast.Name) and base.id == "ui"):
                used.add(node.attr)
    return used


TASK_PANEL = REPO / "PerfusionSeg/PerfusionSegUtils/task_panel.py"


def _parameter_fields(source: str, class_name: str) -> set:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError(f"parameter node class {class_name} not found")


@pytest.mark.parametrize("module", list(MODULES))
def test_ui_and_code_agree(module):
    spec = MODULES[module]
    source = spec["file"].read_text()
    widgets = _ui_widgets(spec["ui"])
    used = _ui_uses(source)
    if "PanelTask(self.ui" in source:       # the shared task helper works the panel's progress, status and cancel
        used |= _ui_uses(TASK_PANEL.read_text())
    fields = _parameter_fields(source, spec["parameterNode"])
    assert used, "the widget uses no ui.<name> at all?"
    missing = sorted(used - set(widgets))
    assert not missing, f"{module}.py uses widgets absent from {spec['ui'].name}: {missing}"
    unused = sorted(name for name, w in widgets.items()
                    if w["class"] not in CONTAINER_OR_TEXT and name not in used and w["parameter"] is None)
    assert not unused, f"{spec['ui'].name} declares widgets that nothing uses or binds: {unused}"
    bound = {w["parameter"] for w in widgets.values() if w["parameter"]}
    assert bound <= fields, f"SlicerParameterName not declared in {spec['parameterNode']}: {sorted(bound - fields)}"
    # a status label that only the code writes must exist; a parameter widget must not be QLabel (read-only)
    assert all(widgets[n]["class"] != "QLabel" for n in widgets if widgets[n]["parameter"])


@pytest.mark.parametrize("module", list(MODULES))
def test_ui_file_is_consistent(module):
    ui = MODULES[module]["ui"]
    root = ET.parse(ui).getroot()
    widgets = _ui_widgets(ui)
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used_classes = {w["class"] for w in widgets.values()}
    custom = {c for c in used_classes if not c.startswith("Q")}
    assert custom <= declared, f"custom widgets used but not declared: {sorted(custom - declared)}"
    receivers = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    combos = {n for n, w in widgets.items() if w["class"] == "qMRMLNodeComboBox"}
    assert combos and combos <= receivers, f"node selectors without the scene: {sorted(combos - receivers)}"
    for c in root.iter("widget"):
        if c.get("class") == "qMRMLNodeComboBox":
            types = [s.text for p in c.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
            assert types and all(t.startswith("vtkMRML") for t in types), c.get("name")
    if API_TSV.exists():
        owners = _api()[1]
        for cls in custom - CTK_WIDGETS:
            assert cls in owners, f"{cls} is not a Slicer class in the names list"


# ------------------------------------------------------------------------------------------------------------------
def _cmake_listed(cmake: str) -> set:
    block = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", cmake, re.S).group(1)
    return {line.strip() for line in block.splitlines() if line.strip()}


@pytest.mark.parametrize("module", list(MODULES))
def test_every_python_file_is_in_cmakelists(module):
    spec = MODULES[module]
    root = spec["file"].parent
    cmake = (root / "CMakeLists.txt").read_text()
    listed = _cmake_listed(cmake)
    present = {f"{module}.py"} | {p.relative_to(root).as_posix() for pkg in spec["packages"]
                                  for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    assert present - listed == set(), (f"{module}/CMakeLists.txt misses {sorted(present - listed)}: run "
                                       "python scripts/update_cmake_lists.py")
    assert listed - present == set(), f"{module}/CMakeLists.txt lists missing files {sorted(listed - present)}"
    resources = re.search(r"set\(MODULE_PYTHON_RESOURCES(.*?)\)", cmake, re.S).group(1).split()
    for res in resources:
        path = root / res.replace("${MODULE_NAME}", module)
        assert path.is_file(), f"resource {path} listed but absent"
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}", cmake)
    assert f"set(MODULE_NAME {module})" in cmake
    assert "add_subdirectory(Testing)" in cmake
    assert "add_subdirectory(Python)" in (root / "Testing/CMakeLists.txt").read_text()
    testing = (root / "Testing/Python/CMakeLists.txt").read_text()
    assert re.search(r"slicer_add_python_unittest\(SCRIPT [^)]*\$\{MODULE_NAME\}\.py\)", testing)
    source = spec["file"].read_text()
    assert re.search(rf"class {module}Test\(ScriptedLoadableModuleTest\)", source)
    assert "def runTest(self" in source


def test_extension_cmakelists_is_complete():
    text = (REPO / "CMakeLists.txt").read_text()
    fields = dict(re.findall(r'set\((EXTENSION_[A-Z_]+) "?([^")]*)"?\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert fields.get(key, "").strip(), f"{key} missing or empty"
    assert fields["EXTENSION_CATEGORY"] == "Cardiac"
    assert "PyTorch" in fields["EXTENSION_DEPENDS"].split()
    assert fields["EXTENSION_ICONURL"].endswith("Resources/Icons/CardiacPerfusion.png")
    assert (REPO / "Resources/Icons/CardiacPerfusion.png").is_file()
    for module in MODULES:
        assert f"add_subdirectory({module})" in text
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, line
    for module in MODULES:
        from PIL import Image
        with Image.open(REPO / module / "Resources/Icons" / f"{module}.png") as icon:
            assert icon.size == (128, 128)


# ------------------------------------------------------------------------------------------------------------------
_API_CACHE = {}


def _api():
    if not _API_CACHE:
        members, bases = {}, {}
        for line in API_TSV.read_text().splitlines():
            if line.startswith("#") or "\t" not in line:
                continue
            owner, member = line.split("\t", 1)
            if member.startswith(":base "):
                bases[owner] = member[6:].strip()
            else:
                members.setdefault(owner, set()).add(member)
        _API_CACHE["v"] = (members, set(members) | set(bases), bases)
    members, owners, bases = _API_CACHE["v"]
    return members, owners, bases


def _has_member(cls: str, member: str) -> bool:
    members, _, bases = _api()
    seen = set()
    while cls and cls not in seen:
        seen.add(cls)
        if member in members.get(cls, ()):
            return True
        cls = bases.get(cls)
    return False


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    if isinstance(node, ast.Call):
        inner = _dotted(node.func)
        return (inner + "()." + ".".join(reversed(parts))) if inner else ""
    return ""


class _Calls(ast.NodeVisitor):
    """Collect (kind, owner, member, line) for every Slicer name the glue touches."""

    def __init__(self):
        self.items = []
        self.types = [dict()]

    def _type_of(self, node):
        if isinstance(node, ast.Name):
            for scope in reversed(self.types):
                if node.id in scope:
                    return scope[node.id]
            return VARIABLE_CLASSES.get(node.id)
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                if func.attr in ("AddNewNodeByClass", "AddNewNodeByClassWithID") and node.args and \
                        isinstance(node.args[0], ast.Constant):
                    return node.args[0].value
                if func.attr in RETURNS:
                    return RETURNS[func.attr]
                if func.attr == "logic" and _dotted(func.value).startswith("slicer.modules."):
                    return MODULE_LOGICS.get(_dotted(func.value).split(".")[2])
                if func.attr == "applicationLogic" and _dotted(func.value) == "slicer.app":
                    return "vtkSlicerApplicationLogic"
                if _dotted(func.value) == "slicer" and func.attr.startswith("vtkMRML"):
                    return func.attr
        if isinstance(node, ast.Attribute):
            if _dotted(node) == "slicer.mrmlScene":
                return "vtkMRMLScene"
            if _dotted(node) == "slicer.modules.SegmentEditorWidget.parameterSetNode":
                return "vtkMRMLSegmentEditorNode"
        return None

    def visit_FunctionDef(self, node):
        self.types.append({})
        self.generic_visit(node)
        self.types.pop()

    def visit_Assign(self, node):
        cls = self._type_of(node.value)
        explicit = isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute) and (
            node.value.func.attr.startswith("AddNewNodeByClass") or _dotted(node.value.func.value) == "slicer")
        for target in node.targets:
            # a variable named after its class keeps that class unless the node is created right here
            if isinstance(target, ast.Name) and cls and (explicit or target.id not in VARIABLE_CLASSES):
                self.types[-1][target.id] = cls
            elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                for t, v in zip(target.elts, node.value.elts):
                    if isinstance(t, ast.Name) and self._type_of(v):
                        self.types[-1][t.id] = self._type_of(v)
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        if node.module and (node.module == "slicer" or node.module.startswith("slicer.")):
            for alias in node.names:
                self.items.append(("import", node.module, alias.name, node.lineno))

    def visit_Attribute(self, node):
        dotted = _dotted(node)
        if dotted.startswith("slicer.util.") and dotted.count(".") == 2:
            self.items.append(("util", "slicer.util", node.attr, node.lineno))
        elif dotted.startswith("slicer.app.") and dotted.count(".") == 2:
            self.items.append(("qt", "slicer.app", node.attr, node.lineno))
        elif re.match(r"^slicer\.vtkMRML\w+\.\w+$", dotted):
            self.items.append(("member", dotted.split(".")[1], node.attr, node.lineno))
        else:
            cls = self._type_of(node.value)
            if cls:
                self.items.append(("member", cls, node.attr, node.lineno))
            elif isinstance(node.value, ast.Call) and _dotted(node.value.func) == "slicer.app.layoutManager":
                self.items.append(("qt", "layoutManager", node.attr, node.lineno))
            elif isinstance(node.value, ast.Name) and node.value.id == "layoutManager":
                self.items.append(("qt", "layoutManager", node.attr, node.lineno))
        self.generic_visit(node)


def _collect(path: Path) -> list:
    visitor = _Calls()
    visitor.visit(ast.parse(path.read_text()))
    return visitor.items


def test_collector_sees_the_calls_it_must_check():
    """Guard against a collector that silently checks nothing."""
    items = {(k, o, m) for path in GLUE_FILES for k, o, m, _ in _collect(path)}
    for expected in [("util", "slicer.util", "arrayFromVolume"), ("member", "vtkMRMLScene", "AddNewNodeByClass"),
                     ("member", "vtkMRMLSegmentationNode", "SetReferenceImageGeometryParameterFromVolumeNode"),
                     ("member", "vtkSegmentation", "AddEmptySegment"), ("member", "vtkMRMLColorTableNode", "SetColor"),
                     ("member", "vtkMRMLSequenceNode", "GetNthIndexValue"),
                     ("member", "vtkMRMLTableNode", "SetColumnUnitLabel"),
                     ("import", "slicer.parameterNodeWrapper", "parameterNodeWrapper")]:
        assert expected in items, expected
    assert len(items) > 60


def test_every_slicer_name_the_glue_calls_exists():
    if not API_TSV.exists():
        pytest.skip(f"Slicer names list absent ({API_TSV}); it lives in ../shared/slicer_api beside the repository")
    members, owners, bases = _api()
    problems = []
    for path in GLUE_FILES:
        for kind, owner, member, line in _collect(path):
            where = f"{path.relative_to(REPO)}:{line}"
            if kind == "util":
                if member not in members.get("slicer.util", ()):
                    problems.append(f"{where} slicer.util.{member}")
            elif kind == "import":
                if owner == "slicer":
                    if member not in owners:
                        problems.append(f"{where} from slicer import {member}")
                elif owner == "slicer.parameterNodeWrapper":
                    if not any(member in members.get(o, ()) for o in owners if o.startswith(owner + ".")):
                        problems.append(f"{where} from {owner} import {member}")
                elif member not in members.get(owner, ()):
                    problems.append(f"{where} from {owner} import {member}")
            elif kind == "qt":
                if (owner, member) not in QT_MEMBERS:
                    problems.append(f"{where} {owner}.{member} (Qt member not in the documented allow-list)")
            elif kind == "member":
                if (owner, member) in CONSTANTS or member in VTK_BASE_MEMBERS:
                    continue
                if owner not in owners:
                    problems.append(f"{where} class {owner} unknown")
                elif not _has_member(owner, member):
                    problems.append(f"{where} {owner}.{member}")
    assert not problems, "names the Slicer API does not define:\n" + "\n".join(problems)


def test_update_cmake_lists_script_agrees(capsys):
    """The generator's --check mode sees the same lists as the test above (run it after adding Lib files)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("update_cmake_lists", REPO / "scripts/update_cmake_lists.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for module in MODULES:
        listed = _cmake_listed(script.block(module) + "\n)")
        assert f"{module}.py" in listed and len(listed) == len(script.python_files(module))
    assert script.main(["--check"]) == 0, capsys.readouterr().out
