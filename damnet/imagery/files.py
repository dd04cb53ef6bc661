"""Finding the bi-temporal pairs of a region folder.

Two layouts are recognised in a region folder:

* ``A/``, ``B/``, optional ``label/`` (LEVIR-CD style): same-named PNG or TIFF images of
  the same size, one pair per name. No georeference is needed.
* ``pre/``, ``post/``, optional ``label/``: same-named GeoTIFF scenes with a CRS (e.g. OSCD:
  ``pre/abudhabi.tif``, ``post/abudhabi.tif``, ``label/abudhabi.tif``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from damnet.errors import ImageryError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
LAYOUTS = {"levir": ("A", "B"), "geotiff": ("pre", "post")}
#: Folder names that hold labels in other datasets' layouts; ingest reads only ``label/``.
LABEL_LOOKALIKES = ("labels", "Label", "Labels", "mask", "masks", "gt", "GT", "cm")
#: What a scene name (a file's stem) may hold: tile ids, label tasks and URLs are made from it.
SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class PairFiles:
    """The files of one bi-temporal pair (``label`` may be absent)."""

    name: str
    pre: Path
    post: Path
    label: Path | None
    layout: str  #: "levir" or "geotiff"


def _folders(root: Path, listing: Collection[str] | None) -> set[str]:
    """Names of the sub-folders of ``root`` (from ``listing`` when given: relative file paths)."""
    if listing is not None:
        return {name.split("/", 1)[0] for name in listing if "/" in name}
    return {p.name for p in Path(root).iterdir() if p.is_dir()} if Path(root).is_dir() else set()


def detect_layout(root: Path, listing: Collection[str] | None = None) -> str:
    folders = _folders(root, listing)
    for layout, (d1, d2) in LAYOUTS.items():
        if d1 in folders and d2 in folders:
            return layout
    found = sorted(name + "/" for name in folders)
    raise ImageryError(
        root, "not a region folder: expected A/ and B/ (LEVIR style) or pre/ and post/ "
        "(GeoTIFF pairs), each with an optional label/; "
        + (f"found {', '.join(found)}" if found else "found no sub-folders")
    )


def _images(root: Path, folder: str, listing: Collection[str] | None) -> dict[str, Path]:
    if listing is not None:
        files = [root / name for name in sorted(listing) if name.startswith(folder + "/")
                 and "/" not in name[len(folder) + 1:]]
    elif (root / folder).is_dir():
        files = [p for p in sorted((root / folder).iterdir()) if p.is_file()]
    else:
        return {}
    return {p.stem: p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}


def discover_pairs(root: Path, require_labels: bool = False, check_labels: bool = True,
                   listing: Collection[str] | None = None) -> tuple[list[PairFiles], list[ImageryError]]:
    """Pair up the images of a region folder by file name (the stem: ``x.png`` and ``x.tif``
    pair up). ``listing``: the folder's files as paths relative to ``root`` (a remote folder,
    e.g. ``/vsis3/...``, that the file system cannot list); None: list ``root`` itself.

    Returns the complete pairs and one error per image that has no partner (or no label,
    when labels are required) and, unless ``check_labels`` is off, per label that has no
    image pair (a label named otherwise than its images would silently be unused).
    """
    root = Path(root)
    layout = detect_layout(root, listing)
    d1, d2 = LAYOUTS[layout]
    first, second, labels = (_images(root, d, listing) for d in (d1, d2, "label"))
    folders = _folders(root, listing)
    lookalikes = [] if labels else [n + "/" for n in LABEL_LOOKALIKES if n in folders]
    if lookalikes:
        log.warning("%s: has %s but no label/; labels are read from label/ only (rename the "
                    "folder to use them)", root, ", ".join(lookalikes))
    pairs, errors = [], []
    for name in sorted(set(first) | set(second)):
        if not SAFE_NAME.fullmatch(name):
            errors.append(ImageryError((first.get(name) or second[name]), f"scene name {name!r} has characters "
                                       "other than A-Z a-z 0-9 _ . -; tile ids and labeling tasks are "
                                       "made from it: rename the file"))
            continue
        if name not in second:
            errors.append(ImageryError(first[name], f"has no partner in {d2}/"))
            continue
        if name not in first:
            errors.append(ImageryError(second[name], f"has no partner in {d1}/"))
            continue
        label = labels.get(name)
        if label is None and require_labels:
            hint = f" (found {', '.join(lookalikes)}: rename it to label/)" if lookalikes else ""
            errors.append(ImageryError(first[name], "has no label in label/ but labels are "
                                       f"required{hint}"))
            continue
        pairs.append(PairFiles(name, first[name], second[name], label, layout))
    if check_labels:
        for name in sorted(set(labels) - set(first) - set(second)):
            errors.append(ImageryError(labels[name], f"label has no image named {name!r} in "
                                       f"{d1}/ or {d2}/; labels must be named like their images"))
    if not pairs and not errors:
        errors.append(ImageryError(root / d1, "contains no images (.png, .tif, .jpg)"))
    return pairs, errors
