"""edgeres: quantize residual mobile networks and ship them, checked, to phones and MCUs.

Public API::

    import edgeres
    model = edgeres.create_model("mobilenet_v2_fmnist", pretrained=True)
    target = edgeres.load_target("arm-cpu-tflite")
    qmodel = edgeres.quantize(model, edgeres.PTQConfig(), target, calib)   # QModel
    edgeres.export(qmodel, "model.tflite")                                  # exact int8 file
    result = edgeres.convert("mobilenet_v2_fmnist", target="arm-cpu-tflite")  # checked bundle
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

# The subpackage first, then the function of the same name below: importing a submodule binds
# the parent's attribute only when the subpackage itself is first imported, so after this
# `edgeres.export` stays the function however often `edgeres.export.tflite` is imported.
import edgeres.export  # noqa: E402, F401  (imports nothing itself)
from edgeres.errors import UserError  # noqa: E402

# Imported on first use (PEP 562): `edgeres` itself stays light, so the CLI installs its
# signal handlers before torch loads (a Ctrl-C during that second is then no traceback).
_LAZY = {"PTQConfig": "edgeres.config", "QATConfig": "edgeres.config",
         "RExConfig": "edgeres.config", "quantize": "edgeres.quant.ptq",
         "load_target": "edgeres.targets", "create_model": "edgeres.zoo",
         "list_models": "edgeres.zoo"}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'edgeres' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def export(qmodel, path: str | Path, **kwargs):  # noqa: ANN001, ANN201 - QModel -> ExportInfo
    """Write a QModel as .tflite or .onnx (chosen by the file suffix) with its exact numbers."""
    path = Path(path)
    if path.suffix == ".tflite":
        from edgeres.export.tflite import export_tflite

        return export_tflite(qmodel, path, **kwargs)
    if path.suffix == ".onnx":
        from edgeres.export.onnx import export_onnx

        return export_onnx(qmodel, path, **kwargs)
    raise UserError(f"cannot tell the format of '{path}': use a .tflite or .onnx suffix")


def convert(model: str = "mobilenet_v2_fmnist", target: str = "arm-cpu-tflite", **options):  # noqa: ANN003, ANN201
    """Quantize, export, check and bundle a model; see :class:`edgeres.convert.ConvertOptions`."""
    from edgeres.convert import ConvertOptions
    from edgeres.convert import convert as _convert

    progress = bool(options.pop("progress", False))
    return _convert(ConvertOptions(model=model, target=target, **options), progress=progress)


__all__ = [
    "PTQConfig",
    "QATConfig",
    "RExConfig",
    "UserError",
    "__version__",
    "convert",
    "create_model",
    "export",
    "list_models",
    "load_target",
    "quantize",
]
