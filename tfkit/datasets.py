"""Embedded datasets that need no download, written as ordinary image folders.

All are made from scikit-learn's bundled copy of the UCI handwritten digits: 1,797
real 8x8 scans (pixel values 0..16, scaled to 0..255) of 10 classes. The scans are
split once into train and held-out test scans (stratified by digit, seeded), and
every dataset is made from its own side of that split, so no scan reaches both
``train.csv`` and ``test.csv``. Each is exported as a Kaggle competition ships data,
so every tfkit command can be tried offline:

* ``digits`` (single label)::

    OUT/images/digit_00000.png ...   8x8 grayscale PNG
    OUT/train.csv, OUT/test.csv      id,label

* ``digits-multilabel`` (tags, Planet / Plant Pathology style): 2x2 mosaics of four
  scans drawn without replacement from one side of the split (each scan used once);
  the tags are the distinct digits present (1 to 4 of them)::

    OUT/images/mosaic_00000.png ...  16x16 grayscale PNG
    OUT/train.csv, OUT/test.csv      id,tags,d0..d9,sources
                                     tags: "3 7 9" (space-separated, --label-sep " ");
                                     d0..d9: the same as 0/1 columns (--label-cols d0,...,d9);
                                     sources: the four scans, top-left, top-right, bottom-left, bottom-right

* ``digits-regression`` (numbers): the scans with numeric targets::

    OUT/images/digit_00000.png ...   8x8 grayscale PNG
    OUT/train.csv, OUT/test.csv      id,value,ink,ink_top,ink_bottom
                                     value: the digit as a number (ordinal regression, as APTOS);
                                     ink: mean pixel value / 255 of the scan (4 decimals);
                                     ink_top, ink_bottom: the same of the top and bottom halves
                                     (together a two-column target)

* ``digits-channels`` (one grey file per channel, Human Protein Atlas style)::

    OUT/images/digit_00000_red.png     the scan (8-bit)
    OUT/images/digit_00000_green.png   its negative, 255 - scan (8-bit)
    OUT/images/digit_00000_blue.png    another scan, of a digit drawn at random (8-bit distractor)
    OUT/images/digit_00000_yellow.png  the scan as 16-bit, scan * 257
    OUT/train.csv, OUT/test.csv        id,label (build with --channels red,green,blue,yellow)

The images keep their native size; ``tfkit build-records --size 32`` upsizes them.

Example:
    >>> sorted(DATASETS)
    ['digits', 'digits-channels', 'digits-multilabel', 'digits-regression']
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

from tfkit.utils import TfkitError, atomic_dir

CHANNELS = ("red", "green", "blue", "yellow")


@dataclasses.dataclass(frozen=True)
class Scans:
    """The digit scans and their train/test split.

    Attributes:
        pixels: uint8 ``[1797, 8, 8]``, values 0..255.
        labels: int digit per scan.
        ids: ``digit_00000`` ... per scan.
        train, test: scan indices of each side, ascending.
    """

    pixels: Any
    labels: Any
    ids: list[str]
    train: list[int]
    test: list[int]


def load_scans(test_size: float, seed: int) -> Scans:
    """The scans, split into train and test (stratified by digit, seeded)."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Values are integers 0..16; x * 255 / 16 rounded maps 0->0 and 16->255 exactly.
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(int)
    train, test = train_test_split(np.arange(len(labels)), test_size=test_size, random_state=seed, stratify=labels)
    return Scans(pixels, labels, [f"digit_{i:05d}" for i in range(len(labels))], sorted(train), sorted(test))


def _save_png(arr: Any, path: Path) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path, optimize=False)


def _write_csvs(tmp: Path, frames: dict[str, Any]) -> None:
    # Sorted by id so the files do not depend on the split's shuffling order.
    for split, frame in frames.items():
        frame.sort_values("id").to_csv(tmp / f"{split}.csv", index=False)


def _write_digits(scans: Scans, tmp: Path, seed: int) -> None:
    import pandas as pd

    for i, img_id in enumerate(scans.ids):
        _save_png(scans.pixels[i], tmp / "images" / f"{img_id}.png")
    frames = {split: pd.DataFrame({"id": [scans.ids[i] for i in rows], "label": scans.labels[rows]})
              for split, rows in (("train", scans.train), ("test", scans.test))}
    _write_csvs(tmp, frames)


