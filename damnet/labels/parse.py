"""Reading labels back: Label Studio's JSON export and folders of mask PNGs.

:func:`parse_label_studio_export` reads Label Studio's full JSON export (brush and polygon
results) and :func:`read_mask_folder` reads a folder of ``<tile_id>.png`` masks; both check
everything and raise one :class:`LabelExportError` listing every problem.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from damnet import storage
from damnet.errors import DamnetError
from damnet.labels.export import BRUSH_FROM, POLYGON_FROM, check_tile_id
from damnet.labels.rle import polygon_to_mask, rle_decode

log = logging.getLogger(__name__)

#: Label Studio exports larger than this are refused before parsing.
MAX_EXPORT_BYTES = 200 * 1024 * 1024
#: A mask PNG larger than this (bytes) is refused before decoding.
MAX_MASK_FILE_BYTES = 64 * 1024 * 1024


class LabelExportError(DamnetError):
    """A label export (JSON file or mask folder) cannot be used; every problem is listed.

    Args:
        source: the file or folder that is wrong.
        problems: one line per problem, in words a user understands.
    """

    def __init__(self, source: object, problems: list[str]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.source}: {len(self.problems)} problem(s) in the label export:\n{lines}")


class _Known:
    """Index of the exported tasks: tile ids, task ids and tile sizes."""

    def __init__(self, tasks: Iterable[Mapping]) -> None:
        self.by_tile: dict[str, tuple[int, int]] = {}
        self.tile_of_id: dict[object, str] = {}
        for task in tasks:
            data = task.get("data") or {}
            tid = data.get("tile_id")
            if not isinstance(tid, str):
                continue
            size = None
            if data.get("height") and data.get("width"):
                size = (int(data["height"]), int(data["width"]))
            else:
                for pred in task.get("predictions") or []:
                    for res in pred.get("result") or []:
                        if res.get("original_height") and res.get("original_width"):
                            size = (int(res["original_height"]), int(res["original_width"]))
            if size is None:
                raise DamnetError(f"the exported task of tile {tid} says nothing about the tile size")
            self.by_tile[tid] = size
            if "id" in task:
                self.tile_of_id[task["id"]] = tid


def _annotation_mask(results: object, size: tuple[int, int], where: str,
                     problems: list[str]) -> np.ndarray | None:
    """Union of the brush and polygon results of one annotation, or None on a problem."""
    h, w = size
    if not isinstance(results, list):
        problems.append(f"{where}: 'result' is not a list")
        return None
    mask = np.zeros((h, w), dtype=np.uint8)
    ok = True
    for k, res in enumerate(results):
        if not isinstance(res, dict):
            problems.append(f"{where}, result {k}: not an object")
            ok = False
            continue
        rtype = str(res.get("type", "")).lower()
        from_name = res.get("from_name")
        if from_name not in (BRUSH_FROM, POLYGON_FROM):
            continue  # other controls (comments, relations, ...) carry no change pixels
        rwhere = f"{where}, result {k} ({from_name}/{rtype or 'no type'})"
        ow, oh = res.get("original_width"), res.get("original_height")
        if (ow is not None and ow != w) or (oh is not None and oh != h):
            problems.append(f"{rwhere}: drawn on a {ow}x{oh} image, the tile is {w}x{h}")
            ok = False
            continue
        value = res.get("value")
        if not isinstance(value, dict):
            problems.append(f"{rwhere}: 'value' is missing")
            ok = False
            continue
        try:
            if rtype in ("brushlabels", "brush"):
                if value.get("format", "rle") != "rle" or "rle" not in value:
                    problems.append(f"{rwhere}: brush format {value.get('format')!r} is not supported "
                                    "(only 'rle')")
                    ok = False
                    continue
                part = rle_decode(value["rle"], h, w)
            elif rtype in ("polygonlabels", "polygon"):
                if res.get("image_rotation", 0) not in (0, None):
                    problems.append(f"{rwhere}: polygons on a rotated image are not supported")
                    ok = False
                    continue
                part = polygon_to_mask(value.get("points"), h, w)
            else:
                problems.append(f"{rwhere}: result type {rtype!r} is not supported for change labels")
                ok = False
                continue
        except (ValueError, TypeError) as exc:
            problems.append(f"{rwhere}: {exc}")
            ok = False
            continue
        mask |= part
    return mask if ok else None


def parse_label_studio_export(data: bytes | str, source_name: str,
                              tasks: list[dict]) -> dict[str, np.ndarray]:
    """Change masks from a Label Studio JSON export: ``{tile_id: (H, W) uint8 0/1}``.

    ``data`` is the full JSON export (a list of tasks, each with ``annotations``); ``tasks``
    is the ``tasks.json`` that was imported, giving the tile ids and sizes. A task is matched
    by ``data.tile_id``, else by its ``id``. Within one annotation the brush (``change``) and
    polygon (``change_poly``) results are united; an annotation with no result means "no
    change". Cancelled (skipped) annotations are ignored. Tiles absent from the export are
    simply absent from the result. Every problem is collected and raised at once as a
    :class:`LabelExportError`: not JSON or not a list, unknown task or tile, sizes that do not
    match, corrupt or absurdly long RLE, unsupported results for the change controls, a task
    without a usable annotation, or annotations of one tile that disagree.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_EXPORT_BYTES:
        raise LabelExportError(source_name, [
            f"the export is {len(raw) / 1e6:.0f} MB, more than the {MAX_EXPORT_BYTES / 1e6:.0f} MB "
            "limit; export fewer tasks at a time"])
    try:
        items = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise LabelExportError(source_name, [f"not valid JSON: {exc}"]) from None
    if not isinstance(items, list):
        raise LabelExportError(source_name, [
            f"expected Label Studio's JSON export (a list of tasks), got a JSON {type(items).__name__}"])
    known = _Known(tasks)
    problems: list[str] = []
    found: dict[str, list[tuple[str, np.ndarray]]] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"task #{n + 1}: not an object")
            continue
        task_id = item.get("id")
        task_data = item.get("data")
        tdata = task_data if isinstance(task_data, dict) else {}
        tid = tdata.get("tile_id")
        label = f"task #{n + 1} (id {task_id})"
        if tid is not None:
            if not isinstance(tid, str) or tid not in known.by_tile:
                problems.append(f"{label}: unknown tile id {tid!r}")
                continue
        elif isinstance(task_id, int) and not isinstance(task_id, bool) and task_id in known.tile_of_id:
            tid = known.tile_of_id[task_id]
        else:
            problems.append(f"{label}: unknown task id {task_id!r} and no data.tile_id")
            continue
        where = f"{label}, tile {tid}"
        annotations = item.get("annotations")
        if not isinstance(annotations, list):
            annotations = []
        usable = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
        if not usable:
            problems.append(f"{where}: not labelled (no annotation that was not cancelled)")
            continue
        for a in usable:
            mask = _annotation_mask(a.get("result"), known.by_tile[tid],
                                    f"{where}, annotation {a.get('id')}", problems)
            if mask is not None:
                found.setdefault(tid, []).append((f"{a.get('id')} (task {task_id})", mask))
    out = {}
    for tid, versions in found.items():
        first = versions[0][1]
        if any(not np.array_equal(first, m) for _, m in versions[1:]):
            names = ", ".join(name for name, _ in versions)
            problems.append(f"tile {tid}: {len(versions)} annotations disagree (annotations {names}); "
                            "keep one in Label Studio and export again")
            continue
        out[tid] = first
    if problems:
        raise LabelExportError(source_name, problems)
    missing = len(known.by_tile) - len(out)
    if missing:
        log.info("%s: %d of %d exported tiles have no labels in this export", source_name, missing,
                 len(known.by_tile))
    return out


