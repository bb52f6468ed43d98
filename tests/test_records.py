"""tfkit.records: build (formats, pass-through, determinism, bad input, atomicity) and read back."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tfkit.cli import main
from tfkit.records import (
    SIIM_ISIC_2020,
    build_records,
    count_from_names,
    crc32c,
    example_from_entries,
    feature_entry,
    load_manifest,
    make_parser,
    parse_shard_name,
    shard_files,
    sort_classes,
    source_sizes,
)
from tfkit.utils import TfkitError



def read_all(records: Path, mapping=None, files=None) -> list[dict]:
    """Every example of the records folder as numpy values, in file order."""
    parse = make_parser(mapping if mapping is not None else load_manifest(records))
    files = files if files is not None else shard_files(records)
    out = []
    for ex in tf.data.TFRecordDataset(files).map(parse):
        d = {k: v.numpy() for k, v in ex.items() if k != "meta"}
        d["meta"] = {k: v.numpy() for k, v in ex["meta"].items()}
        d["pixels"] = tf.io.decode_jpeg(ex["image"], channels=3).numpy()
        out.append(d)
    return out


def jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------- encoder correctness


def test_crc32c_known_vectors() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4 test vector
    rng = np.random.default_rng(0)
    for n in (1, 3, 4, 1023, 1024, 1025, 5000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        c = 0xFFFFFFFF
        for b in data:  # bitwise reference
            c ^= b
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        assert crc32c(data) == c ^ 0xFFFFFFFF


def test_example_serializer_equals_tensorflow() -> None:
    ours = example_from_entries(
        feature_entry("image", b"\xff\xd8abc") + feature_entry("id", "x_1") + feature_entry("label", -1)
        + feature_entry("fold", 3) + feature_entry("big", 2**40) + feature_entry("meta/age", 41.5)
        + feature_entry("meta/nan", float("nan"))
    )
    ex = tf.train.Example.FromString(ours)
    f = ex.features.feature
    assert f["image"].bytes_list.value == [b"\xff\xd8abc"] and f["id"].bytes_list.value == [b"x_1"]
    assert f["label"].int64_list.value == [-1] and f["fold"].int64_list.value == [3]
    assert f["big"].int64_list.value == [2**40] and f["meta/age"].float_list.value == [41.5]
    assert np.isnan(f["meta/nan"].float_list.value[0])


def test_names_and_class_sorting() -> None:
    assert parse_shard_name("train03-001-1234.tfrec") == {"split": "train", "fold": 3, "shard": 1, "count": 1234}
    assert parse_shard_name("test-002-7.tfrec") == {"split": "test", "fold": None, "shard": 2, "count": 7}
    assert parse_shard_name("train00-2182.tfrec")["count"] == 2182
    assert count_from_names(["a/train00-000-5.tfrec", "train01-000-6.tfrec"]) == 11
    with pytest.raises(TfkitError, match="carries no count"):
        count_from_names(["foo.tfrec"])
    assert sort_classes(["10", "9", "1"]) == ["1", "9", "10"]
    assert sort_classes(["dog", "cat", "10"]) == ["10", "cat", "dog"]


RECORDS_MODULES = ["tfkit.records", "tfkit.records.builder", "tfkit.records.spec", "tfkit.records.table",
                   "tfkit.records.targets", "tfkit.records.metadata", "tfkit.records.examples",
                   "tfkit.records.workers", "tfkit.records.writer", "tfkit.records.images", "tfkit.records.tfrecord",
                   "tfkit.records.checksum", "tfkit.records.shards", "tfkit.records.reader", "tfkit.records.schemas"]


@pytest.mark.parametrize("module", RECORDS_MODULES)
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


# --------------------------------------------------------------------------- round trip


def test_round_trip_small(small_records: Path, small_csv: Path) -> None:
    m = load_manifest(small_records)
    csv = pd.read_csv(small_csv, dtype={"id": str, "group": str, "site": str}, keep_default_na=False)
    assert m["classes"] == [str(k) for k in range(10)] and m["task"] == "multiclass"
    assert m["image"]["size"] == [32, 32] and m["n_examples"] == len(csv) == 60
    assert m["metadata"]["age"]["kind"] == "numeric" and m["metadata"]["site"] == {
        "kind": "categorical", "vocab": ["head", "leg", "torso"]}
    assert m["features"]["meta/age"] == "float32" and m["features"]["meta/site"] == "int64"
    rows = read_all(small_records)
    assert len(rows) == 60
    by_id = csv.set_index("id")
    folds_csv = pd.read_csv(small_records / "folds.csv", dtype={"id": str}).set_index("id")["fold"]
    group_folds: dict[str, set] = {}
    for r in rows:
        ident = r["id"].decode()
        src = by_id.loc[ident]
        assert r["pixels"].shape == (32, 32, 3)
        assert r["label"] == int(src["label"]) and r["group"].decode() == src["group"]
        assert r["fold"] == folds_csv[ident]
        age = src["age"]
        if age == "":
            assert np.isnan(r["meta"]["age"])
        else:
            assert r["meta"]["age"] == np.float32(float(age))
        site = src["site"]
        assert r["meta"]["site"] == (["head", "leg", "torso"].index(site) if site else -1)
        group_folds.setdefault(src["group"], set()).add(int(r["fold"]))
    assert all(len(v) == 1 for v in group_folds.values())
    # counts in names equal counts in files, sha256 in the manifest matches
    import hashlib

    for s in m["shards"]:
        f = small_records / s["file"]
        assert parse_shard_name(s["file"])["count"] == s["count"] == sum(1 for _ in tf.data.TFRecordDataset(str(f)))
        assert hashlib.sha256(f.read_bytes()).hexdigest() == s["sha256"]
        fold_of_examples = {r["fold"] for r in read_all(small_records, files=[str(f)])}
        assert fold_of_examples == {s["fold"]} == {parse_shard_name(s["file"])["fold"]}
    # file order = (fold, CSV row order)
    order = [r["id"].decode() for r in rows]
    expect = sorted(order, key=lambda i: (folds_csv[i], list(by_id.index).index(i)))
    assert order == expect
    assert count_from_names(shard_files(small_records, folds=[1])) == int((folds_csv == 1).sum())


def test_digits_records_pixels_and_labels(digits_records: Path, digits_dir: Path) -> None:
    m = load_manifest(digits_records)
    assert m["n_examples"] == 1437 and len(m["shards"]) == 5
    assert {s["fold"] for s in m["shards"]} == set(range(5))
    rows = read_all(digits_records, files=shard_files(digits_records, folds=[2]))
    train = pd.read_csv(digits_dir / "train.csv").set_index("id")
    for r in rows[:20]:
        ident = r["id"].decode()
        assert r["label"] == train.loc[ident, "label"]
        # the 32-px record is the 8x8 scan upsized (bicubic) and JPEG-coded at q95
        src = Image.open(digits_dir / "images" / f"{ident}.png").convert("RGB")
        ref = np.asarray(src.resize((32, 32), Image.Resampling.BICUBIC), np.float32)
        assert np.abs(r["pixels"] - ref).mean() < 4


def test_test_split_with_known_labels(digits_test_records: Path, digits_dir: Path) -> None:
    m = load_manifest(digits_test_records)
    assert m["split"] == "test" and [s["file"] for s in m["shards"]] == ["test-000-360.tfrec"]
    rows = read_all(digits_test_records)
    test = pd.read_csv(digits_dir / "test.csv").set_index("id")
    assert all(r["fold"] == -1 for r in rows)
    assert [r["label"] for r in rows] == [test.loc[r["id"].decode(), "label"] for r in rows]


def test_test_split_without_labels(tmp_path: Path, digits_dir: Path) -> None:
    ids = pd.read_csv(digits_dir / "test.csv")[["id"]].head(12)
    ids.to_csv(tmp_path / "t.csv", index=False)
    m = build_records(tmp_path / "t.csv", digits_dir / "images", tmp_path / "r", split="test", size=16,
                      workers=1, progress=False)
    assert m["classes"] == [] and m["n_examples"] == 12
    assert {int(r["label"]) for r in read_all(tmp_path / "r")} == {-1}


# --------------------------------------------------------------------------- determinism


def test_bytes_identical_for_any_workers(small_csv: Path, digits_dir: Path, tmp_path: Path) -> None:
    kw = dict(csv=small_csv, images=digits_dir / "images", group_col="group", meta_cols=["age", "site"],
              size=32, n_folds=3, shard_size=7, progress=False)
    build_records(out=tmp_path / "w1", workers=1, **kw)
    build_records(out=tmp_path / "w2", workers=2, **kw)
    a, b = tree_bytes(tmp_path / "w1"), tree_bytes(tmp_path / "w2")
    assert a == b and len([n for n in a if n.endswith(".tfrec")]) >= 9  # 3 folds x ceil(20/7) shards
    build_records(out=tmp_path / "s7", workers=2, seed=7, **kw)
    assert (tmp_path / "s7" / "folds.csv").read_bytes() != a["folds.csv"]


def test_script_from_stdin_builds_with_workers_instead_of_hanging(small_csv: Path, digits_dir: Path,
                                                                  tmp_path: Path) -> None:
    # A spawn/forkserver child re-imports __main__; for ``python - < script`` there is no
    # file to import, every child died at start and the pool waited for ever. Such a
    # script now re-encodes in threads, with the same bytes. (forkserver is forced: it is
    # what a process that has imported TensorFlow uses.)
    script = f"""
