"""Image preference data: read, validate (file:line: field: reason), and turn each row into a `Sample` set.

Accepted rows (JSONL, JSON, parquet, a `datasets` directory or Dataset, hf:owner/name, in-memory rows;
read by preftune/data/formats.py's reader, so every origin is a file:line or a row number):

- image-pairs (Pick-a-Pic layout): {caption, jpg_0 | image_0, jpg_1 | image_1, label_0} with label_0 = 1
  when image 0 is preferred, 0 when image 1 is, 0.5 for a tie (skipped and counted); or
  {caption, chosen, rejected}. Optional scores: score_0/score_1 or scores [s0, s1] (SmPO).
- image-lists: {caption, images: [...], scores: [...]} (RankDPO; higher is better).
- unpaired: {caption, image, label} with label 1/true (positive, real, expert) or 0/false (DSO, DDO).
- condition-pairs: {caption?, image, control_chosen, control_rejected} (CPO).
- segment-pairs: {caption?, video_0, video_1, segment_labels: [+1 | -1 | 0, ...]} (DenseDPO).
- prompts (online methods): {caption} or a .txt file with one caption per line.

An image is a path (relative to the data file's folder, or `image_root`), a datasets Image value
({"bytes", "path"} or a PIL image), raw bytes, or a numeric array (toy samples and latents: lists of
floats). The condition is the caption, or for toy models `condition`: a class id or a control vector.
Images are decoded when a batch needs them; a file that is missing is reported at load time, one that
will not decode when it is first read, both with the row's origin and field.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from preftune.data.formats import MISSING, WRONG_TYPE, BadRow, DataError, LoadReport, SkipRow, convert_rows

KINDS = ("image-pairs", "image-lists", "unpaired", "condition-pairs", "segment-pairs", "prompts")
TIE = "tie (label 0.5)"
MISSING_IMAGE = "missing image file"  # a row naming an image that is not on disk (a skip category of its own)


@dataclass
class ImageRef:
    """An image or array not yet decoded, with where it came from (for error messages)."""

    value: Any
    origin: str
    field: str
    root: Path | None = None

    def load(self, shape: tuple[int, ...]) -> Tensor:
        """The image as a float tensor of `shape` ((C, H, W) in [-1, 1]) or the array reshaped to it."""
        value = self.value
        try:
            if isinstance(value, Tensor):
                return value.float().reshape(shape)
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], (str, dict, bytes)):
                # a video given as its frames: each frame one image of shape[1:]
                return torch.stack([ImageRef(v, self.origin, f"{self.field}[{i}]", self.root).load(tuple(shape[1:]))
                                    for i, v in enumerate(value)])
            if isinstance(value, (list, tuple)):
                return torch.tensor(value, dtype=torch.float32).reshape(shape)
            return pil_to_tensor(self.open(), shape)
        except DataError:
            raise
        except Exception as error:  # a corrupt file, an array of the wrong size: the row and field say which
            raise DataError(f"{self.origin}: field '{self.field}': cannot use it as a sample of shape {shape}: "
                            f"{type(error).__name__}: {error}") from None

    def open(self):
        from PIL import Image

        value = self.value
        if hasattr(value, "convert"):       # already a PIL image (a decoded datasets Image column)
            return value
        if isinstance(value, dict):         # a datasets Image value read raw
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return Image.open(io.BytesIO(value))
        return Image.open(self.path())

    def path(self) -> Path:
        path = Path(str(self.value))
        if not path.is_absolute() and self.root is not None:
            path = self.root / path
        return path


def pil_to_tensor(image, shape: tuple[int, ...]) -> Tensor:
    """A PIL image resized (centre crop to square, then resize) to (C, H, W), scaled to [-1, 1]."""
    import numpy as np
    from PIL import ImageOps

    channels, height, width = shape
    image = image.convert("L" if channels == 1 else "RGB")
    image = ImageOps.fit(image, (width, height))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    tensor = torch.from_numpy(array.copy())
    return tensor[None] if channels == 1 else tensor.permute(2, 0, 1)


@dataclass
class Example:
    """One normalised row: a condition and its samples (pairs: preferred first), with labels and scores."""

    condition: Any
    samples: list[ImageRef]
    origin: str
    scores: list[float] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _field(row: dict, *names: str, required: bool = True):
    for name in names:
        if name in row and row[name] is not None:
            return name, row[name]
    if required:
        raise BadRow(f"missing (expected {' or '.join(repr(n) for n in names)})", names[0], MISSING)
    return None, None


def _condition(row: dict) -> Any:
    name, value = _field(row, "caption", "prompt", "condition", required=False)
    if name in ("caption", "prompt") and not isinstance(value, str):
        raise BadRow(f"must be text, got {type(value).__name__}", name, WRONG_TYPE)
    return value


def _image(row: dict, origin: str, root: Path | None, *names: str) -> ImageRef:
    name, value = _field(row, *names)
    ref = ImageRef(value, origin, name, root)
    if isinstance(value, str) and not ref.path().exists():
        raise BadRow(f"image file {ref.path()} does not exist", name, MISSING_IMAGE)
    return ref


def _numbers(row: dict, name: str, length: int | None = None) -> list[float]:
    value = row.get(name)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in value):
        raise BadRow(f"must be a list of numbers, got {value!r}", name, WRONG_TYPE)
    if length is not None and len(value) != length:
        raise BadRow(f"must hold {length} numbers, got {len(value)}", name)
    return [float(v) for v in value]


def row_to_example(row: dict, origin: str, kind: str, root: Path | None) -> Example:
    """Normalise one row of `kind`; a valid row that carries no preference (a tie) raises SkipRow."""
    condition = _condition(row)
    if kind == "prompts":
        if condition is None:
            raise BadRow("missing (expected 'caption', 'prompt' or 'condition')", "caption", MISSING)
        return Example(condition, [], origin)
    if kind == "image-pairs":
        if "chosen" in row or "rejected" in row:
            samples = [_image(row, origin, root, "chosen"), _image(row, origin, root, "rejected")]
            scores = [float(row["chosen_score"]), float(row["rejected_score"])] if "chosen_score" in row else None
            return Example(condition, samples, origin, scores)
        samples = [_image(row, origin, root, "jpg_0", "image_0"), _image(row, origin, root, "jpg_1", "image_1")]
        label_name, label = _field(row, "label_0")
        if label not in (0, 1, 0.5, 0.0, 1.0) or isinstance(label, bool):
            raise BadRow(f"must be 1 (image 0 preferred), 0 (image 1 preferred) or 0.5 (tie), got {label!r}", label_name)
        scores = (_numbers(row, "scores", 2) if "scores" in row
                  else [float(row["score_0"]), float(row["score_1"])] if "score_0" in row else None)
        if label == 0.5:
            raise SkipRow(TIE)
        if label == 0:
            samples, scores = samples[::-1], scores[::-1] if scores else None
        return Example(condition, samples, origin, scores)
    if kind == "image-lists":
        name, images = _field(row, "images")
        if not isinstance(images, list) or len(images) < 2:
            raise BadRow("must be a list of at least 2 images", name, WRONG_TYPE)
        samples = [_image({"images": image}, origin, root, "images") for image in images]
        return Example(condition, samples, origin, _numbers(row, "scores", len(images)))
    if kind == "unpaired":
        name, label = _field(row, "label")
        if label not in (0, 1, True, False):
            raise BadRow(f"must be 1/true (positive) or 0/false (negative), got {label!r}", name)
        return Example(condition, [_image(row, origin, root, "image")], origin, extras={"label": bool(label)})
    if kind == "condition-pairs":
        image = _image(row, origin, root, "image")
        controls = [ImageRef(row.get(n), origin, n, root) for n in ("control_chosen", "control_rejected")]
        for ref in controls:
            if ref.value is None:
                raise BadRow("missing", ref.field, MISSING)
        return Example(condition, [image], origin, extras={"controls": controls})
    if kind == "segment-pairs":
        samples = [_image(row, origin, root, "video_0"), _image(row, origin, root, "video_1")]
        labels = _numbers(row, "segment_labels")
        if any(v not in (-1.0, 0.0, 1.0) for v in labels):
            raise BadRow("each entry must be +1 (video 0 better), -1 (video 1 better) or 0 (tie)", "segment_labels")
        return Example(condition, samples, origin, extras={"segment_labels": labels})
    raise ValueError(f"unknown image data kind {kind!r}; kinds: {', '.join(KINDS)}")


def load_examples(source: Any, kind: str, on_bad_row: str = "error", split: str = "train",
                  limit: int | None = None, image_root: str | None = None) -> tuple[list[Example], LoadReport]:
    """Read and validate every row of `source` as `kind` (see the module docstring)."""
    root = Path(image_root) if image_root else (Path(str(source)).parent if isinstance(source, (str, Path))
                                                  and not str(source).startswith("hf:") else None)
    if isinstance(source, (str, Path)) and str(source).endswith(".txt"):
        path = Path(source)
        if not path.exists():
            raise DataError(f"{source}: no such file")
        source = [{"caption": line.strip()} for line in path.read_text().splitlines() if line.strip()]
    return convert_rows(source, lambda row, origin, _: row_to_example(row, origin, kind, root), on_bad_row, split, limit)


def load_sample(example: Example, index: int, shape: tuple[int, ...]) -> Tensor:
    return example.samples[index].load(shape)
