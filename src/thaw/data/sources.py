"""Find labelled image files: a class-per-subfolder image folder or a CSV manifest.

Scanning lists files and never decodes them (decoding happens once, in ``thaw.data.cache``). Every file
met becomes either a ``Sample`` or a ``Skipped`` record with a reason, so nothing is lost silently:
``len(result.samples) + len(result.skipped) == result.files_seen``.
"""

from __future__ import annotations

import csv
import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from thaw.data.decode import display_path
from thaw.data.types import IMAGE_EXTENSIONS, Sample, ScanResult, Skipped
from thaw.errors import DataError

__all__ = ["find_images", "scan"]

logger = logging.getLogger(__name__)

_SUPPORTED = " ".join(IMAGE_EXTENSIONS)
# Folders that archive tools leave behind; like hidden folders they are never classes.
_IGNORED_DIRS = frozenset({"__MACOSX"})


def scan(path: str | os.PathLike[str], classes: Sequence[str] | None = None) -> ScanResult:
    """List the labelled images of a folder or CSV manifest.

    A directory is read as one subfolder per class (``data/train/cats/*.jpg``); files anywhere below a class
    folder belong to that class. A ``.csv`` file is a manifest with a header holding ``path`` and ``label``
    columns (other columns are ignored; relative paths are relative to the CSV's folder).

    Args:
        path: The folder or the ``.csv`` manifest.
        classes: The class names to label against (the training classes, when scanning val/test data). The
            result then has exactly these classes, and a folder or label outside them is an error. ``None``
            (training data) derives the classes (sorted) and requires at least two, none of them empty.

    Returns:
        Samples in a deterministic order, the class names, and every skipped file with its reason.

    Raises:
        DataError: The path is missing, holds no images, has a single class, an empty class folder, an
            unreadable manifest, or names classes outside ``classes``.

    Example:
        >>> train = scan("data/train")
        >>> val = scan("data/val", classes=train.classes)
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"data path '{root}' does not exist: check the path (a folder of class subfolders or a .csv)")
    if root.is_dir():
        result = _scan_folder(root, classes)
    elif root.suffix.lower() == ".csv":
        result = _scan_csv(root, classes)
    else:
        raise DataError(
            f"'{root}' is neither a folder nor a .csv manifest: pass a folder with one subfolder per class "
            "or a CSV file with 'path,label' columns"
        )
    assert len(result.samples) + len(result.skipped) == result.files_seen, "scan lost track of a file"
    logger.info(
        "scanned %s: %d images in %d classes, %d skipped",
        display_path(str(root)),
        len(result.samples),
        len(result.classes),
        len(result.skipped),
    )
    return result


def find_images(directory: str | os.PathLike[str]) -> tuple[list[Sample], list[Skipped]]:
    """List the image files below one folder with the rules ``scan`` applies inside a class folder.

    Depth first in name order; linked folders are followed (a link back to a parent is skipped as a loop);
    hidden folders and ``__MACOSX`` are not entered; hidden files, broken links and unsupported extensions
    become ``Skipped`` records with their reason. ``thaw predict`` uses it, so it finds what ``thaw fit`` finds.

    Args:
        directory: The folder to walk.

    Returns:
        (samples, all with label 0; skipped files with reasons).

    Example:
        >>> samples, skipped = find_images("photos/")
    """
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    _walk_class(Path(directory), 0, set(), samples, skipped)
    return samples, skipped


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _unknown_classes_error(unknown: Sequence[str], known: Sequence[str], where: str) -> DataError:
    return DataError(
        f"{where} has classes that are not in the training data: {', '.join(repr(c) for c in unknown)}; "
        f"known classes: {', '.join(repr(c) for c in known)}. Rename or remove them, or add them to the "
        "training data"
    )


# ----------------------------------------------------------------------------------------------- folders


def _scan_folder(root: Path, classes: Sequence[str] | None) -> ScanResult:
    where = display_path(str(root))
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    files_seen = 0

    class_dirs: list[os.DirEntry[str]] = []
    for entry in _sorted_entries(root):
        if entry.name in _IGNORED_DIRS or (_is_hidden(entry.name) and _is_dir(entry)):
            continue  # .git, .ipynb_checkpoints, __MACOSX: not data, not counted
        if _is_dir(entry):
            class_dirs.append(entry)
            continue
        files_seen += 1
        if _is_hidden(entry.name):
            skipped.append(Skipped(display_path(entry.path), "hidden file"))
        else:
            reason = _non_file_reason(entry) or "not inside a class folder"
            skipped.append(Skipped(display_path(entry.path), reason))

    if not class_dirs:
        raise DataError(
            f"no class folders under {where}: put the images in one subfolder per class, "
            f"e.g. {where}/cats/1.jpg and {where}/dogs/2.jpg (supported extensions: {_SUPPORTED})"
        )

    names = [entry.name for entry in class_dirs]
    if classes is not None:
        known = list(classes)
        unknown = [name for name in names if name not in known]
        if unknown:
            raise _unknown_classes_error([display_path(n) for n in unknown], known, f"folder {where}")
        index = {name: i for i, name in enumerate(known)}
    else:
        known = names
        index = {name: i for i, name in enumerate(names)}

    root_id = _dir_id(root)
    counts: dict[str, int] = {}
    for entry in class_dirs:
        label = index[entry.name]
        before = len(samples)
        ancestors = {root_id} if root_id is not None else set()
        files_seen += _walk_class(Path(entry.path), label, ancestors, samples, skipped)
        counts[entry.name] = len(samples) - before

    if not samples:
        raise DataError(f"no images found under {where}: supported extensions are {_SUPPORTED}")
    if classes is None:
        for entry in class_dirs:
            if counts[entry.name] == 0:
                raise DataError(
                    f"class folder '{display_path(entry.path)}' has no images: add images or remove the folder"
                )
        if len(known) == 1:
            raise DataError(
                f"found one class '{display_path(known[0])}' under {where}: a classifier needs at least two "
                "class folders"
            )
    return ScanResult(samples=samples, classes=known, skipped=skipped, files_seen=files_seen)


def _sorted_entries(directory: Path | str) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as it:
        return sorted(it, key=lambda e: e.name)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:  # symlink loop (ELOOP) and friends: reported as files by the caller
        return False


def _dir_id(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _non_file_reason(entry: os.DirEntry[str]) -> str | None:
    """Why an entry that is not a directory cannot be an image file, or None when it is a regular file."""
    try:
        if entry.is_file(follow_symlinks=True):
            return None
        os.stat(entry.path)  # raises for broken links and loops
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if entry.is_symlink():
            return "broken symlink (its target does not exist)"
        return f"cannot read ({exc.strerror or exc})"
    return "not a regular file"


def _walk_class(
    directory: Path,
    label: int,
    ancestors: set[tuple[int, int]],
    samples: list[Sample],
    skipped: list[Skipped],
) -> int:
    """Collect the files below one class folder, depth first in name order; return the entries counted.

    ``os.walk(followlinks=True)`` would loop forever on a link to an ancestor, and without links it would
    drop linked folders silently; walking by hand lets each case become a ``Skipped`` with a reason.
    """
    dir_id = _dir_id(directory)
    if dir_id is not None:
        ancestors = ancestors | {dir_id}
    seen = 0
    try:
        entries = _sorted_entries(directory)
    except OSError as exc:
        skipped.append(Skipped(display_path(str(directory)), f"cannot list folder ({exc.strerror or exc})"))
        return 1
    for entry in entries:
        if _is_dir(entry):
            if _is_hidden(entry.name) or entry.name in _IGNORED_DIRS:
                continue
            child_id = _dir_id(entry.path)
            if child_id in ancestors:
                seen += 1
                skipped.append(Skipped(display_path(entry.path), "symlink loop (links back to a parent folder)"))
                continue
            seen += _walk_class(Path(entry.path), label, ancestors, samples, skipped)
            continue
        seen += 1
        shown = display_path(entry.path)
        if _is_hidden(entry.name):
            skipped.append(Skipped(shown, "hidden file"))
            continue
        problem = _non_file_reason(entry)
        if problem is not None:
            skipped.append(Skipped(shown, problem))
            continue
        ext = os.path.splitext(entry.name)[1].lower()
        if ext not in IMAGE_EXTENSIONS:
            what = f"unsupported extension '{ext}'" if ext else "no file extension"
            skipped.append(Skipped(shown, f"{what} (supported: {_SUPPORTED})"))
            continue
        samples.append(Sample(entry.path, label))
    return seen


# ------------------------------------------------------------------------------------------ CSV manifests


def _scan_csv(manifest: Path, classes: Sequence[str] | None) -> ScanResult:
    where = display_path(str(manifest))
    base = manifest.parent
    rows: list[tuple[int, str, str]] = []  # (row number, path, label) of usable rows
    skipped: list[Skipped] = []
    files_seen = 0
    try:
        with open(manifest, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            columns = [name.strip().lower() for name in header or []]
            if "path" not in columns or "label" not in columns:
                found = ",".join(header) if header else "nothing"
                raise DataError(
                    f"manifest {where} needs a header row with columns 'path,label' (found: {found}): "
                    "add the header line 'path,label'"
                )
            path_col, label_col = columns.index("path"), columns.index("label")
            # Row numbers count the header as row 1, as a spreadsheet shows them.
            for number, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue  # blank line: not an entry
                files_seen += 1
                raw_path = row[path_col].strip() if len(row) > path_col else ""
                label = row[label_col].strip() if len(row) > label_col else ""
                file_path = os.path.join(base, raw_path) if raw_path else ""
                shown = display_path(file_path) if raw_path else f"{where} row {number}"
                if not raw_path:
                    skipped.append(Skipped(shown, f"row {number}: empty path"))
                elif not label:
                    skipped.append(Skipped(shown, f"row {number}: empty label"))
                elif not os.path.exists(file_path):
                    skipped.append(Skipped(shown, f"row {number}: file not found"))
                elif os.path.isdir(file_path):
                    skipped.append(Skipped(shown, f"row {number}: is a directory, not an image file"))
                else:
                    rows.append((number, file_path, label))
    except UnicodeDecodeError:
        raise DataError(f"manifest {where} is not UTF-8 text: save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise DataError(f"manifest {where} is not valid CSV ({exc}): fix the quoting on that line") from None

    labels = sorted({label for _, _, label in rows})
    if classes is not None:
        known = list(classes)
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise _unknown_classes_error(unknown, known, f"manifest {where}")
    else:
        known = labels
    if not rows:
        raise DataError(f"manifest {where} lists no usable images: check the 'path' column and the skipped rows")
    if classes is None and len(known) == 1:
        raise DataError(
            f"found one class '{known[0]}' in {where}: a classifier needs at least two labels in the manifest"
        )
    index = {name: i for i, name in enumerate(known)}
    samples = [Sample(file_path, index[label]) for _, file_path, label in rows]
    return ScanResult(samples=samples, classes=known, skipped=skipped, files_seen=files_seen)