import tfkit.records as r, tfkit.records.workers as w
w.start_method = lambda: "forkserver"
r.build_records({str(small_csv)!r}, {str(digits_dir / "images")!r}, {str(tmp_path / "stdin")!r},
                size=32, n_folds=3, workers=2, progress=False)
"""
    proc = subprocess.run([sys.executable, "-"], input=script, text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    build_records(small_csv, digits_dir / "images", tmp_path / "w1", size=32, n_folds=3, workers=1, progress=False)
    assert tree_bytes(tmp_path / "stdin") == tree_bytes(tmp_path / "w1")


def test_building_never_imports_tensorflow(tmp_path: Path) -> None:
    # Workers forked from a process that has imported TensorFlow can deadlock, and each
    # import costs 3-7 s: the package, the builder and the CLI's build path stay free of it.
    d = tmp_path / "img"
    d.mkdir()
    rng = np.random.default_rng(8)
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(d / f"i{k}.png")
    (d / "i4.jpg").write_bytes(jpeg_bytes(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
    pd.DataFrame({"id": [f"i{k}" for k in range(5)], "label": [0, 1, 0, 1, 0]}).to_csv(tmp_path / "c.csv", index=False)
    code = f"""
import sys
import tfkit.records, tfkit.records.builder, tfkit.records.workers, tfkit.records.schemas
from tfkit.records import build_records, crc32c, SIIM_ISIC_2020, parse_shard_name
assert "tensorflow" not in sys.modules, "import"
from tfkit.cli import main
rc = main(["build-records", "--csv", {str(tmp_path / "c.csv")!r}, "--images", {str(d)!r},
           "--out", {str(tmp_path / "out")!r}, "--folds", "2", "--size", "16", "--workers", "2"])
