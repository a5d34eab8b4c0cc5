"""Python dependencies inside Slicer, installed on first use and only after the user agrees; model folders.

- torch comes through the PyTorch extension's ``PyTorchUtils`` (as SlicerNNUnet and SlicerMONAIAuto3DSeg do): it picks
  the wheel that matches the GPU driver. Without the extension we stop with a message that says how to get it.
- the other pure-Python packages are pip-installed with ``slicer.util.pip_install``; SimpleITK and numpy are never
  installed from here (Slicer ships its own builds, which must not be replaced).
- model weights: a folder the user sets (QSettings key ``CardiacPerfusion/ModelsDirectory``) takes precedence over
  the extension's ``Resources/Models``; the registry checks every weights file against its card's sha256.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import qt
import slicer

TORCH_REQUIREMENT = ">=2.1"
# import name -> pip requirement (Slicer already bundles numpy and SimpleITK: never listed here)
PIP_REQUIREMENTS = {
    "scipy": "scipy>=1.10",
    "nibabel": "nibabel>=5.0",
    "pydicom": "pydicom>=2.3",
    "nrrd": "pynrrd>=1.0",
    "h5py": "h5py>=3.7",
    "matplotlib": "matplotlib>=3.6",
    "tqdm": "tqdm>=4.60",
}
MODELS_DIR_SETTINGS_KEY = "CardiacPerfusion/ModelsDirectory"
PYTORCH_EXTENSION_MISSING = (
    "CardiacPerfusion needs the PyTorch extension to run the networks. Install 'PyTorch' from the Extensions "
    "Manager (View > Extensions Manager), restart Slicer, and try again.")


class DependencyError(RuntimeError):
    """A dependency is missing and was not installed (extension absent, or the user declined)."""


def missingPythonPackages() -> list:
    return [req for name, req in PIP_REQUIREMENTS.items() if importlib.util.find_spec(name) is None]


def ensurePythonPackages(askConfirmation: bool = True) -> None:
    """pip-install the missing packages after asking once; raises DependencyError if the user declines."""
    missing = missingPythonPackages()
    if not missing:
        return
    if askConfirmation and not slicer.app.commandOptions().testingEnabled:
        if not slicer.util.confirmOkCancelDisplay(
                "CardiacPerfusion needs these Python packages, which will be downloaded and installed now:\n\n  "
                + "\n  ".join(missing) + "\n\nThis may take a few minutes.", "Install Python packages"):
            raise DependencyError("Python packages not installed: " + ", ".join(missing))
    with slicer.util.WaitCursor():
        for requirement in missing:
            slicer.util.pip_install(requirement)
    importlib.invalidate_caches()


def ensureTorch(askConfirmation: bool = True):
    """The torch module, installed through the PyTorch extension if needed (the extension asks for confirmation)."""
    try:
        import PyTorchUtils  # the PyTorch extension's hidden module
    except ModuleNotFoundError:
        raise DependencyError(PYTORCH_EXTENSION_MISSING) from None
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise DependencyError("PyTorch was not installed (cancelled); the networks cannot run without it.")
    return importlib.import_module("torch")


def userModelsDirectory() -> str:
    return str(slicer.util.settingsValue(MODELS_DIR_SETTINGS_KEY, "") or "")


def setUserModelsDirectory(path: str) -> None:
    qt.QSettings().setValue(MODELS_DIR_SETTINGS_KEY, str(path or ""))


def bundledModelsDirectories(moduleFile: str) -> list:
    """Where the extension's Resources/Models is: installed beside the scripted modules, or the source tree."""
    moduleDir = Path(moduleFile).resolve().parent
    candidates = [moduleDir.parent / "CardiacPerfusionResources" / "Models",  # installed extension (top CMakeLists)
                  moduleDir.parent / "Resources" / "Models"]                  # source tree / build tree
    return [str(p) for p in candidates if p.is_dir()]


def modelsDirectories(moduleFile: str) -> list:
    """Folders searched for model cards, the user's folder first."""
    folders = []
    user = userModelsDirectory()
    if user and os.path.isdir(user):
        folders.append(user)
    folders += bundledModelsDirectories(moduleFile)
    return folders
