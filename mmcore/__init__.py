"""mmcore: the parcel-condition model library and its pipeline stages.

    import mmcore
    model = mmcore.load_model("artifacts/model")      # safetensors + JSON, no pickle
    model.predict(records)                            # label, probabilities, modalities used

`load_model` is imported on first use, so the data stages (ingest, split) never load torch.
"""
from typing import Any

__version__ = "0.1.0"
__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from mmcore.predict import load_model

        return load_model
    raise AttributeError(f"module 'mmcore' has no attribute {name!r}")