assert rc == 0, rc
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "jax")))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["[]"]
    assert load_manifest(tmp_path / "out")["n_examples"] == 5


# --------------------------------------------------------------------------- formats


def _formats_dir(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Images in many formats; returns the folder and the expected upright RGB pixels."""
    d = tmp_path / "fmt"
    d.mkdir()
    rng = np.random.default_rng(1)
    expected = {}
    smooth = np.zeros((24, 40, 3), np.uint8)
    smooth[:, :20] = (200, 30, 30)
    smooth[:, 20:] = (30, 30, 200)
    Image.fromarray(smooth).save(d / "png_rgb.png")
    expected["png_rgb"] = smooth
    Image.fromarray(smooth).save(d / "bmp.bmp")
    expected["bmp"] = smooth
    gray = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (24, 1))
    Image.fromarray(gray).save(d / "gray.png")
    expected["gray"] = np.repeat(gray[..., None], 3, axis=2)
    rgba = np.concatenate([smooth, rng.integers(0, 256, (24, 40, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba).save(d / "rgba.png")
    expected["rgba"] = smooth  # alpha dropped
    Image.fromarray(smooth).convert("CMYK").save(d / "cmyk.jpg", quality=98)
    expected["cmyk"] = smooth
    g16 = np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (24, 1))
    Image.fromarray(g16).save(d / "g16.png")
    expected["g16"] = np.repeat(np.rint(g16 / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    # EXIF orientation 6 (rotate 90 clockwise to display): wide file, tall upright image
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(smooth).save(d / "exif6.jpg", quality=98, exif=exif.tobytes())
    expected["exif6"] = np.rot90(smooth, k=-1)  # left (red) half ends on top
    return d, expected


def test_formats_decode_upright(tmp_path: Path) -> None:
    d, expected = _formats_dir(tmp_path)
    pd.DataFrame({"id": list(expected), "label": ["a", "b"] * 3 + ["a"]}).to_csv(tmp_path / "f.csv", index=False)
    m = build_records(tmp_path / "f.csv", d, tmp_path / "r", split="test", workers=1, progress=False)
    assert m["image"]["size"] is None  # sizes vary (24x40 and the rotated 40x24)
    assert m["image"]["passed_through"] == 0
    for r in read_all(tmp_path / "r"):
        ident = r["id"].decode()
        want = expected[ident]
        assert r["pixels"].shape == want.shape, ident
        assert np.abs(r["pixels"].astype(int) - want).mean() < 6, ident
    # resized: shorter side to 16 then centre crop, also upright
    build_records(tmp_path / "f.csv", d, tmp_path / "r16", split="test", size=16, workers=2, progress=False)
    rows = {r["id"].decode(): r["pixels"] for r in read_all(tmp_path / "r16")}
    assert all(p.shape == (16, 16, 3) for p in rows.values())
    top, bottom = rows["exif6"][:4].mean(axis=(0, 1)), rows["exif6"][-4:].mean(axis=(0, 1))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]


def test_source_sizes_are_the_files_upright_sizes(tmp_path: Path) -> None:
    # sizes.csv records each file's own size (EXIF orientation applied) whatever is stored:
    # pass-through, re-encoded, resized, and JPEGs decoded at a reduced scale (draft).
    d, _ = _formats_dir(tmp_path)
    rng = np.random.default_rng(12)
    big = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    (d / "big.jpg").write_bytes(jpeg_bytes(big))
    exif = Image.Exif()
    exif[0x0112] = 8
    (d / "big_rot.jpg").write_bytes(jpeg_bytes(big, exif=exif.tobytes()))
    (d / "broken.png").write_bytes(b"not a png")
    want = {i: (24, 40) for i in ("png_rgb", "bmp", "gray", "rgba", "cmyk", "g16")}
    want.update(exif6=(40, 24), big=(120, 200), big_rot=(200, 120))
    ids = [*want, "broken"]
    pd.DataFrame({"id": ids, "label": [k % 2 for k in range(len(ids))]}).to_csv(tmp_path / "f.csv", index=False)
    for size in (None, 16):
        out = tmp_path / f"r{size}"
        build_records(tmp_path / "f.csv", d, out, n_folds=2, size=size, workers=2, skip_bad=True, progress=False)
        sizes = source_sizes(out)
        assert list(sizes.columns) == ["id", "height", "width"]
        assert {r.id: (r.height, r.width) for r in sizes.itertuples()} == want
        assert list(sizes["id"]) == list(pd.read_csv(out / "folds.csv", dtype=str)["id"])  # file order
        stored = {r["id"].decode(): r["pixels"].shape[:2] for r in read_all(out)}
        assert stored["big"] == ((120, 200) if size is None else (16, 16))
    (out / "sizes.csv").unlink()
    with pytest.raises(TfkitError, match="built before tfkit recorded the original image sizes"):
        source_sizes(out)


def test_jpeg_pass_through_is_byte_identical(tmp_path: Path) -> None:
    d = tmp_path / "img"
    d.mkdir()
    rng = np.random.default_rng(2)
    sources = {}
    for k in range(4):
        b = jpeg_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        (d / f"j{k}.jpg").write_bytes(b)
        sources[f"j{k}"] = b
    pd.DataFrame({"id": list(sources), "label": [0, 1, 0, 1]}).to_csv(tmp_path / "c.csv", index=False)
    for size in (None, 32):
        out = tmp_path / f"r{size}"
        m = build_records(tmp_path / "c.csv", d, out, n_folds=2, size=size, workers=1, progress=False)
        assert m["image"]["passed_through"] == 4
        parse = make_parser(m)
        for raw in tf.data.TFRecordDataset(shard_files(out)):
            ex = parse(raw)
            assert ex["image"].numpy() == sources[ex["id"].numpy().decode()]
    m = build_records(tmp_path / "c.csv", d, tmp_path / "r16", n_folds=2, size=16, workers=1, progress=False)
    assert m["image"]["passed_through"] == 0


@pytest.mark.parametrize("verify", ["decode", "markers"])
def test_pass_through_verify_modes_catch_truncation(tmp_path: Path, verify: str) -> None:
    d = tmp_path / "img"
    d.mkdir()
    rng = np.random.default_rng(3)
    good = jpeg_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (d / "ok.jpg").write_bytes(good)
    (d / "cut.jpg").write_bytes(good[: len(good) // 2])  # truncated mid-scan
    pd.DataFrame({"id": ["ok", "cut"], "label": [0, 1]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(TfkitError, match="cut"):
        build_records(tmp_path / "c.csv", d, tmp_path / "r", split="test", verify=verify, workers=1, progress=False)
    assert not (tmp_path / "r").exists()
    m = build_records(tmp_path / "c.csv", d, tmp_path / "r", split="test", verify=verify, skip_bad=True,
                      workers=1, progress=False)
    assert m["image"]["verify"] == verify and m["image"]["passed_through"] == 1
    assert [s["id"] for s in m["skipped"]] == ["cut"]


def test_markers_mode_is_cheaper_but_blind_to_bit_errors_decode_mode_is_not(tmp_path: Path) -> None:
    # What each mode promises: "markers" checks structure only; "decode" reads every byte.
    from tfkit.records import encode_image

    rng = np.random.default_rng(4)
    good = bytearray(jpeg_bytes(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    sos = good.index(b"\xff\xda")
    good[sos + 20: sos + 60] = b"\xff" * 40  # garbage markers inside the entropy-coded data
    path = tmp_path / "bad.jpg"
    path.write_bytes(bytes(good))
    data, h, w, passed = encode_image(str(path), None, 95, verify="markers")
    assert passed and data == bytes(good)
    with pytest.raises(Exception):
        encode_image(str(path), None, 95, verify="decode")


# --------------------------------------------------------------------------- bad input


@pytest.fixture()
def bad_setup(tmp_path: Path, digits_dir: Path):
    """A 12-row train CSV over copied digits; each test breaks one thing."""
    d = tmp_path / "images"
    d.mkdir()
    ids = [f"digit_{k:05d}" for k in range(12)]
    for i in ids:
        shutil.copy(digits_dir / "images" / f"{i}.png", d / f"{i}.png")
    frame = pd.DataFrame({"id": ids, "label": [k % 2 for k in range(12)], "path": [f"{i}.png" for i in ids]})
    return tmp_path, d, frame


def _cli(tmp_path: Path, frame: pd.DataFrame, d: Path, *extra: str) -> int:
    frame.to_csv(tmp_path / "c.csv", index=False)
    return main(["build-records", "--csv", str(tmp_path / "c.csv"), "--images", str(d), "--out",
                 str(tmp_path / "out"), "--folds", "2", "--size", "16", "--workers", "1", *extra])


def _nothing_left(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def _truncated_png(path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 6 // 10])


BAD_CASES = {
    "missing image": (lambda d, f: os.remove(d / "digit_00003.png"), "digit_00003", "not found"),
    "zero-byte": (lambda d, f: open(d / "digit_00004.png", "wb").close(), "digit_00004", "zero-byte"),
    "corrupt": (lambda d, f: _truncated_png(d / "digit_00005.png"), "digit_00005", "corrupt"),
    "non-image": (lambda d, f: (d / "digit_00006.png").write_text("id,label\n1,2\n"), "digit_00006",
                  "not an image"),
    "escape": (lambda d, f: f.__setitem__("path", f["path"].where(f.index != 7, "../c.csv")), "digit_00007",
               "escapes"),
    "symlink outside": (lambda d, f: (os.remove(d / "digit_00008.png"),
                                      os.symlink(d.parent / "c.csv", d / "digit_00008.png")), "digit_00008",
                        "escapes"),
    "missing label": (lambda d, f: f.__setitem__("label", f["label"].astype(str).where(f.index != 9, "")),
                      "digit_00009", "missing label"),
    "duplicate id": (lambda d, f: f.__setitem__("id", f["id"].where(f.index != 10, "digit_00001")),
                     "digit_00001", "duplicate id"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_fails_cleanly_or_is_skipped(case: str, bad_setup, capsys: pytest.CaptureFixture) -> None:
    tmp_path, d, frame = bad_setup
    breaker, ident, words = BAD_CASES[case]
    breaker(d, frame)
    assert _cli(tmp_path, frame, d, "--path-col", "path") == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and err[0].startswith("tfkit: error: c.csv line"), err
    assert ident in err[0] and words in err[0], err
    _nothing_left(tmp_path)
    assert _cli(tmp_path, frame, d, "--path-col", "path", "--skip-bad") == 0
    m = load_manifest(tmp_path / "out")
    assert len(m["skipped"]) == 1 and words in m["skipped"][0]["reason"]
    assert m["n_examples"] == 11 == len(read_all(tmp_path / "out"))
    assert len(pd.read_csv(tmp_path / "out" / "folds.csv")) == 11


def test_lookup_by_id_and_extension(bad_setup, capsys) -> None:
    tmp_path, d, frame = bad_setup
    Image.open(d / "digit_00002.png").convert("RGB").save(d / "digit_00002.bmp")
    os.remove(d / "digit_00002.png")
    os.remove(d / "digit_00011.png")
    assert _cli(tmp_path, frame.drop(columns="path"), d) == 2
    err = capsys.readouterr().err
    assert "digit_00011" in err and "no image named" in err
    _nothing_left(tmp_path)
    assert _cli(tmp_path, frame.drop(columns="path").head(11), d) == 0
    assert load_manifest(tmp_path / "out")["n_examples"] == 11


def test_missing_column_unknown_class_and_non_empty_out(bad_setup, digits_records: Path, capsys) -> None:
    tmp_path, d, frame = bad_setup
    assert _cli(tmp_path, frame.drop(columns="label"), d) == 2
    assert "no column(s) 'label'" in capsys.readouterr().err
    _nothing_left(tmp_path)
    test = frame.assign(label=frame["label"].astype(str).where(frame.index != 4, "cat"))
    test.to_csv(tmp_path / "t.csv", index=False)
    args = ["build-records", "--csv", str(tmp_path / "t.csv"), "--images", str(d), "--out", str(tmp_path / "out"),
            "--split", "test", "--classes-from", str(digits_records / "manifest.json"), "--workers", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown class 'cat'" in err and "digit_00004" in err and "line 6" in err
    _nothing_left(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    assert _cli(tmp_path, frame, d) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "out" / "keep.txt").exists()
    assert _cli(tmp_path, frame, d, "--overwrite") == 0
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "manifest.json").exists()


def test_killed_build_leaves_nothing_complete_and_rerun_succeeds(digits_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "records"
    cmd = [sys.executable, "-m", "tfkit", "build-records", "--csv", str(digits_dir / "train.csv"), "--images",
           str(digits_dir / "images"), "--out", str(out), "--size", "96", "--workers", "1", "--shard-size", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:  # kill once the first shard is complete
        if any(p.name.endswith(".tfrec") for t in tmp_path.glob(".records.tmp-*") for p in t.iterdir()):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert [p.name.startswith(".records.tmp-") for p in tmp_path.iterdir()] == [True]
    subprocess.run(cmd[:-4] + ["--size", "16"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert load_manifest(out)["n_examples"] == 1437
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records"]  # stale temp folder removed


# --------------------------------------------------------------------------- other schemas


def test_siim_isic_2020_mapping(tmp_path: Path) -> None:
    img = jpeg_bytes(np.full((8, 8, 3), 120, np.uint8))

    def ex(name: str, target: int | None) -> bytes:
        f = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[img])),
            "image_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
            "patient_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[1234])),
            "sex": tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
            "age_approx": tf.train.Feature(int64_list=tf.train.Int64List(value=[45])),
            "anatom_site_general_challenge": tf.train.Feature(int64_list=tf.train.Int64List(value=[2])),
            "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[8])),
            "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[8])),
        }
        if target is not None:
            f["target"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[target]))
            f["diagnosis"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[3]))
        return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()

    with tf.io.TFRecordWriter(str(tmp_path / "train00-2.tfrec")) as w:
        w.write(ex("ISIC_0015719", 1))
        w.write(ex("ISIC_0052212", 0))
    with tf.io.TFRecordWriter(str(tmp_path / "test00-1.tfrec")) as w:
        w.write(ex("ISIC_0052060", None))
    assert count_from_names(shard_files(tmp_path, split="train")) == 2
    train = read_all(tmp_path, SIIM_ISIC_2020, shard_files(tmp_path, split="train"))
    assert [r["id"] for r in train] == [b"ISIC_0015719", b"ISIC_0052212"] and [r["label"] for r in train] == [1, 0]
    assert train[0]["group"] == b"1234" and train[0]["fold"] == -1 and train[0]["pixels"].shape == (8, 8, 3)
    assert train[0]["meta"]["age_approx"].dtype == np.float32 and train[0]["meta"]["age_approx"] == 45.0
    assert train[0]["meta"]["sex"] == 1 and train[0]["meta"]["anatom_site_general_challenge"] == 2
    test = read_all(tmp_path, SIIM_ISIC_2020, shard_files(tmp_path, split="test"))
    assert test[0]["label"] == -1 and test[0]["id"] == b"ISIC_0052060"


def test_many_classes_are_stratified_as_classes_not_binned(tmp_path: Path) -> None:
    # 60 classes x 5 images, 5 folds: every class must land once in every fold
    # (with > 50 distinct integer labels, plain assign_folds would bin them as a numeric target).
    d = tmp_path / "img"
    d.mkdir()
    rng = np.random.default_rng(5)
    ids, labels = [], []
    for c in range(60):
        for r in range(5):
            i = f"c{c:02d}_{r}"
            (d / f"{i}.jpg").write_bytes(jpeg_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
            ids.append(i)
            labels.append(f"class{c:02d}")
    pd.DataFrame({"id": ids, "label": labels}).to_csv(tmp_path / "c.csv", index=False)
    build_records(tmp_path / "c.csv", d, tmp_path / "r", n_folds=5, workers=1, progress=False)
    folds = pd.read_csv(tmp_path / "r" / "folds.csv", dtype={"id": str})
    folds["label"] = folds["id"].str[:3]
    per = folds.groupby(["label", "fold"]).size().unstack(fill_value=0)
    assert per.shape == (60, 5) and (per.to_numpy() == 1).all()


# --------------------------------------------------------------------------- fast pass-through path

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tfkit.records import (  # noqa: E402
    CRC32C_BACKENDS,
    crc32c_backend,
    image_record,
    jpeg_header,
    passes_through,
    tfrecord_frame,
    use_crc32c_backend,
)
from tfkit.records.checksum import crc32c_numpy  # noqa: E402


def _loaded_backends() -> dict:
    return {name: fn for name, load in CRC32C_BACKENDS.items() if (fn := load()) is not None}


def test_tensorflow_crc32c_loads_without_importing_tensorflow_python() -> None:
    # The default install (no google-crc32c) relies on it: it must load on Linux x86-64,
    # in a process that has not imported TensorFlow, and print nothing.
    if not (sys.platform == "linux" and os.uname().machine == "x86_64"):
        pytest.skip("TensorFlow's bundled CRC32C is only used on Linux x86-64")  # pragma: no cover
    code = ("import sys; from tfkit.records import crc32c_backend, crc32c; b = crc32c_backend(); "
            "print(b, hex(crc32c(b'123456789')), 'tensorflow' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TFKIT_CRC32C": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tensorflow", "0xe3069283", "False"]
    assert r.stderr == ""  # TF's start-up banners are silenced while its library loads


@settings(max_examples=60, deadline=None)
@given(a=st.binary(max_size=3000), b=st.binary(max_size=3000))
def test_crc32c_backends_agree_and_continue(a: bytes, b: bytes) -> None:
    backends = _loaded_backends()
    assert {"numpy", "tensorflow"} <= set(backends) or sys.platform != "linux"
    want = crc32c_numpy(a + b)
    for name, fn in backends.items():
        assert fn(a + b, 0) == want, name
        assert fn(b, fn(a, 0)) == want, name  # continuation: crc(b, crc(a)) == crc(a + b)


@settings(max_examples=40, deadline=None)
@given(image=st.binary(max_size=400), h=st.integers(0, 70000), w=st.integers(0, 70000),
       ident=st.text(max_size=20), label=st.integers(-1, 300))
def test_image_record_equals_the_reference_framing(image: bytes, h: int, w: int, ident: str, label: int) -> None:
    entries = feature_entry("id", ident) + feature_entry("label", label)
    want = tfrecord_frame(example_from_entries(
        entries + feature_entry("image", image) + feature_entry("height", h) + feature_entry("width", w)))
    assert image_record(entries, image, h, w) == want


def test_image_record_reads_back_in_tensorflow(tmp_path: Path) -> None:
    img = jpeg_bytes(np.full((5, 7, 3), 90, np.uint8))
    path = tmp_path / "one.tfrec"
    path.write_bytes(image_record(feature_entry("id", "x"), img, 5, 7) * 2)
    got = list(tf.data.TFRecordDataset(str(path)))  # TF verifies both CRCs of each record
    ex = tf.io.parse_single_example(got[1], {"image": tf.io.FixedLenFeature([], tf.string),
                                             "height": tf.io.FixedLenFeature([], tf.int64),
                                             "id": tf.io.FixedLenFeature([], tf.string)})
    assert len(got) == 2 and ex["image"].numpy() == img and int(ex["height"]) == 5 and ex["id"].numpy() == b"x"


def _jpeg_variants() -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (20, 36, 3), dtype=np.uint8)
    out = {"baseline": jpeg_bytes(rgb), "progressive": jpeg_bytes(rgb, progressive=True),
           "gray": jpeg_bytes(rgb[..., 0]), "subsampled": jpeg_bytes(rgb, subsampling=2)}
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG")
    out["cmyk"] = buf.getvalue()
    for o in (1, 3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = o
        exif[0x010F] = "tfkit test camera"
        out[f"exif{o}"] = jpeg_bytes(rgb, exif=exif.tobytes())
    return out


@pytest.mark.parametrize("name", list(_jpeg_variants()))
def test_jpeg_header_agrees_with_pillow(name: str) -> None:
    raw = _jpeg_variants()[name]
    img = Image.open(io.BytesIO(raw))
    header = jpeg_header(raw)
    assert (header.width, header.height) == img.size
    assert header.components == {"RGB": 3, "L": 1, "CMYK": 4}[img.mode]
    assert header.orientation == img.getexif().get(0x0112)
    assert header.sof == (0xC2 if name == "progressive" else 0xC0) and header.precision == 8
    # the pass-through rule: 8-bit 3-channel, upright, of the wanted size
    upright_rgb = img.mode == "RGB" and img.getexif().get(0x0112, 1) == 1
    assert passes_through(header, None) == upright_rgb
    assert passes_through(header, 20) is False and passes_through(header, 36) is False


@settings(max_examples=80, deadline=None)
@given(cut=st.integers(0, 400))
def test_jpeg_header_of_a_file_cut_in_its_headers_is_none(cut: int) -> None:
    raw = _jpeg_variants()["exif6"]
    sos = raw.index(b"\xff\xda")
    assert jpeg_header(raw[: min(cut, sos)]) is None  # cut anywhere before the start of scan
    assert jpeg_header(b"\x89PNG\r\n\x1a\n" + raw[2:]) is None


def test_shard_bytes_do_not_depend_on_the_crc_backend(tmp_path: Path) -> None:
    d = tmp_path / "img"
    d.mkdir()
    rng = np.random.default_rng(6)
    for k in range(6):
        (d / f"j{k}.jpg").write_bytes(jpeg_bytes(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
    pd.DataFrame({"id": [f"j{k}" for k in range(6)], "label": [0, 1] * 3}).to_csv(tmp_path / "c.csv", index=False)
    trees = {}
    before = use_crc32c_backend(None)
    try:
        for name in _loaded_backends():
            use_crc32c_backend(name)
            assert crc32c_backend() == name
            build_records(tmp_path / "c.csv", d, tmp_path / name, n_folds=2, workers=1, progress=False)
            trees[name] = tree_bytes(tmp_path / name)
    finally:
        use_crc32c_backend(before)
    first = next(iter(trees.values()))
    assert len(trees) >= 2 and all(t == first for t in trees.values())


def test_mixed_pass_through_and_re_encode_same_bytes_for_any_workers_and_verify(tmp_path: Path) -> None:
    # JPEGs passed through by the reading thread, PNGs and a rotated JPEG re-encoded by
    # worker processes, bad files skipped: output order and bytes must not depend on workers.
    d = tmp_path / "img"
    d.mkdir()
    rng = np.random.default_rng(7)
    ids = []
    for k in range(40):
        arr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        ident = f"im{k:02d}"
        if k % 3 == 0:
            Image.fromarray(arr).save(d / f"{ident}.png")
        elif k == 4:
            exif = Image.Exif()
            exif[0x0112] = 3
            (d / f"{ident}.jpg").write_bytes(jpeg_bytes(arr, exif=exif.tobytes()))
        elif k == 5:
            (d / f"{ident}.jpg").write_bytes(jpeg_bytes(arr)[:200])  # truncated
        else:
            (d / f"{ident}.jpg").write_bytes(jpeg_bytes(arr))
        ids.append(ident)
    pd.DataFrame({"id": ids, "label": [k % 2 for k in range(40)]}).to_csv(tmp_path / "c.csv", index=False)
    trees = []
    for verify in ("decode", "markers"):
        for workers in (1, 2, 3):
            out = tmp_path / f"{verify}{workers}"
            m = build_records(tmp_path / "c.csv", d, out, n_folds=3, shard_size=5, workers=workers,
                              verify=verify, skip_bad=True, progress=False)
            assert [s["id"] for s in m["skipped"]] == ["im05"]
            assert m["image"]["passed_through"] == 40 - 14 - 1 - 1  # 14 PNGs, the rotated and the cut JPEG
            trees.append(tree_bytes(out))
    assert all(t == trees[0] for t in trees[1:3]) and all(t == trees[3] for t in trees[4:])
    assert {k: v for k, v in trees[0].items() if k.endswith(".tfrec")} == \
        {k: v for k, v in trees[3].items() if k.endswith(".tfrec")}
    rows = read_all(tmp_path / "decode1")
    assert sorted(r["id"].decode() for r in rows) == sorted(set(ids) - {"im05"})


def test_skip_bad_folds_and_bytes_equal_a_build_without_the_bad_rows(tmp_path: Path) -> None:
    # Unreadable images are only found while reading; the folds (and metadata statistics)
    # must still be balanced over the rows actually written, as if the CSV never had them.
    from tfkit.folds import assign_folds

    d = tmp_path / "img"
    d.mkdir()
    rng = np.random.default_rng(11)
    n = 48
    ids = [f"im{k:02d}" for k in range(n)]
    for ident in ids:
        (d / f"{ident}.jpg").write_bytes(jpeg_bytes(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
    bad_ids = {"im03": b"", "im17": b"not a jpeg at all", "im30": (d / "im30.jpg").read_bytes()[:150]}
    for ident, data in bad_ids.items():
        (d / f"{ident}.jpg").write_bytes(data)
    frame = pd.DataFrame({
        "id": ids,
        "label": [int(k % 7 == 0) for k in range(n)],
        "patient": [f"p{k // 3 if k < 24 else k}" for k in range(n)],  # groups of 3, then singletons
        "age": [str(20 + k) for k in range(n)],
        "site": ["only_in_a_bad_row" if k == 17 else "ab"[k % 2] for k in range(n)],
    })
    clean = frame[~frame["id"].isin(bad_ids)]
    # Meaningful only if the folds of a first pass (which knows of the zero-byte file
    # only: its size is seen before reading) differ from those without all three rows.
    first = frame[frame["id"] != "im03"].reset_index(drop=True)
    first_folds = np.asarray(assign_folds(first, 4, "label", "patient", seed=5, n_bins=0))
    clean_folds = np.asarray(assign_folds(clean.reset_index(drop=True), 4, "label", "patient", seed=5, n_bins=0))
    assert list(first_folds[~first["id"].isin(bad_ids).to_numpy()]) != list(clean_folds)

    frame.to_csv(tmp_path / "all.csv", index=False)
    clean.to_csv(tmp_path / "clean.csv", index=False)
    kw = dict(group_col="patient", meta_cols=["age", "site"], n_folds=4, seed=5, shard_size=7, progress=False)
    for workers in (1, 2):
        m = build_records(tmp_path / "all.csv", d, tmp_path / f"skip{workers}", skip_bad=True, workers=workers, **kw)
        assert sorted(s["id"] for s in m["skipped"]) == sorted(bad_ids)
        assert [s["row"] for s in m["skipped"]] == [3, 17, 30]  # rows of the original CSV
    ref = build_records(tmp_path / "clean.csv", d, tmp_path / "clean", **kw)
    assert m["metadata"] == ref["metadata"] and "only_in_a_bad_row" not in m["metadata"]["site"]["vocab"]
    assert m["shards"] == ref["shards"]
    for workers in (1, 2):
        got = tree_bytes(tmp_path / f"skip{workers}")
        want = tree_bytes(tmp_path / "clean")
        assert {k: v for k, v in got.items() if k != "manifest.json"} == \
            {k: v for k, v in want.items() if k != "manifest.json"}