def _write_multilabel(scans: Scans, tmp: Path, seed: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    frames, k = {}, 0
    for split, rows in (("train", scans.train), ("test", scans.test)):
        order = rng.permutation(rows)
        records = []
        for quad in order[: len(order) // 4 * 4].reshape(-1, 4):
            p = scans.pixels[quad]
            _save_png(np.block([[p[0], p[1]], [p[2], p[3]]]), tmp / "images" / f"mosaic_{k:05d}.png")
            present = sorted({int(scans.labels[i]) for i in quad})
            records.append({"id": f"mosaic_{k:05d}", "tags": " ".join(map(str, present)),
                            **{f"d{d}": int(d in present) for d in range(10)},
                            "sources": " ".join(scans.ids[i] for i in quad)})
            k += 1
        frames[split] = pd.DataFrame(records)
    _write_csvs(tmp, frames)


def _ink(pixels: Any) -> float:
    return round(float(pixels.mean()) / 255.0, 4)


def _write_regression(scans: Scans, tmp: Path, seed: int) -> None:
    import pandas as pd

    for i, img_id in enumerate(scans.ids):
        _save_png(scans.pixels[i], tmp / "images" / f"{img_id}.png")
    frames = {}
    for split, rows in (("train", scans.train), ("test", scans.test)):
        frames[split] = pd.DataFrame({
            "id": [scans.ids[i] for i in rows],
            "value": [float(scans.labels[i]) for i in rows],
            "ink": [_ink(scans.pixels[i]) for i in rows],
            "ink_top": [_ink(scans.pixels[i][:4]) for i in rows],
            "ink_bottom": [_ink(scans.pixels[i][4:]) for i in rows],
        })
    _write_csvs(tmp, frames)


def _write_channels(scans: Scans, tmp: Path, seed: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    for split, rows in (("train", scans.train), ("test", scans.test)):
        distractors = rng.choice(rows, len(rows))  # from the same side of the split
        for i, other in zip(rows, distractors):
            scan = scans.pixels[i]
            planes = (scan, 255 - scan, scans.pixels[other], scan.astype(np.uint16) * 257)
            for channel, plane in zip(CHANNELS, planes):
                _save_png(plane, tmp / "images" / f"{scans.ids[i]}_{channel}.png")
    frames = {split: pd.DataFrame({"id": [scans.ids[i] for i in rows], "label": scans.labels[rows]})
              for split, rows in (("train", scans.train), ("test", scans.test))}
    _write_csvs(tmp, frames)


DATASETS: dict[str, Callable[[Scans, Path, int], None]] = {
    "digits": _write_digits,
    "digits-multilabel": _write_multilabel,
    "digits-regression": _write_regression,
    "digits-channels": _write_channels,
}


def export_dataset(
    name: str,
    out: str | os.PathLike,
    test_size: float = 0.2,
    seed: int = 42,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write an embedded dataset as PNG files plus ``train.csv`` and ``test.csv``.

    The folder is written under a temporary name beside ``out`` and renamed at the
    end, so an interrupted export never leaves a folder that looks complete.

    Args:
        name: a key of :data:`DATASETS` (see the module docstring for each one's files).
        out: folder to create.
        test_size: held-out fraction of the scans for ``test.csv`` (stratified by digit), in (0, 1).
        seed: seed of the stratified train/test split (and of the mosaics and distractors).
        overwrite: replace a non-empty ``out``.

    Returns:
        ``{"images": out/images, "train_csv": out/train.csv, "test_csv": out/test.csv}``.

    Raises:
        TfkitError: unknown name, bad ``test_size``, or non-empty ``out`` without ``overwrite``.

    Example (writes 1,797 PNGs)::

        p = export_dataset("digits-multilabel", "/tmp/mosaics", overwrite=True)
        pd.read_csv(p["train_csv"]).tags[:2]  # e.g. "0 3 6", "1 4"
    """
    if name not in DATASETS:
        raise TfkitError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if not 0.0 < float(test_size) < 1.0:
        raise TfkitError(f"--test-size must be in (0, 1), got {test_size}")
    scans = load_scans(test_size, seed)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        DATASETS[name](scans, tmp, seed)
    out = Path(out)
    return {"images": out / "images", "train_csv": out / "train.csv", "test_csv": out / "test.csv"}
