"""Step 1: image embeddings behind a small protocol, and duplicate removal.

The default :class:`PixelEmbedder` needs no weights; :class:`ClipEmbedder` runs a CLIP-family
model from a local directory, as the paper does.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .mmkg import KnowledgeGraph
from .report import Report

logger = logging.getLogger(__name__)


class ImageEmbedder(Protocol):
    #: recorded in report.json
    name: str

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """One L2-normalised row per image."""


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class PixelEmbedder:
    """A weight-free embedding: the colour histogram of the foreground next to a small thumbnail.

    The foreground is what differs from the median border colour, so the histogram ignores the
    background and the pose and keeps what the pictured thing looks like; the thumbnail separates
    re-encodings of one picture (near duplicates) from genuinely different views.
    """

    name = "pixels"

    def __init__(self, hue_bins: int = 12, thumbnail: int = 8, thumbnail_weight: float = 0.35) -> None:
        self.hue_bins = hue_bins
        self.thumbnail = thumbnail
        self.thumbnail_weight = thumbnail_weight

    def _histogram(self, image: Image.Image) -> np.ndarray:
        small = image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
        rgb = np.asarray(small, dtype=np.float32)
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        foreground = np.linalg.norm(rgb - np.median(border, axis=0), axis=2) > 40
        if not foreground.any():  # a flat picture: describe all of it
            foreground[:] = True
        hsv = np.asarray(small.convert("HSV"), dtype=np.int32)[foreground]
        hue = hsv[:, 0] * self.hue_bins // 256
        codes = (hue * 3 + hsv[:, 1] * 3 // 256) * 3 + hsv[:, 2] * 3 // 256
        histogram = np.bincount(codes, minlength=self.hue_bins * 9).astype(np.float32)
        return histogram / np.linalg.norm(histogram)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        rows = []
        for image in images:
            small = np.asarray(
                image.convert("L").resize((self.thumbnail, self.thumbnail), Image.Resampling.BILINEAR),
                dtype=np.float32,
            ).ravel()
            small = small - small.mean()
            small /= max(float(np.linalg.norm(small)), 1e-6)
            rows.append(np.concatenate([self._histogram(image), self.thumbnail_weight * small]))
        return _normalise(np.stack(rows))


class ClipEmbedder:
    """Image features of a CLIP-family model (``get_image_features``) loaded from a local path."""

    def __init__(self, model_path: str | Path, batch_size: int = 32) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel

        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: CLIP model directory not found")
        self.name = f"clip:{path.name}"
        self._torch = torch
        self._processor = AutoImageProcessor.from_pretrained(path, use_fast=False)
        self._model = AutoModel.from_pretrained(path).eval()
        if not hasattr(self._model, "get_image_features"):
            raise ValueError(f"{path}: model type {self._model.config.model_type!r} has no image features")
        self.batch_size = batch_size

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        rows = []
        with self._torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
                pixels = self._processor(images=batch, return_tensors="pt")["pixel_values"]
                features = self._model.get_image_features(pixel_values=pixels)
                if not self._torch.is_tensor(features):  # some versions return a model output
                    features = features.pooler_output
                rows.append(features.float().numpy())
        return _normalise(np.concatenate(rows))


def thumbnail(image: Image.Image, side: int = 16) -> np.ndarray:
    """A small RGB thumbnail: two encodings of one picture give nearly the same one, two views don't."""
    return np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BOX), dtype=np.uint8)


def thumbnail_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Root-mean-square pixel difference, on the 0-255 scale."""
    return float(np.sqrt(np.mean((first.astype(np.float32) - second.astype(np.float32)) ** 2)))


@dataclass
class ImageIndex:
    """Embedded images: ``paths[i]`` belongs to ``owners[i]``, has the row ``vectors[i]``, the
    SHA-256 ``digests[i]`` of its bytes and the thumbnail ``thumbnails[i]``."""

    paths: list[Path]
    owners: list[str]
    vectors: np.ndarray
    digests: list[str]
    thumbnails: np.ndarray

    def rows_by_owner(self) -> dict[str, list[int]]:
        grouped: dict[str, list[int]] = {}
        for row, owner in enumerate(self.owners):
            grouped.setdefault(owner, []).append(row)
        return grouped

    def subset(self, keep: list[int]) -> ImageIndex:
        return ImageIndex(
            [self.paths[i] for i in keep],
            [self.owners[i] for i in keep],
            self.vectors[keep],
            [self.digests[i] for i in keep],
            self.thumbnails[keep],
        )


def embed_images(
    kg: KnowledgeGraph, embedder: ImageEmbedder, report: Report, batch_size: int = 256
) -> ImageIndex:
    """Embed every readable image of ``kg``; unreadable ones are skipped and counted."""
    step = "embed"
    paths, owners, digests, thumbnails = [], [], [], []
    pending: list[Image.Image] = []
    chunks = []
    all_images = [(entity_id, path) for entity_id in sorted(kg.images) for path in kg.images[entity_id]]
    for entity_id, path in tqdm(all_images, desc="embedding images", unit="img", disable=None):
        try:
            data = path.read_bytes()
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            report.skip(step, "unreadable image", f"{entity_id}/{path.name}: {error}")
            continue
        paths.append(path)
        owners.append(entity_id)
        digests.append(hashlib.sha256(data).hexdigest())
        thumbnails.append(thumbnail(image))
        pending.append(image)
        if len(pending) == batch_size:
            chunks.append(embedder.embed(pending))
            pending = []
    if pending:
        chunks.append(embedder.embed(pending))
    if not chunks:
        raise ValueError("no readable image in the knowledge graph")
    report.count(step, "embedder", embedder.name)
    report.count(step, "images_embedded", len(paths))
    return ImageIndex(paths, owners, np.concatenate(chunks), digests, np.stack(thumbnails))


def drop_duplicates(
    index: ImageIndex, near_duplicate: float, report: Report, max_thumbnail_distance: float = 8.0
) -> ImageIndex:
    """Within each entity keep the first of images that are the same picture.

    Same picture: identical bytes; or thumbnails at most ``max_thumbnail_distance`` apart
    (re-encoded, resized); or embeddings with cosine similarity ``>= near_duplicate``.
    """
    step = "deduplicate"
    keep = []
    for owner, rows in index.rows_by_owner().items():
        kept: list[int] = []
        for row in rows:
            where = f"{owner}/{index.paths[row].name}"
            if any(index.digests[row] == index.digests[other] for other in kept):
                report.skip(step, "exact duplicate", where)
                continue
            if any(
                thumbnail_distance(index.thumbnails[row], index.thumbnails[other]) <= max_thumbnail_distance
                for other in kept
            ):
                report.skip(step, "near duplicate (thumbnail)", where)
                continue
            if kept and float(np.max(index.vectors[kept] @ index.vectors[row])) >= near_duplicate:
                report.skip(step, "near duplicate (embedding)", where)
                continue
            kept.append(row)
        keep.extend(kept)
    report.count(step, "images_kept", len(keep))
    report.count(
        step, "near_duplicate_thresholds", {"cosine": near_duplicate, "thumbnail_rms": max_thumbnail_distance}
    )
    return index.subset(keep)
