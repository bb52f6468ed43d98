"""Embedded datasets that need no download, written as ordinary image folders.

``digits`` is scikit-learn's bundled copy of the UCI handwritten digits: 1,797
real 8x8 scans (pixel values 0..16) of 10 classes. It is exported exactly as a
Kaggle competition ships data, so every tfkit command can be tried offline::

    OUT/images/digit_00000.png ...   8x8 grayscale PNG, values scaled 0..16 -> 0..255
    OUT/train.csv                    id,label
    OUT/test.csv                     id,label (held out: stratified, seeded)

The images keep their native 8x8 size; ``tfkit build-records --size 32`` upsizes
them.

Example::

    paths = export_dataset("digits", "data/digits")
    sorted(paths)
    ['images', 'test_csv', 'train_csv']
"""

from __future__ import annotations

import os
from pathlib import Path

from tfkit.utils import TfkitError

DATASETS = ("digits",)


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
        name: dataset name; only ``"digits"`` (1,797 scans, 10 classes).
        out: folder to create.
        test_size: held-out fraction for ``test.csv`` (stratified by label), in (0, 1).
        seed: seed of the stratified train/test split.
        overwrite: replace a non-empty ``out``.

    Returns:
        ``{"images": out/images, "train_csv": out/train.csv, "test_csv": out/test.csv}``.

    Raises:
        TfkitError: unknown name, bad ``test_size``, or non-empty ``out`` without ``overwrite``.

    Example::

        p = export_dataset("digits", "/tmp/digits", overwrite=True)
        import pandas as pd; len(pd.read_csv(p["train_csv"]))
        1437
    """
    if name not in DATASETS:
        raise TfkitError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if not 0.0 < float(test_size) < 1.0:
        raise TfkitError(f"--test-size must be in (0, 1), got {test_size}")

    import numpy as np
    import pandas as pd
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from tfkit.records import atomic_dir

    digits = load_digits()
    # Values are integers 0..16; x * 255 / 16 rounded maps 0->0 and 16->255 exactly.
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(int)
    ids = [f"digit_{i:05d}" for i in range(len(labels))]
    frame = pd.DataFrame({"id": ids, "label": labels})
    train, test = train_test_split(frame, test_size=test_size, random_state=seed, stratify=labels)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        img_dir = tmp / "images"
        img_dir.mkdir()
        for i, img_id in enumerate(ids):
            Image.fromarray(pixels[i]).save(img_dir / f"{img_id}.png", optimize=False)
        # Sorted by id so the files do not depend on the split's shuffling order.
        train.sort_values("id").to_csv(tmp / "train.csv", index=False)
        test.sort_values("id").to_csv(tmp / "test.csv", index=False)
    out = Path(out)
    return {"images": out / "images", "train_csv": out / "train.csv", "test_csv": out / "test.csv"}
