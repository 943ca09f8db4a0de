"""Renderer: :class:`Scene` -> ``PIL.Image`` (RGB), anti-aliased and deterministic."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from selfcorrect.world.scene import DEFAULT_CANVAS, PALETTE, Scene, shape_outline

SUPERSAMPLE = 4  # draw at 4x and box-filter down: cheap, exact anti-aliasing for flat shapes


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    """Draw ``shape`` filling ``box`` (pixel units of ``draw``'s image) with colour ``fill``."""
    kind, geometry = shape_outline(shape, box)
    if kind == "ellipse":
        draw.ellipse(geometry, fill=fill)
    else:
        draw.polygon(geometry, fill=fill)


def render(scene: Scene, size: int = DEFAULT_CANVAS) -> Image.Image:
    """Render a scene.

    Args:
        scene: the scene; its ``texture`` adds seeded luminance noise to the background only.
        size: canvas side in pixels (square canvas), at least 16.

    Returns:
        An RGB ``PIL.Image`` of ``size x size``. The same scene always gives the same pixels.
    """
    if not isinstance(size, int) or not 16 <= size <= 1024:
        raise ValueError(f"canvas size must be an integer from 16 to 1024, got {size!r}")
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), tuple(scene.background))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        # Pixel box on the supersampled canvas; subtract 1 because PIL boxes are inclusive.
        x0, y0, x1, y1 = (v * big for v in obj.box)
        draw_shape(draw, obj.shape, (x0, y0, x1 - 1, y1 - 1), PALETTE[obj.colour])
    image = image.reduce(SUPERSAMPLE)
    if scene.texture > 0:
        image = _add_background_texture(image, scene)
    return image


def _add_background_texture(image: Image.Image, scene: Scene) -> Image.Image:
    # Mild, smooth luminance noise on background pixels only: objects keep their exact colour.
    rng = np.random.default_rng(scene.seed)
    size = image.size[0]
    coarse = rng.normal(0.0, 1.0, (max(2, size // 8), max(2, size // 8))).astype(np.float32)
    smooth = np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
    )
    fine = rng.normal(0.0, 0.5, (size, size)).astype(np.float32)
    noise = (smooth + fine) * 40.0 * scene.texture  # (H, W), in 0..255 units
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    background = np.all(np.abs(pixels - np.array(scene.background, np.float32)) < 1.0, axis=-1)
    pixels = pixels + (noise * background)[..., None]
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
