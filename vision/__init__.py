"""VLM backends, the open_clip wrapper, detectors and image I/O (see DESIGN.md)."""
