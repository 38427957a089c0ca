"""Reading and validating a KEBench/VLKEB release directory (docs/dataset.md, "The release layout").

A release directory holds ``train.json``, ``eval.json``, ``eval_multihop.json``,
``eval_edit_onehop.json`` and an images root (``mmkb_images/`` unless given). Each record becomes one
row of :func:`kebench_hf.schema.features`, its strings kept byte-for-byte. Every defect is a
:class:`ReleaseFormatError` naming the file, the record index and the field; with ``skip_invalid`` the
record is skipped instead and counted in a :class:`SkipReport`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import re
from collections import Counter, OrderedDict
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath
from typing import Any

import PIL.Image

from kebench_hf.schema import CONFIGS, IMAGE_FIELDS, TEXT_FIELDS

logger = logging.getLogger(__name__)

DEFAULT_IMAGES_DIRNAME = "mmkb_images"
RELEASE_FILES = tuple(dict.fromkeys(name for splits in CONFIGS.values() for name in splits.values()))

# ASCII digits only: str.isdigit-style Unicode digits ("\u0663-hop") are not the release's
_HOP = re.compile(r"([0-9]+)-hop")
#: the hop column is int32
_MAX_HOP = 2**31 - 1
_ONEHOP_KEYS = {"port_edit_q": "edit_question", "port_edit_a": "edit_answer", "port_q": "question", "port_a": "answer"}
_VERIFIED_CACHE_SIZE = 4096


class ReleaseFormatError(ValueError):
    """A release file or record that does not follow the layout; says where and what."""

    def __init__(self, file: str, problem: str, *, index: int | None = None, field: str | None = None,
                 reason: str = "invalid file"):
        self.file, self.index, self.field, self.reason, self.problem = file, index, field, reason, problem
        where = file if index is None else f"{file}: record {index}"
        if field is not None:
            where += f": field {field!r}"
        super().__init__(f"{where}: {problem}")


class SkipReport:
    """Records skipped with ``skip_invalid``, counted per file and reason, with the first example of each."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.examples: dict[tuple[str, str], str] = {}

    def add(self, error: ReleaseFormatError) -> None:
        key = (error.file, error.reason)
        self.counts[key] += 1
        self.examples.setdefault(key, str(error))

    def merge(self, other: SkipReport) -> None:
        self.counts.update(other.counts)
        for key, example in other.examples.items():
            self.examples.setdefault(key, example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no records skipped"
        lines = [f"{self.total} invalid record(s) skipped:"]
        for (file, reason), count in sorted(self.counts.items()):
            lines.append(f"  {file}: {count} x {reason} (e.g. {self.examples[(file, reason)]})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, dict[str, int]]:
        by_file: dict[str, dict[str, int]] = {}
        for (file, reason), count in sorted(self.counts.items()):
            by_file.setdefault(file, {})[reason] = count
        return by_file

    @classmethod
    def from_dict(cls, by_file: dict[str, dict[str, int]]) -> SkipReport:
        report = cls()
        for file, reasons in by_file.items():
            for reason, count in reasons.items():
                report.counts[(file, reason)] = count
                report.examples[(file, reason)] = "skipped in an earlier run of this export"
        return report


def find_images_root(data_dir: str | os.PathLike, images_root: str | os.PathLike | None = None) -> Path:
    """``images_root`` if given, else ``DATA_DIR/mmkb_images``; a clear error if it is not a directory."""
    root = Path(images_root) if images_root is not None else Path(data_dir) / DEFAULT_IMAGES_DIRNAME
    if not root.is_dir():
        hint = "" if images_root is not None else " (the default; pass images_root / --images-root to choose another)"
        raise ReleaseFormatError(str(root), f"images root is not a directory{hint}", reason="missing images root")
    return root.absolute()


class ImageProblem(Exception):
    """Why an image path is unusable; turned into a :class:`ReleaseFormatError` by the record reader."""

    def __init__(self, reason: str, problem: str):
        super().__init__(problem)
        self.reason, self.problem = reason, problem


class ImagesRoot:
    """Resolves release image paths inside one root and checks that each is a decodable image."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        # Verified images are remembered so an image shared by many cases is decoded once; the bound
        # keeps memory flat however many images the release has.
        self._verified: OrderedDict[Path, None] = OrderedDict()

    def locate(self, relative: str) -> Path:
        """The existing file for ``relative``, which must stay inside the root."""
        if not relative:
            raise ImageProblem("missing image", "empty image path")
        if posixpath.isabs(relative) or PureWindowsPath(relative).is_absolute() or PureWindowsPath(relative).drive:
            raise ImageProblem("image path escapes images root", f"absolute image path {relative!r}")
        # A lexical check, not resolve(): hub snapshots are symlinks into a blob store outside the root.
        normalized = posixpath.normpath(relative.replace("\\", "/"))
        if normalized == ".." or normalized.startswith("../"):
            raise ImageProblem("image path escapes images root", f"image path {relative!r} leaves the images root")
        path = self.root / normalized
        try:
            exists = path.is_file()
        except OSError as error:  # a name too long for the file system, say
            raise ImageProblem("missing image", f"image {relative!r:.120} cannot be looked up: {error.strerror}") from None
        if not exists:
            raise ImageProblem("missing image", f"image {relative!r:.120} does not exist under {self.root}")
        return path

    def check(self, relative: str) -> Path:
        """The file for ``relative``, verified to decode."""
        path = self.locate(relative)
        if path not in self._verified:
            with open(path, "rb") as handle:
                _decode(handle, relative)
        self._remember(path)
        return path

    def read(self, relative: str) -> bytes:
        """The bytes of ``relative``, verified to decode."""
        path = self.locate(relative)
        data = path.read_bytes()
        if path not in self._verified:
            _decode(io.BytesIO(data), relative)
        self._remember(path)
        return data

    def _remember(self, path: Path) -> None:
        self._verified[path] = None
        self._verified.move_to_end(path)
        if len(self._verified) > _VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)


def _decode(handle: Any, name: str) -> None:
    try:
        with PIL.Image.open(handle) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise ImageProblem("corrupt image", f"image {name!r} cannot be decoded: {error}") from None


def load_records(path: str | os.PathLike) -> list:
    """The JSON list in ``path``; a :class:`ReleaseFormatError` if missing, empty, not JSON or not a list."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseFormatError(str(path), "release file not found", reason="missing file")
    raw = path.read_bytes()
    if not raw.strip():
        raise ReleaseFormatError(path.name, "file is empty")
    try:
        records = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReleaseFormatError(path.name, f"not valid JSON: {error}") from None
    except RecursionError:
        raise ReleaseFormatError(path.name, "not valid JSON: nested too deeply") from None
    if not isinstance(records, list):
        raise ReleaseFormatError(path.name, f"expected a JSON list of records, got a JSON {type(records).__name__}")
    if not records:
        raise ReleaseFormatError(path.name, "holds no records (empty list)")
    return records


class ReleaseFile:
    """One release JSON file of a config, turned record by record into schema rows."""

    def __init__(self, path: str | os.PathLike, config: str):
        if config not in CONFIGS:
            raise ValueError(f"unknown KEBench config {config!r}; expected one of {sorted(CONFIGS)}")
        self.path = Path(path)
        self.name = self.path.name
        self.config = config
        self.records = load_records(self.path)
        self._warn_unknown_fields()

    def __len__(self) -> int:
        return len(self.records)

    def rows(self, images: ImagesRoot, *, start: int = 0, stop: int | None = None, embed_images: bool = False,
             skip_invalid: bool = False, report: SkipReport | None = None) -> Iterator[dict]:
        """Rows of records ``start:stop`` in order.

        Image columns are ``{"bytes": None, "path": <file>}`` or, with ``embed_images``,
        ``{"bytes": <file bytes>, "path": <path as in the JSON>}``. An invalid record raises, or with
        ``skip_invalid`` is skipped and counted in ``report``.
        """
        if skip_invalid and report is None:
            raise ValueError("skip_invalid needs a SkipReport to count what is skipped")
        for index in range(start, len(self.records) if stop is None else min(stop, len(self.records))):
            try:
                yield self.row(index, images, embed_images=embed_images)
            except ReleaseFormatError as error:
                if not skip_invalid:
                    raise
                logger.debug("skipping %s", error)
                report.add(error)

    def row(self, index: int, images: ImagesRoot, *, embed_images: bool = False) -> dict:
        record = self.records[index]
        if not isinstance(record, dict):
            raise self._error(index, None, f"expected a JSON object, got {type(record).__name__}", "wrong type")
        row: dict[str, Any] = {"case_id": f"{self.path.stem}-{index:05d}"}
        for field in TEXT_FIELDS:
            row[field] = self._string(record, index, field)
        for field in IMAGE_FIELDS:
            relative = self._string(record, index, field)
            try:
                if embed_images:
                    row[field] = {"bytes": images.read(relative), "path": relative}
                else:
                    row[field] = {"bytes": None, "path": str(images.check(relative))}
            except ImageProblem as problem:
                raise self._error(index, field, problem.problem, problem.reason) from None
            row[f"{field}_path"] = relative
        if self.config == "edit_onehop":
            row["portability"] = []
            row["onehop"] = self._onehop(record, index)
        else:
            row["portability"] = self._portability(record, index)
        return row

    def _error(self, index: int, field: str | None, problem: str, reason: str) -> ReleaseFormatError:
        return ReleaseFormatError(self.name, problem, index=index, field=field, reason=reason)

    def _string(self, record: dict, index: int, field: str, *, container: Any = None, label: str | None = None) -> str:
        container = record if container is None else container
        label = label or field
        if field not in container:
            raise self._error(index, label, "missing field", "missing field")
        value = container[field]
        if not isinstance(value, str):
            raise self._error(index, label, f"expected a string, got {type(value).__name__} {value!r:.60}",
                              "wrong type")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate ("\ud800" in the JSON) has no UTF-8 form
            raise self._error(index, label, f"not valid Unicode: {error.reason} at position {error.start}",
                              "wrong type") from None
        return value

    def _port_items(self, record: dict, index: int, required: bool) -> list:
        if "port_new" not in record:
            if required:
                raise self._error(index, "port_new", "missing field", "missing field")
            return []
        items = record["port_new"]
        if not isinstance(items, list):
            raise self._error(index, "port_new", f"expected a list, got {type(items).__name__}", "malformed port_new")
        for position, item in enumerate(items):
            if not isinstance(item, dict):
                raise self._error(index, f"port_new[{position}]", f"expected an object, got {type(item).__name__}",
                                  "malformed port_new")
        return items

    def _port_string(self, item: dict, index: int, key: str, label: str) -> str:
        try:
            return self._string(item, index, key, container=item, label=label)
        except ReleaseFormatError as error:
            raise self._error(index, label, error.problem, "malformed port_new") from None

    def _portability(self, record: dict, index: int) -> list[dict]:
        portability = []
        for position, item in enumerate(self._port_items(record, index, required=False)):
            label = f"port_new[{position}]"
            port_type = self._port_string(item, index, "port_type", f"{label}.port_type")
            hop = _HOP.fullmatch(port_type)
            # the length test first: int() refuses strings of thousands of digits with its own ValueError
            if hop is None or len(hop.group(1)) > len(str(_MAX_HOP)) or int(hop.group(1)) > _MAX_HOP:
                raise self._error(index, f"{label}.port_type", f"expected 'k-hop' (k at most {_MAX_HOP}), "
                                  f"got {port_type!r:.60}", "malformed port_new")
            qa = item.get("Q&A")
            if not isinstance(qa, dict):
                problem = "missing field" if qa is None else f"expected an object, got {type(qa).__name__}"
                raise self._error(index, f"{label}.Q&A", problem, "malformed port_new")
            portability.append({
                "hop": int(hop.group(1)),
                "question": self._port_string(qa, index, "Question", f"{label}.Q&A.Question"),
                "answer": self._port_string(qa, index, "Answer", f"{label}.Q&A.Answer"),
            })
        return portability

    def _onehop(self, record: dict, index: int) -> list[dict]:
        return [
            {column: self._port_string(item, index, key, f"port_new[{position}].{key}")
             for key, column in _ONEHOP_KEYS.items()}
            for position, item in enumerate(self._port_items(record, index, required=True))
        ]

    def _warn_unknown_fields(self) -> None:
        known = {*TEXT_FIELDS, *IMAGE_FIELDS, "port_new"}
        unknown: Counter[str] = Counter(
            key for record in self.records if isinstance(record, dict) for key in record if key not in known
        )
        if unknown:
            listed = ", ".join(f"{key!r} ({count} records)" for key, count in sorted(unknown.items()))
            logger.warning("%s: fields outside the KEBench schema are not carried over: %s", self.name, listed)


def release_files(data_dir: str | os.PathLike, config: str) -> dict[str, Path]:
    """``{split: path}`` of ``config`` in ``data_dir`` (the files may not exist)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown KEBench config {config!r}; expected one of {sorted(CONFIGS)}")
    return {split: Path(data_dir) / name for split, name in CONFIGS[config].items()}


def is_release_dir(path: str | os.PathLike) -> bool:
    return any((Path(path) / name).is_file() for name in RELEASE_FILES)


def file_signature(path: str | os.PathLike) -> str:
    """Changes whenever the file changes (its size or modification time)."""
    stat = Path(path).stat()
    return f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns}"


def release_signature(data_dir: str | os.PathLike, images_root: str | os.PathLike) -> str:
    """Changes whenever a release file changes or the images root moves."""
    files = [file_signature(Path(data_dir) / name) for name in RELEASE_FILES if (Path(data_dir) / name).is_file()]
    return json.dumps([str(Path(images_root).absolute()), *files])
