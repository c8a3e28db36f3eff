"""Find the Cityscapes samples in an extracted dataset folder and check them before conversion.

    leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png          the RGB image
    gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png           8-bit labelIds
    gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_instanceIds.png        (optional here)

Checks come in two passes so that 5000 full-size images are checked without decoding them twice:

- `validate` (this module) pairs files and reads only the 33-byte PNG header of every image and
  label: missing or empty split, image without label, label without image, unreadable file, not
  a PNG, wrong mode (RGB or 16-bit labels, non-RGB images), image and label sizes that differ.
  It takes about a second for the real dataset.
- What needs the pixels is checked by `segflow.convert`, in the same pass that converts them:
  every chunk CRC of images and labels (`check_png_chunks`, catches truncated and damaged files
  without inflating the image), label PNGs that fail to decode, and label values that are not
  in the Cityscapes table. Conversion reports these together with the first pass's problems in
  one error and writes nothing.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from segflow.cityscapes import (
    IMAGE_DIR,
    IMAGE_SUFFIX,
    INSTANCE_IDS_SUFFIX,
    LABEL_DIR,
    LABEL_IDS_SUFFIX,
    SPLITS,
)
from segflow.errors import SegflowError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_HEADER_SIZE = 33  # signature, IHDR length and type, 13 bytes of IHDR data, CRC
MAX_LISTED_PROBLEMS = 50
_COLOR_TYPES = {0: ("grayscale", 1), 2: ("RGB", 3), 3: ("palette", 1), 4: ("grayscale+alpha", 2), 6: ("RGBA", 4)}


@dataclass(frozen=True)
class Sample:
    """One image with its labels; `key` is `{city}_{seq}_{frame}`, the name shared by its files."""

    split: str
    city: str
    key: str
    image: Path
    label_ids: Path
    instance_ids: Path | None


class Problem(NamedTuple):
    """Something wrong with one file of the dataset, in words a user can act on."""

    path: Path
    message: str


class PngHeader(NamedTuple):
    width: int
    height: int
    bit_depth: int
    color_type: int

    @property
    def channels(self) -> int:
        return _COLOR_TYPES[self.color_type][1]

    @property
    def mode(self) -> str:
        """In words, for messages: `8-bit RGB`, `16-bit grayscale`."""
        return f"{self.bit_depth}-bit {_COLOR_TYPES[self.color_type][0]}"


def read_png_header(data: bytes) -> PngHeader:
    """Size and pixel format from a PNG's IHDR chunk, without decoding the image."""
    if len(data) < PNG_HEADER_SIZE or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", data[16:26])
    if color_type not in _COLOR_TYPES or zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        raise ValueError("corrupt PNG header")
    return PngHeader(width, height, bit_depth, color_type)


