"""Exports: TF-Hub modules / SavedModels a downstream app loads, and loading them back.

    network           the export copy: plain batch norm, float32, a functional Keras model
    hub_module        write a module (SavedModel + encoder.keras + export_meta.json)
    exports_dir       <export_dir>/<step>/ folders: complete ones, keep-N, defaults (no TensorFlow)
    load              load_encoder (Keras 3), restore_from_export (fine-tune from a module)
    subprocess_export exporting a Keras-on-JAX run's checkpoint under TensorFlow

See exported_models/README.md for the format.
"""

import importlib

_EXPORTS = {
    "export_saved_model": "hub_module", "export_to_hub_dir": "hub_module", "export_from_checkpoint": "hub_module",
    "HubModule": "hub_module", "load_encoder": "load", "restore_from_export": "load",
    "SavedModelEncoder": "load", "resolve_export": "exports_dir", "read_export_meta": "exports_dir",
    "exported_steps": "exports_dir", "default_export_dir": "exports_dir",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"tf_simclr.export.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'tf_simclr.export' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
