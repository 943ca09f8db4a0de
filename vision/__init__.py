"""VLM backends, the open_clip wrapper, detectors and image I/O (see DESIGN.md)."""

import importlib

# Public names, imported on first use so that `import selfcorrect.vision` stays light (no torch).
_EXPORTS = {
    "VLM": "selfcorrect.vision.vlm",
    "ContinuationScores": "selfcorrect.vision.vlm",
    "ModelNotFoundError": "selfcorrect.vision.vlm",
    "ModelFormatError": "selfcorrect.vision.vlm",
    "VLMInputError": "selfcorrect.vision.vlm",
    "load_image": "selfcorrect.vision.images",
    "LoadedClip": "selfcorrect.vision.clip",
    "load_world_clip": "selfcorrect.vision.clip",
    "clip_scores": "selfcorrect.vision.clip",
    "encode_images": "selfcorrect.vision.clip",
    "encode_texts": "selfcorrect.vision.clip",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
