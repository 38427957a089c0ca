"""Rendered entity images: one visual identity per entity, shown in many different views.

An identity is a shape filled with a pattern in two colours. Views vary pose, scale, position,
crop, background, colour and noise, so two views of one entity are similar but never identical,
while a *twin* identity (same shape and pattern, hue shifted a little) makes a hard look-alike.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon", "cross", "ring")
PATTERNS = ("solid", "hstripes", "vstripes", "dots", "checker", "split")
IMAGE_SIZE = 64
_CANVAS = 2 * IMAGE_SIZE  # drawn at twice the size, then downsampled: smooth edges at 64 px


@dataclass(frozen=True)
class Identity:
    shape: str
    pattern: str
    hue: float  # primary colour hue in [0, 1)
    accent_hue: float  # pattern colour hue in [0, 1)

    def twin(self, hue_shift: float) -> Identity:
        """A look-alike: same shape and pattern, primary hue shifted by ``hue_shift``."""
        return Identity(self.shape, self.pattern, (self.hue + hue_shift) % 1.0, self.accent_hue)


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def _shape_polygon(shape: str, radius: float) -> list[tuple[float, float]]:
    centre = _CANVAS / 2

    def ring_points(count: int, offset: float, radii: tuple[float, ...]) -> list[tuple[float, float]]:
        return [
            (
                centre + radii[i % len(radii)] * math.cos(offset + 2 * math.pi * i / count),
                centre + radii[i % len(radii)] * math.sin(offset + 2 * math.pi * i / count),
            )
            for i in range(count)
        ]

    if shape == "square":
        return ring_points(4, math.pi / 4, (radius,))
    if shape == "triangle":
        return ring_points(3, -math.pi / 2, (radius,))
    if shape == "diamond":
        return ring_points(4, 0.0, (radius,))
    if shape == "star":
        return ring_points(10, -math.pi / 2, (radius, radius * 0.45))
    if shape == "hexagon":
        return ring_points(6, 0.0, (radius,))
    if shape == "cross":
        w = radius * 0.38
        c = centre
        return [
            (c - w, c - radius), (c + w, c - radius), (c + w, c - w), (c + radius, c - w),
            (c + radius, c + w), (c + w, c + w), (c + w, c + radius), (c - w, c + radius),
            (c - w, c + w), (c - radius, c + w), (c - radius, c - w), (c - w, c - w),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=len(SHAPES))
def _shape_mask(shape: str) -> Image.Image:
    mask = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    radius = _CANVAS * 0.36
    box = (_CANVAS / 2 - radius, _CANVAS / 2 - radius, _CANVAS / 2 + radius, _CANVAS / 2 + radius)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        inner = radius * 0.5
        draw.ellipse(
            (_CANVAS / 2 - inner, _CANVAS / 2 - inner, _CANVAS / 2 + inner, _CANVAS / 2 + inner), fill=0
        )
    else:
        draw.polygon(_shape_polygon(shape, radius), fill=255)
    return mask


@lru_cache(maxsize=32)  # the views of one entity are rendered one after another
def _pattern_fill(identity: Identity) -> Image.Image:
    primary = np.array(_rgb(identity.hue, 0.85, 0.95), dtype=np.uint8)
    accent = np.array(_rgb(identity.accent_hue, 0.7, 0.45), dtype=np.uint8)
    y, x = np.mgrid[0:_CANVAS, 0:_CANVAS]
    period = _CANVAS // 8
    if identity.pattern == "solid":
        use_accent = np.zeros_like(x, dtype=bool)
    elif identity.pattern == "hstripes":
        use_accent = (y // (period // 2)) % 2 == 1
    elif identity.pattern == "vstripes":
        use_accent = (x // (period // 2)) % 2 == 1
    elif identity.pattern == "dots":
        use_accent = ((x % period - period / 2) ** 2 + (y % period - period / 2) ** 2) < (period / 4) ** 2
    elif identity.pattern == "checker":
        use_accent = ((x // period) + (y // period)) % 2 == 1
    elif identity.pattern == "split":
        use_accent = x > y
    else:
        raise ValueError(f"unknown pattern {identity.pattern!r}")
    fill = np.where(use_accent[..., None], accent, primary)
    return Image.fromarray(fill.astype(np.uint8), "RGB")


def render_view(identity: Identity, rng: np.random.Generator) -> Image.Image:
    """One random view of ``identity`` as a ``IMAGE_SIZE`` x ``IMAGE_SIZE`` RGB image."""
    background_colour = _rgb(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.25, 0.9))
    canvas = Image.new("RGB", (_CANVAS, _CANVAS), background_colour)

    angle = float(rng.uniform(-35, 35))
    scale = float(rng.uniform(0.7, 1.05))
    mask = _shape_mask(identity.shape).rotate(angle, resample=Image.Resampling.BILINEAR)
    fill = _pattern_fill(identity).rotate(angle, resample=Image.Resampling.BILINEAR)
    side = max(8, int(_CANVAS * scale))
    mask = mask.resize((side, side), Image.Resampling.BILINEAR)
    fill = fill.resize((side, side), Image.Resampling.BILINEAR)
    slack = _CANVAS - side
    shift = int(_CANVAS * 0.12)
    left = int(slack / 2 + rng.integers(-shift, shift + 1))
    top = int(slack / 2 + rng.integers(-shift, shift + 1))
    canvas.paste(fill, (left, top), mask)

    crop = float(rng.uniform(0.82, 1.0))
    crop_side = int(_CANVAS * crop)
    x0 = int(rng.integers(0, _CANVAS - crop_side + 1))
    y0 = int(rng.integers(0, _CANVAS - crop_side + 1))
    image = canvas.crop((x0, y0, x0 + crop_side, y0 + crop_side)).resize(
        (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS
    )
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.85, 1.15)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.85, 1.15)))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 6.0, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
