"""Atomic file output: a write either lands whole or leaves the old file (if any) untouched."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from selfcorrect.errors import OutputError

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Creates missing parent folders. Raises :class:`OutputError` with one clear message when the
    path cannot be written; no partial file is left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    """Atomically write ``obj`` as indented UTF-8 JSON."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode())


def write_report(path: str | os.PathLike, obj, markdown: str) -> Path:
    """A result as JSON at ``path`` and as Markdown beside it (same name, ``.md``), both atomically;
    returns the Markdown's path."""
    path = Path(path)
    write_json(path, obj)
    return write_text(path.with_suffix(".md"), markdown)


def save_image(image, path: str | os.PathLike) -> Path:
    """Atomically save a ``PIL.Image``; the format comes from the suffix (.png, .jpg, .webp, .bmp)."""
    import io

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(
            f"cannot save an image as {path.name!r}: use one of {', '.join(sorted(IMAGE_FORMATS))}"
        )
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return atomic_write_bytes(path, buffer.getvalue())
