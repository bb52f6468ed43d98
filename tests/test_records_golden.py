"""Shard bytes stay those of the original single-module builder (golden digests).

Why golden digests are honest here: the inputs are generated deterministically by this
file, and the digests were recorded by running the builder as it was before the split
into ``tfkit/records/`` (``git show d973f31:tfkit/records.py``) on exactly these inputs.
Nothing else pins the bytes: the refactored builder must reproduce them.

Two things the digests must not depend on are taken out:

* the fold assigner (``tfkit.folds.assign_folds``, being reworked separately) is replaced
  by a fixed stand-in, so these digests test the builder's framing, ordering, shard plan,
  metadata and manifest, not the fold algorithm;
* build A uses hand-made JPEG structures (headers + fake scan data + end marker) passed
  through with ``verify="markers"``: no codec runs, so its digests hold on any Pillow.
  Build B re-encodes PNG pixels, so its digest is that of the JPEG encoder of the pinned
  ``pillow==13.0.0`` (requirements.txt, which CI installs).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import tfkit.folds
from tfkit.records import build_records


def fake_jpeg(h: int, w: int, payload: bytes) -> bytes:
    """A JPEG-shaped byte string: SOI, SOF0 (8-bit, 3 components), SOS, ``payload``, EOI."""
    sof = struct.pack(">BHHB", 8, h, w, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sos = b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    seg = lambda m, body: b"\xff" + bytes([m]) + struct.pack(">H", len(body) + 2) + body  # noqa: E731
    return b"\xff\xd8" + seg(0xC0, sof) + seg(0xDA, sos) + payload.replace(b"\xff", b"\xfe") + b"\xff\xd9"


def stand_in_folds(df: pd.DataFrame, n_folds: int, label_col: str, group_col: str | None = None,
                   seed: int = 42, **_: object) -> np.ndarray:
    """Deterministic folds (groups kept together) that do not depend on tfkit.folds' algorithm."""
    groups = df[group_col] if group_col else df.index.astype(str)
    keys = sorted(set(groups))
    fold_of = {g: (k * 7 + seed) % n_folds for k, g in enumerate(keys)}
    return np.array([fold_of[g] for g in groups], np.int64)


def digests(out: Path) -> dict[str, str]:
    """sha256 of every shard and folds.csv, and of the manifest without its machine-specific fields."""
    files = sorted(out.glob("*.tfrec")) + [out / "folds.csv"]
    d = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    # the file as written (key order included), less the version and the temporary
    # folder's path (in "source" and in skipped rows' messages)
    m = json.loads((out / "manifest.json").read_text())
    m.pop("tfkit_version")
    text = json.dumps(m, indent=2).replace(str(out.parent), "TMP")
    d["manifest"] = hashlib.sha256(text.encode()).hexdigest()
    return d


def build_a(tmp: Path) -> dict[str, dict[str, str]]:
    """Pass-through build: 30 rows, groups, numeric + categorical metadata, a bad row skipped, and a test split."""
    img = tmp / "a_img"
    img.mkdir()
    rng = np.random.default_rng(20261202)
    rows = []
    for k in range(30):
        ident = f"a{k:02d}"
        if k != 13:  # a13's image is missing: skipped with --skip-bad
            (img / f"{ident}.jpg").write_bytes(fake_jpeg(12, 12, rng.bytes(int(rng.integers(20, 400)))))
        rows.append({"id": ident, "label": ["cat", "dog", "eel"][k % 3], "patient": f"p{k // 2}",
                     "age": "" if k % 7 == 0 else str(20 + k), "site": ["head", "leg", ""][k % 4 % 3]})
    pd.DataFrame(rows).to_csv(tmp / "a.csv", index=False)
    kw = dict(workers=1, progress=False, verify="markers")
    build_records(tmp / "a.csv", img, tmp / "a_train", group_col="patient", meta_cols=["age", "site"],
                  n_folds=3, seed=5, shard_size=4, skip_bad=True, **kw)
    pd.DataFrame(rows[:9]).drop(columns="label").to_csv(tmp / "a_test.csv", index=False)
    build_records(tmp / "a_test.csv", img, tmp / "a_test", split="test", meta_cols=["age", "site"],
                  classes_from=tmp / "a_train", shard_size=5, **kw)
    return {"train": digests(tmp / "a_train"), "test": digests(tmp / "a_test")}


