"""Label formats for external labelers (Label Studio), without a model or a server.

The way out and back, one module each:

* :mod:`~damnet.labels.rle`: Label Studio's brush RLE codec (bit for bit the sdk's) and
  polygon rasterisation;
* :mod:`~damnet.labels.export`: :func:`write_export` writes the labeling config, the tile
  images, pre-annotation masks and ``tasks.json`` (the task format is in that module);
* :mod:`~damnet.labels.parse`: :func:`parse_label_studio_export` reads Label Studio's JSON
  export and :func:`read_mask_folder` a folder of ``<tile_id>.png`` masks; both check
  everything and raise one :class:`LabelExportError` listing every problem;
* :mod:`~damnet.labels.tiles`: :func:`write_label_tiles` writes georeferenced 0/1 label tiles
  that :func:`damnet.tiling.read_label` reads;
* :mod:`~damnet.labels.simulate`: a SIMULATED labeler for tests and demos.
"""

from damnet.labels.export import (
    BRUSH_FROM,
    DEFAULT_LABEL,
    IMAGE_POST,
    IMAGE_PRE,
    POLYGON_FROM,
    SAFE_TILE_ID,
    SETS,
    brush_result,
    build_tasks,
    check_tile_id,
    labeling_config,
    write_export,
)
from damnet.labels.parse import (
    MAX_EXPORT_BYTES,
    MAX_MASK_FILE_BYTES,
    LabelExportError,
    parse_label_studio_export,
    read_mask_folder,
    read_mask_pngs,
)
from damnet.labels.rle import (
    MAX_MASK_PIXELS,
    polygon_to_mask,
    rle_decode,
    rle_decode_values,
    rle_encode,
    rle_encode_values,
)
from damnet.labels.simulate import simulate_label_studio_export
from damnet.labels.tiles import write_label_tiles

__all__ = [
    "BRUSH_FROM",
    "DEFAULT_LABEL",
    "IMAGE_POST",
    "IMAGE_PRE",
    "MAX_EXPORT_BYTES",
    "MAX_MASK_FILE_BYTES",
    "MAX_MASK_PIXELS",
    "POLYGON_FROM",
    "SAFE_TILE_ID",
    "SETS",
    "LabelExportError",
    "brush_result",
    "build_tasks",
    "check_tile_id",
    "labeling_config",
    "parse_label_studio_export",
    "polygon_to_mask",
    "read_mask_folder",
    "read_mask_pngs",
    "rle_decode",
    "rle_decode_values",
    "rle_encode",
    "rle_encode_values",
    "simulate_label_studio_export",
    "write_export",
    "write_label_tiles",
]
