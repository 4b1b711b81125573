"""Projects, classes and images on disk: the app's data folder, with sanitised names and no path traversal.

Layout under the app's data folder (``thaw app --data DIR``)::

    projects/NAME/
      project.json          created, images refused at upload with their reasons (the last 200)
      images/CLASS/FILE     training images: a class-per-subfolder folder that ``thaw fit`` reads as it is
      thumbs/CLASS/FILE.jpg small previews for the Data page (never read by training)
      runs/RUN/             thaw run directories (the run-directory contract), plus RUN.job.json and RUN.log
    tmp/                    uploads being checked (removed after each request)

Every name that arrives from a browser is checked against a strict pattern (project, class, run) or rewritten
into a safe file name (uploads), and every path is resolved and checked to stay inside the data folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thaw.data.decode import DecodeError, decode_image
from thaw.data.types import IMAGE_EXTENSIONS
from thaw.errors import ThawError

__all__ = [
    "AppError",
    "NotFound",
    "Store",
    "ImportReport",
    "MAX_UPLOAD_BYTES",
    "check_name",
    "safe_filename",
]

log = logging.getLogger(__name__)

#: Largest single uploaded file accepted (bytes); larger files are refused with a reason.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
#: Pixels of an uploaded or imported image (a guard against decompression bombs, below thaw's own limit).
MAX_UPLOAD_PIXELS = 50_000_000
_THUMB_PX = 128
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")
_REJECTED_KEPT = 200


class AppError(ThawError):
    """A request the app cannot carry out; the message says what to do. ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class NotFound(AppError):
    """A project, class, image or run that does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=404)


def check_name(name: str, what: str) -> str:
    """Return ``name`` stripped if it is a safe project, class or run name; raise AppError otherwise.

    Names become folder names (class names also become label names), so they are held to a strict pattern:
    letters, digits, space and ``_ . + -``, starting with a letter or digit, at most 64 characters.

    Raises:
        AppError: the name is empty, too long, or holds other characters (``/``, ``..``, ...).
    """
    name = name.strip()
    if not _NAME.match(name) or name.endswith("."):
        raise AppError(
            f"{what} name {name!r} is not allowed: use letters, digits, spaces and _ . + - "
            "(start with a letter or digit, at most 64 characters)"
        )
    return name


def safe_filename(name: str) -> str:
    """Turn an uploaded file's name into a safe base name (no folders, no leading dot, plain characters).

    Browsers send the name the user's file had, possibly with folders (a folder upload) or with both kinds of
    separators; only the last component is kept.
    """
    base = re.split(r"[\\/]", name)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = _UNSAFE_CHARS.sub("_", base).lstrip("._-")
    stem, ext = os.path.splitext(base)
    stem = stem[:80] or "image"
    return stem + ext.lower()[:8]


@dataclass
class ImportReport:
    """What happened to a batch of uploaded or imported files."""

    added: list[str]
    rejected: list[dict[str, str]]

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "rejected": self.rejected}


class Store:
    """The app's data folder: projects, their classes and images, and where their runs live.

    Args:
        root: the data folder (created when missing).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        (self.root / "projects").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------------------------------------- paths
    def _inside(self, path: Path) -> Path:
        """Resolve ``path`` and make sure it is inside the data folder (symlinks included)."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise AppError("that path is outside the app's data folder", status=403)
        return resolved

    def project_dir(self, project: str, *, must_exist: bool = True) -> Path:
        path = self._inside(self.root / "projects" / check_name(project, "project"))
        if must_exist and not path.is_dir():
            raise NotFound(f"no project named {project!r}: create it on the Data page")
        return path

    def images_dir(self, project: str) -> Path:
        return self.project_dir(project) / "images"

    def runs_dir(self, project: str) -> Path:
        return self.project_dir(project) / "runs"

    def class_dir(self, project: str, cls: str, *, must_exist: bool = True) -> Path:
        path = self._inside(self.images_dir(project) / check_name(cls, "class"))
        if must_exist and not path.is_dir():
            raise NotFound(f"project {project!r} has no class {cls!r}: add it on the Data page")
        return path

    def image_path(self, project: str, cls: str, filename: str) -> Path:
        """The stored image ``filename`` of a class; only names the app itself wrote are accepted."""
        if filename != safe_filename(filename):
            raise AppError(f"{filename!r} is not a stored image name", status=403)
        path = self._inside(self.class_dir(project, cls) / filename)
        if not path.is_file():
            raise NotFound(f"no image {filename!r} in class {cls!r}")
        return path

    def thumb_path(self, project: str, cls: str, filename: str) -> Path:
        """The preview of a stored image, made again if it is missing."""
        image = self.image_path(project, cls, filename)
        thumb = self._inside(self.project_dir(project) / "thumbs" / cls / (filename + ".jpg"))
        if not thumb.is_file():
            try:
                _write_thumb(image, thumb)
            except DecodeError:
                return image
        return thumb

    # ---------------------------------------------------------------------------------------------- projects
    def list_projects(self) -> list[str]:
        return sorted(p.name for p in (self.root / "projects").iterdir() if p.is_dir() and _NAME.match(p.name))

    def create_project(self, name: str) -> str:
        path = self.project_dir(name, must_exist=False)
        if path.exists():
            raise AppError(f"a project named {name!r} already exists: pick another name", status=409)
        (path / "images").mkdir(parents=True)
        (path / "runs").mkdir()
        self._write_meta(path, {"created": time.time(), "rejected": []})
        return path.name

    def delete_project(self, name: str) -> None:
        shutil.rmtree(self.project_dir(name))

    def _read_meta(self, path: Path) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads((path / "project.json").read_text(encoding="utf-8"))
            return meta
        except (OSError, ValueError):
            return {"rejected": []}

    def _write_meta(self, path: Path, meta: dict[str, Any]) -> None:
        tmp = path / "project.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        os.replace(tmp, path / "project.json")

    def note_rejected(self, project: str, rejected: list[dict[str, str]]) -> None:
        if not rejected:
            return
        path = self.project_dir(project)
        meta = self._read_meta(path)
        meta["rejected"] = (meta.get("rejected", []) + rejected)[-_REJECTED_KEPT:]
        self._write_meta(path, meta)

    # ---------------------------------------------------------------------------------------------- classes
    def list_classes(self, project: str) -> list[str]:
        images = self.images_dir(project)
        return sorted(p.name for p in images.iterdir() if p.is_dir() and _NAME.match(p.name))

    def add_class(self, project: str, cls: str) -> str:
        path = self.class_dir(project, cls, must_exist=False)
        if path.exists():
            raise AppError(f"class {cls!r} already exists in {project!r}", status=409)
        path.mkdir()
        return path.name

    def delete_class(self, project: str, cls: str) -> None:
        shutil.rmtree(self.class_dir(project, cls))
        thumbs = self.project_dir(project) / "thumbs" / cls
        if thumbs.is_dir():
            shutil.rmtree(thumbs)

    def list_images(self, project: str, cls: str) -> list[str]:
        folder = self.class_dir(project, cls)
        return sorted(
            p.name
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.name[0] != "."
        )

    def delete_image(self, project: str, cls: str, filename: str) -> None:
        self.image_path(project, cls, filename).unlink()
        thumb = self.project_dir(project) / "thumbs" / cls / (filename + ".jpg")
        thumb.unlink(missing_ok=True)

    # ---------------------------------------------------------------------------------------------- images
    def new_temp_dir(self) -> Path:
        """A private folder under ``tmp/`` for one request's uploads (the caller removes it)."""
        return Path(tempfile.mkdtemp(dir=self.root / "tmp"))

    def add_image_file(self, project: str, cls: str, source: Path, original_name: str) -> str:
        """Check ``source`` with thaw's decoder and store it in the class; returns the stored name.

        The bytes are kept as they are when the extension is one thaw reads, so training decodes exactly what
        was uploaded; otherwise (a JPEG named ``photo``) the decoded pixels are stored as PNG.

        Raises:
            AppError: the file is not an image thaw can use (the reason is the decoder's).
        """
        folder = self.class_dir(project, cls)
        try:
            image = decode_image(source, max_pixels=MAX_UPLOAD_PIXELS)
        except DecodeError as err:
            raise AppError(f"{original_name}: not a usable image ({err.reason})", status=415) from err
        name = safe_filename(original_name)
        stem, ext = os.path.splitext(name)
        if ext not in IMAGE_EXTENSIONS:
            ext = ".png"
        target = _free_name(folder, stem, ext)
        if ext == os.path.splitext(name)[1]:
            shutil.copyfile(source, target)
        else:
            image.save(target, format="PNG")
        thumb = self.project_dir(project) / "thumbs" / cls / (target.name + ".jpg")
        _thumb_from_image(image, thumb)
        return target.name

    def add_uploads(self, project: str, cls: str, files: list[tuple[Path, str]]) -> ImportReport:
        """Store uploaded files already written to temporary paths: (path, original name) pairs."""
        added: list[str] = []
        rejected: list[dict[str, str]] = []
        for path, original in files:
            try:
                added.append(self.add_image_file(project, cls, path, original))
            except AppError as err:
                rejected.append({"file": original, "class": cls, "reason": str(err)})
        self.note_rejected(project, rejected)
        return ImportReport(added, rejected)

    def import_folder(self, project: str, folder: str, cls: str | None = None) -> ImportReport:
        """Copy the images of a folder on this computer into the project.

        A folder of class subfolders adds (or fills) one class per subfolder; a folder of images goes into
        ``cls``. Every file is checked with thaw's decoder; refused files are listed with their reasons.

        Raises:
            AppError: the folder does not exist, or holds neither images nor class subfolders.
        """
        src = Path(folder).expanduser()
        if not src.is_dir():
            raise AppError(f"{folder!r} is not a folder on this computer: give the full path of a folder")
        subdirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
        direct = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
        if cls is None and not subdirs:
            raise AppError(f"{folder} has no class subfolders: pick the class its images belong to")
        plan: list[tuple[str, list[Path]]] = []
        if cls is not None:
            plan.append((cls, direct))
        else:
            for sub in subdirs:
                name = safe_filename(sub.name).replace(".", "_")
                plan.append((name, sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith("."))))
        added: list[str] = []
        rejected: list[dict[str, str]] = []
        for name, paths in plan:
            if not paths:
                continue
            if not self.class_dir(project, name, must_exist=False).exists():
                self.add_class(project, name)
            for p in paths:
                if p.suffix.lower() not in IMAGE_EXTENSIONS:
                    rejected.append({"file": str(p), "class": name, "reason": f"unsupported extension '{p.suffix}'"})
                    continue
                try:
                    added.append(name + "/" + self.add_image_file(project, name, p, p.name))
                except AppError as err:
                    rejected.append({"file": str(p), "class": name, "reason": str(err)})
        if not added and not rejected:
            raise AppError(f"no images found in {folder}")
        self.note_rejected(project, rejected)
        return ImportReport(added, rejected)

    # ---------------------------------------------------------------------------------------------- audit
    def audit(self, project: str, val_fraction: float = 0.2) -> dict[str, Any]:
        """The Data page's audit: counts, imbalance, identical files, files refused at upload, warnings.

        Training holds out ``val_fraction`` of each class for validation, so identical files in one class can end
        up on both sides of the split; they are listed as duplicates.
        """
        classes = self.list_classes(project)
        counts = {c: len(self.list_images(project, c)) for c in classes}
        by_hash: dict[str, list[str]] = {}
        for c in classes:
            for name in self.list_images(project, c):
                digest = hashlib.sha256((self.images_dir(project) / c / name).read_bytes()).hexdigest()
                by_hash.setdefault(digest, []).append(f"{c}/{name}")
        duplicates = [paths for paths in by_hash.values() if len(paths) > 1]
        problems: list[str] = []
        warnings: list[str] = []
        usable = [c for c in classes if counts[c] > 0]
        if len(usable) < 2:
            problems.append("training needs at least two classes with images: add classes and images")
        for c in classes:
            if counts[c] == 0:
                problems.append(f"class {c!r} has no images: add some or remove the class")
            elif counts[c] < 5:
                problems.append(f"class {c!r} has {counts[c]} images: add at least 5 (validation needs some)")
            elif round(counts[c] * val_fraction) < 10:
                warnings.append(
                    f"class {c!r}: about {max(1, round(counts[c] * val_fraction))} validation images; "
                    "validation accuracy will be noisy (50+ images per class help)"
                )
        nonzero = [n for n in counts.values() if n]
        imbalance = max(nonzero) / min(nonzero) if len(nonzero) >= 2 else 1.0
        if imbalance >= 3:
            warnings.append(f"classes are imbalanced ({imbalance:.1f}x between largest and smallest)")
        for group in duplicates:
            if len({p.split("/")[0] for p in group}) > 1:
                warnings.append(f"identical image in different classes: {', '.join(group)}")
        meta = self._read_meta(self.project_dir(project))
        return {
            "classes": counts,
            "total": sum(counts.values()),
            "imbalance": imbalance,
            "duplicates": duplicates,
            "rejected": meta.get("rejected", []),
            "problems": problems,
            "warnings": warnings,
            "ready": not problems,
        }


def _free_name(folder: Path, stem: str, ext: str) -> Path:
    target = folder / (stem + ext)
    n = 1
    while target.exists():
        target = folder / f"{stem}-{n}{ext}"
        n += 1
    return target


def _write_thumb(image_path: Path, thumb: Path) -> None:
    _thumb_from_image(decode_image(image_path, max_pixels=MAX_UPLOAD_PIXELS), thumb)


def _thumb_from_image(image: Any, thumb: Path) -> None:
    thumb.parent.mkdir(parents=True, exist_ok=True)
    small = image.copy()
    small.thumbnail((_THUMB_PX, _THUMB_PX))
    small.save(thumb, format="JPEG", quality=85)