def build_b(tmp: Path) -> dict[str, str]:
    """Re-encoding build: 12 PNGs of two sizes, stored at 16 px by two workers."""
    img = tmp / "b_img"
    img.mkdir()
    rng = np.random.default_rng(7)
    for k in range(12):
        shape = (20, 28, 3) if k % 2 else (30, 18, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(img / f"b{k:02d}.png")
    pd.DataFrame({"id": [f"b{k:02d}" for k in range(12)], "label": [k % 2 for k in range(12)]}).to_csv(
        tmp / "b.csv", index=False)
    build_records(tmp / "b.csv", img, tmp / "b_out", n_folds=2, size=16, workers=2, progress=False)
    return digests(tmp / "b_out")


GOLDEN_A: dict[str, dict[str, str]] = {
    "train": {
        "train00-000-4.tfrec": "e5f480c5e40facb758a4e0ce2a44a5aa391e08bcdcb0bec830a6a8c1c5755243",
        "train00-001-3.tfrec": "4ccabb22be699db16fe65cdc13f1e0e809405f43dcd0300f9824e02069aa0622",
        "train00-002-3.tfrec": "d8f633d41bbe755c66591a5eaddf7e13cc758a1d94b126b36022ecea7fce94f9",
        "train01-000-3.tfrec": "3c0425d5c7273cebe8ab43583841dc2fd15ecc1d3abb6f543cf5e1a2eb4fdd64",
        "train01-001-3.tfrec": "290a7bd1bee4278239e6fcc63d33477594850c2c1c17f2acfb076e3fd1cf286a",
        "train01-002-3.tfrec": "9998797a95368b4218a7fe495808d4d72d5134a3504f35c4fd19a8e99e0d7271",
        "train02-000-4.tfrec": "eaa02d77fab73109ea20ae239dba6d39696edcb8b876198ff46bc7a3f158034a",
        "train02-001-3.tfrec": "c5f18dc7486abc87e24d35fb1a60680d73c81ef824f3aebb7794e0fe91c317f1",
        "train02-002-3.tfrec": "8173b26fb643340cc58b307a58c997fcde68e4ba0753dfe320b7f2fd4f90eb39",
        "folds.csv": "c28325225ac7951b5e8e605a7e9cb968813dfd5ce7d6fc637ec056ff0f13d479",
        "manifest": "df9e9d314e5fbdda35d3461a99423a683ba3d648d7263071b25468cec9c19f38"
    },
    "test": {
        "test-000-5.tfrec": "81167d1fb618867e38d2466f4d4d9b0a756138fe726c7b16e9068219227fd699",
        "test-001-4.tfrec": "b8e23eb1bdc624a198a20931c0ec2e420343cb96c6467e366b8890aafcd38548",
        "folds.csv": "42cba2ab1bf4c1eb45d1c89f99639b335095c243db35a16524ea6c97fa5b6aac",
        "manifest": "0852143e74ba8f5d9c5b509b4c441fd677af3471186c9b202dc81b0521cbeb95"
    }
}
GOLDEN_B: dict[str, str] = {
    "train00-000-6.tfrec": "6fe5ebc5fbf72e3f079bd94f6f72cf09937cf03ad4a7ffb02fcba60a603c8bd9",
    "train01-000-6.tfrec": "4a039f1b674237814f36f60c2ae29bfe87d08ab70e7da3b7c6718430fb5dd5ea",
    "folds.csv": "67ead73a2607024fbb4a27be9783969538d0f7f54fc6748aa6540ab69f8e5eb4",
    "manifest": "cb0848e0002ba6b4260d5a4baf4148f72347a75c509394ea0af152b70b313b7d"
}


@pytest.fixture()
def fixed_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tfkit.folds, "assign_folds", stand_in_folds)


def test_pass_through_shards_equal_the_original_builders(tmp_path: Path, fixed_folds: None) -> None:
    assert build_a(tmp_path) == GOLDEN_A


def test_re_encoded_shards_equal_the_original_builders(tmp_path: Path, fixed_folds: None) -> None:
    assert build_b(tmp_path) == GOLDEN_B
