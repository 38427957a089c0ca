"""KEBench as a ``datasets`` dataset: the builder over a release directory, and the one-call loader.

``load_kebench`` reads a release-layout directory (through :class:`KEBench`), or an exported Parquet
dataset repository (through ``datasets.load_dataset``), either local or on the hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError

from dataset_script import CITATION
from kebench_hf.hub import is_hub_id
from kebench_hf.release import (
    ImagesRoot,
    ReleaseFile,
    ReleaseFormatError,
    SkipReport,
    find_images_root,
    is_release_dir,
    release_files,
    release_signature,
)
from kebench_hf.schema import CONFIGS, DEFAULT_CONFIG, IMAGE_FIELDS, TEXT_FIELDS, features

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "KEBench (VLKEB): knowledge editing of large vision-language models. Each edit case asks the model "
    "to answer a new entity for an image; scored by Reliability, T-/I-Generality, T-/I-Locality and Portability."
)
HOMEPAGE = "https://arxiv.org/abs/2403.07350"
VERSION = datasets.Version("1.0.0")
#: columns that identify a split's content (no image bytes): what :func:`dataset_fingerprint` hashes
FINGERPRINT_COLUMNS = ("case_id", *TEXT_FIELDS, *(f"{field}_path" for field in IMAGE_FIELDS), "portability", "onehop")


@dataclass
class KEBenchConfig(datasets.BuilderConfig):
    """A KEBench config; ``data_dir`` is the release directory."""

    images_root: str | None = None
    skip_invalid: bool = False
    #: changes with the release files, so an edited release is not served from a stale cache
    source_signature: str | None = None


class KEBench(datasets.GeneratorBasedBuilder):
    """Reads the release layout (docs/dataset.md) into the columns of :func:`kebench_hf.schema.features`."""

    VERSION = VERSION
    BUILDER_CONFIG_CLASS = KEBenchConfig
    BUILDER_CONFIGS = [KEBenchConfig(name=name, version=VERSION) for name in CONFIGS]
    DEFAULT_CONFIG_NAME = DEFAULT_CONFIG

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=DESCRIPTION, features=features(self.config.name), homepage=HOMEPAGE, citation=CITATION
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        if not self.config.data_dir:
            raise ValueError("the KEBench builder needs data_dir: a directory in the release layout")
        images_root = find_images_root(self.config.data_dir, self.config.images_root)
        generators = []
        for split, path in release_files(self.config.data_dir, self.config.name).items():
            if not path.is_file():
                raise ReleaseFormatError(str(path), f"release file of config {self.config.name!r} not found",
                                         reason="missing file")
            generators.append(datasets.SplitGenerator(
                name=split, gen_kwargs={"path": str(path), "images_root": str(images_root)}
            ))
        return generators

    def _generate_examples(self, path: str, images_root: str):
        release = ReleaseFile(path, self.config.name)
        report = SkipReport()
        for row in release.rows(ImagesRoot(images_root), skip_invalid=self.config.skip_invalid, report=report):
            yield row["case_id"], row
        if report.total:
            logger.warning("%s", report.summary())
        logger.info("%s: %d of %d records read", release.name, len(release) - report.total, len(release))


def load_kebench(
    path_or_repo: str | os.PathLike,
    config: str = DEFAULT_CONFIG,
    split: str | None = None,
    *,
    images_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load KEBench ``config`` (a ``DatasetDict``, or one ``Dataset`` when ``split`` is given).

    ``path_or_repo`` is a local directory or a hub dataset repo id (fetched with
    ``huggingface_hub.snapshot_download``, so ``HF_ENDPOINT`` and the offline cache apply), holding
    either the release layout or an exported Parquet dataset (README.md with ``configs``).
    ``images_root`` and ``skip_invalid`` apply to the release layout.
    """
    if config not in CONFIGS:
        raise ValueError(f"unknown KEBench config {config!r}; expected one of {sorted(CONFIGS)}")
    directory = _local_directory(path_or_repo, revision)
    if _is_exported(directory):
        if images_root is not None or skip_invalid:
            raise ValueError(f"{directory}: an exported dataset has its images embedded and was validated at "
                             "export; images_root and skip_invalid apply to a release-layout directory")
        return datasets.load_dataset(str(directory), config, split=split,
                                     cache_dir=None if cache_dir is None else str(cache_dir))
    if not is_release_dir(directory):
        raise ReleaseFormatError(str(directory), "neither a release-layout directory (train.json, eval.json, ...) "
                                 "nor an exported dataset (README.md with configs)", reason="not a KEBench directory")
    root = find_images_root(directory, images_root)
    builder = KEBench(
        cache_dir=None if cache_dir is None else str(cache_dir),
        dataset_name="kebench",
        config_name=config,
        data_dir=str(directory.absolute()),
        images_root=str(root),
        skip_invalid=skip_invalid,
        source_signature=release_signature(directory, root),
    )
    try:
        builder.download_and_prepare()
    except DatasetGenerationError as error:
        # datasets wraps what the generator raises; the release error is the one that says what is wrong.
        if isinstance(error.__cause__, ReleaseFormatError):
            raise error.__cause__ from None
        raise
    return builder.as_dataset(split=split)


def dataset_fingerprint(dataset: datasets.Dataset) -> str:
    """A SHA-256 of a split's content: case ids, text fields and image path strings, in row order.

    The same for a split however it was loaded (release directory, exported Parquet, hub); used as the
    dataset version on the leaderboard. Reads no image.
    """
    columns = [name for name in FINGERPRINT_COLUMNS if name in dataset.column_names]
    if "case_id" not in columns:
        raise ValueError(f"not a KEBench split: no 'case_id' column in {dataset.column_names}")
    digest = hashlib.sha256(json.dumps(columns).encode())
    for batch in dataset.select_columns(columns).iter(batch_size=1000):
        for values in zip(*(batch[name] for name in columns), strict=True):
            digest.update(json.dumps(values, ensure_ascii=False, sort_keys=True).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def _local_directory(path_or_repo: str | os.PathLike, revision: str | None) -> Path:
    path = Path(path_or_repo)
    if path.exists():
        if not path.is_dir():
            raise ReleaseFormatError(str(path), "expected a directory", reason="not a KEBench directory")
        if revision is not None:
            raise ValueError(f"{path}: revision applies to hub repos, not to a local directory")
        return path
    if not is_hub_id(str(path_or_repo), namespaced=False):
        raise FileNotFoundError(f"{path_or_repo}: no such directory, and not a hub repo id")
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(huggingface_hub.snapshot_download(str(path_or_repo), repo_type="dataset", revision=revision))
    except (HfHubHTTPError, LocalEntryNotFoundError) as error:
        raise FileNotFoundError(f"{path_or_repo}: no such directory, and the hub dataset repo could not be "
                                f"fetched: {error}") from error


def _is_exported(directory: Path) -> bool:
    card = directory / "README.md"
    if not card.is_file():
        return False
    from huggingface_hub.repocard import metadata_load

    return bool((metadata_load(card) or {}).get("configs"))