def check_png_chunks(data: bytes) -> str | None:
    """Walk a PNG's chunks and verify each CRC: finds truncated or damaged files at memory speed.

    Returns what is wrong, or None. The compressed pixel stream itself is not inflated.
    """
    position, has_image_data = len(PNG_SIGNATURE), False
    if not data.startswith(PNG_SIGNATURE):
        return "not a PNG file"
    while position + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        chunk_type = data[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(data):
            return f"truncated PNG: chunk {chunk_type.decode('latin-1')} at byte {position} runs past the end of the file"
        (expected_crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(memoryview(data)[position + 4 : end - 4]) != expected_crc:
            return f"corrupt PNG: chunk {chunk_type.decode('latin-1')} at byte {position} fails its CRC"
        has_image_data |= chunk_type == b"IDAT"
        if chunk_type == b"IEND":
            return None if has_image_data else "corrupt PNG: no image data"
        position = end
    return "truncated PNG: no IEND chunk"


def discover(root: str | Path, splits: tuple[str, ...] = SPLITS) -> dict[str, list[Sample]]:
    """Pair every image with its labels, split by split, sorted by key.

    Raises one SegflowError listing every unpaired file and every missing or empty split.
    """
    samples, problems = _pair_files(Path(root), splits)
    raise_if_problems(root, problems)
    return samples


def validate(root: str | Path, splits: tuple[str, ...] = SPLITS) -> dict[str, list[Sample]]:
    """`discover`, then check every image and label header; one SegflowError lists all problems."""
    samples, problems = scan(root, splits)
    raise_if_problems(root, problems)
    return samples


def scan(root: str | Path, splits: tuple[str, ...] = SPLITS) -> tuple[dict[str, list[Sample]], list[Problem]]:
    """The samples whose files passed the header checks, and the problems of all the others."""
    samples, problems = _pair_files(Path(root), splits)
    checked = {}
    for split, split_samples in samples.items():
        checked[split] = []
        for sample in split_samples:
            sample_problems = _check_headers(sample)
            problems += sample_problems
            if not sample_problems:
                checked[split].append(sample)
    return checked, problems


def raise_if_problems(root: str | Path, problems: list[Problem]) -> None:
    """One SegflowError with one line per problem (paths relative to root), or nothing."""
    if not problems:
        return
    root = Path(root)
    lines = sorted({f"{_relative(problem.path, root)}: {problem.message}" for problem in problems})
    if len(lines) > MAX_LISTED_PROBLEMS:
        lines = lines[:MAX_LISTED_PROBLEMS] + [f"... and {len(lines) - MAX_LISTED_PROBLEMS} more"]
    count = len(set(problems))
    heading = f"{count} problem{'s' if count > 1 else ''} in the dataset at {root}:"
    raise SegflowError("\n  ".join([heading, *lines]))


# === Pairing ===


def _pair_files(root: Path, splits: tuple[str, ...]) -> tuple[dict[str, list[Sample]], list[Problem]]:
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise SegflowError(f"unknown split {', '.join(unknown)}: choose from {', '.join(SPLITS)}")
    if not root.is_dir():
        return {split: [] for split in splits}, [Problem(root, "no such folder")]
    samples, problems = {}, []
    for split in splits:
        image_dir, label_dir = root / IMAGE_DIR / split, root / LABEL_DIR / split
        missing = [folder for folder in (image_dir, label_dir) if not folder.is_dir()]
        problems += [Problem(folder, f"missing folder for split {split!r}") for folder in missing]
        if missing:  # one line for the folder, not one per file left without a partner
            samples[split] = []
            continue
        images = _files_by_key(image_dir, IMAGE_SUFFIX)
        labels = _files_by_key(label_dir, LABEL_IDS_SUFFIX)
        instances = _files_by_key(label_dir, INSTANCE_IDS_SUFFIX)
        for key in sorted(images.keys() - labels.keys()):
            expected = label_dir / images[key].parent.name / f"{key}{LABEL_IDS_SUFFIX}"
            problems.append(Problem(images[key], f"image without label (expected {_relative(expected, root)})"))
        for key in sorted(labels.keys() - images.keys()):
            expected = image_dir / labels[key].parent.name / f"{key}{IMAGE_SUFFIX}"
            problems.append(Problem(labels[key], f"label without image (expected {_relative(expected, root)})"))
        samples[split] = [
            Sample(split, images[key].parent.name, key, images[key], labels[key], instances.get(key))
            for key in sorted(images.keys() & labels.keys())
        ]
        if not images and not labels:
            problems.append(Problem(image_dir, f"split {split!r} has no images"))
    return samples, problems


def _files_by_key(split_dir: Path, suffix: str) -> dict[str, Path]:
    """`{key: path}` for `split_dir/{city}/{key}{suffix}`."""
    if not split_dir.is_dir():
        return {}
    return {path.name[: -len(suffix)]: path for path in split_dir.glob(f"*/*{suffix}")}


# === Header checks ===


def _check_headers(sample: Sample) -> list[Problem]:
    image_header, image_problem = _header(sample.image)
    label_header, label_problem = _header(sample.label_ids)
    problems = [problem for problem in (image_problem, label_problem) if problem]
    if image_header and (image_header.bit_depth, image_header.color_type) != (8, 2):
        problems.append(
            Problem(
                sample.image,
                f"wrong mode {image_header.mode}, expected 8-bit RGB (as `segflow predict`); convert it first, e.g."
                " with Pillow: Image.open(path).convert('RGB').save(path)",
            )
        )
    if label_header and (label_header.bit_depth, label_header.color_type) != (8, 0):
        problems.append(Problem(sample.label_ids, f"wrong mode {label_header.mode}, expected 8-bit grayscale labelIds"))
    if image_header and label_header and image_header[:2] != label_header[:2]:
        problems.append(
            Problem(
                sample.label_ids,
                f"size {label_header.width}x{label_header.height} differs from its image's "
                f"{image_header.width}x{image_header.height} ({sample.image.name})",
            )
        )
    return problems


def _header(path: Path) -> tuple[PngHeader | None, Problem | None]:
    try:
        with open(path, "rb") as file:
            return read_png_header(file.read(PNG_HEADER_SIZE)), None
    except OSError as error:
        return None, Problem(path, f"unreadable: {error.strerror or error}")
    except ValueError as error:
        return None, Problem(path, str(error))


def _relative(path: Path, root: Path) -> str:
    """Paths in messages are short but unambiguous: relative to the dataset folder named above them."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        return str(path)
    return str(relative) if relative.parts else str(path)