def _mask_from_png(name: str, blob: bytes, size: tuple[int, int], problems: list[str]) -> np.ndarray | None:
    from PIL import Image

    h, w = size
    if len(blob) > MAX_MASK_FILE_BYTES:
        problems.append(f"{name}: {len(blob)} bytes, more than the {MAX_MASK_FILE_BYTES} byte limit")
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as im:
                if im.format != "PNG":
                    problems.append(f"{name}: not a PNG file ({im.format})")
                    return None
                if im.size != (w, h):
                    problems.append(f"{name}: {im.size[0]}x{im.size[1]} pixels, the tile is {w}x{h}")
                    return None
                if im.mode not in ("1", "L", "I;16", "I", "RGB"):
                    problems.append(f"{name}: image mode {im.mode} is not supported; save a single-band "
                                    "(or grey RGB) PNG with 0/255 or 0/1 values")
                    return None
                arr = np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        problems.append(f"{name}: cannot read the PNG: {exc}")
        return None
    if arr.ndim == 3:
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            problems.append(f"{name}: an RGB mask must have equal bands (grey); this one is in colour")
            return None
        arr = arr[..., 0]
    values = np.unique(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if values.size > 8 else "")
        problems.append(f"{name}: not a binary mask (values {shown}); use 0/255 or 0/1")
        return None
    return (arr > 0).astype(np.uint8)


def read_mask_pngs(files: Mapping[str, bytes], tasks: list[dict], source_name: str) -> dict[str, np.ndarray]:
    """Masks from ``{file name: PNG bytes}``, names relative to the folder: see read_mask_folder."""
    known = _Known(tasks)
    problems: list[str] = []
    out: dict[str, np.ndarray] = {}
    seen: dict[str, str] = {}
    if not files:
        problems.append("no mask files found; expected <tile_id>.png files")
    for name in sorted(files):
        if "/" in name or "\\" in name or ".." in name:
            problems.append(f"{name}: file names cannot escape the region folder; "
                            "expected <tile_id>.png directly in the folder")
            continue
        if not name.lower().endswith(".png"):
            problems.append(f"{name}: not a .png file; expected <tile_id>.png")
            continue
        tid = name[:-4]
        if check_tile_id(tid) or tid not in known.by_tile:
            problems.append(f"{name}: no exported task has tile id {tid!r}")
            continue
        if tid in seen:
            problems.append(f"{name}: tile {tid} already has a mask ({seen[tid]})")
            continue
        seen[tid] = name
        mask = _mask_from_png(name, files[name], known.by_tile[tid], problems)
        if mask is not None:
            out[tid] = mask
    if problems:
        raise LabelExportError(source_name, problems)
    return out


def read_mask_folder(folder_uri: str, tasks: list[dict]) -> dict[str, np.ndarray]:
    """Masks from a folder (local or ``s3://``) of ``<tile_id>.png``: ``{tile_id: (H, W) 0/1}``.

    Each file must be named after a tile id of ``tasks`` (no sub-folders, no ``..``), have the
    tile's size, and be a binary PNG: single band or RGB with equal bands, values 0/255 or
    0/1. Every problem is collected and raised at once as a :class:`LabelExportError`.
    Tiles without a file are simply absent from the result.
    """
    store = storage.storage_for(folder_uri)
    base = folder_uri.rstrip("/") + "/"
    if storage.is_s3(folder_uri):
        uris = store.list(base)
        rel = {u[len(base):]: u for u in uris}
    else:
        root = storage.local_path(folder_uri)
        if not root.is_dir():
            raise LabelExportError(folder_uri, ["no such folder"])
        rel = {}
        for u in store.list(str(root)):
            rel[storage.local_path(u).relative_to(root).as_posix()] = u
    escaping = [] if storage.is_s3(folder_uri) else _links_outside(root, rel)
    files: dict[str, bytes] = {}
    for name, uri in rel.items():
        if name in escaping:
            continue
        # Names that cannot be a mask are reported by read_mask_pngs without being read.
        ok = "/" not in name and ".." not in name and name.lower().endswith(".png")
        files[name] = store.get_bytes(uri) if ok else b""
    problems = [f"{name}: a link to {(root / name).resolve()}, outside the label folder; copy the mask "
                "into the folder instead" for name in escaping]
    try:
        masks = read_mask_pngs(files, tasks, folder_uri) if files or not problems else {}
    except LabelExportError as exc:
        raise LabelExportError(folder_uri, problems + exc.problems) from None
    if problems:
        raise LabelExportError(folder_uri, problems)
    return masks


def _links_outside(root: Path, rel: Mapping[str, str]) -> list[str]:
    """Names in ``rel`` (relative to the local folder ``root``) that resolve outside it (symbolic
    links, or files below a linked folder): a label import reads only what was delivered into
    the folder."""
    base = root.resolve()
    return sorted(name for name in rel if not (root / name).resolve().is_relative_to(base))
