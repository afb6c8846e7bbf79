"""FER2013 CSV reading: variants, streaming, validation messages, split loading."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fertool.data.csv import (
    SPLITS,
    BadRow,
    _parse_pixels_fast,
    _parse_pixels_slow,
    detect_format,
    iter_rows,
    load_split,
)
from fertool.errors import DataError

HEADERS = {
    "fer2013": ["emotion", "pixels", "Usage"],
    "icml": ["emotion", " Usage", " pixels"],
    "train": ["emotion", "pixels"],
}


def pixel_text(image: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in image.ravel())


def make_rows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, 7, n)
    usages = [SPLITS[i % 3] for i in range(n)]
    return images, labels, usages


def write_csv(path, fmt: str, images, labels, usages, *, newline="\n", prefix="") -> None:
    header = HEADERS[fmt]
    lines = [prefix + ",".join(header)]
    for image, label, usage in zip(images, labels, usages):
        fields = {"emotion": str(label), "pixels": pixel_text(image), "usage": usage}
        lines.append(",".join(fields[h.strip().lower()] for h in header))
    path.write_text(newline.join(lines) + newline, encoding="utf-8")


# --------------------------------------------------------------------------- header


def test_detect_format_variants():
    assert detect_format(["emotion", "pixels", "Usage"]) == "fer2013"
    assert detect_format(["emotion", " Usage", " pixels"]) == "icml"
    assert detect_format(["emotion", "pixels"]) == "train"


def test_test_csv_is_refused_with_a_clear_message():
    with pytest.raises(DataError, match="test.csv.*no labels"):
        detect_format(["pixels"], source="test.csv")


@pytest.mark.parametrize(
    "header, problem",
    [
        (["id", "image"], "unexpected columns 'id', 'image'"),
        (["emotion", "Usage"], "missing column 'pixels'"),
        (["emotion", "pixels", "Usage", "extra"], "unexpected column 'extra'"),
        (["emotion", "pixels", "pixels"], "duplicate column 'pixels'"),
    ],
)
def test_unknown_header_names_what_was_found_and_expected(header, problem):
    with pytest.raises(DataError) as info:
        detect_format(header, source="x.csv")
    message = str(info.value)
    assert message.startswith("x.csv:1: ")
    assert f"header '{','.join(header)}'" in message and problem in message
    assert "'emotion,pixels,Usage' (fer2013.csv)" in message and "(train.csv)" in message


# --------------------------------------------------------------------------- variants


@pytest.mark.parametrize("fmt", ["fer2013", "icml", "train"])
def test_every_variant_reads_back_exactly(tmp_path, fmt):
    images, labels, usages = make_rows(7)
    path = tmp_path / f"{fmt}.csv"
    write_csv(path, fmt, images, labels, usages)
    rows = list(iter_rows(path))
    assert [r.row for r in rows] == list(range(7))
    assert [r.line for r in rows] == list(range(2, 9))
    assert [r.label for r in rows] == labels.tolist()
    expected_usage = ["Training"] * 7 if fmt == "train" else usages
    assert [r.usage for r in rows] == expected_usage
    for r, image in zip(rows, images):
        assert r.pixels.dtype == np.uint8 and r.pixels.shape == (48, 48)
        np.testing.assert_array_equal(r.pixels, image)


def test_crlf_bom_quotes_blank_lines_and_spaces(tmp_path):
    images, labels, usages = make_rows(3)
    path = tmp_path / "odd.csv"
    lines = [
        "\ufeffemotion,pixels,Usage",
        f'{labels[0]},"{pixel_text(images[0])}",{usages[0]}',
        "",
        f" {labels[1]} , {pixel_text(images[1])} , {usages[1]} ",
        f"{labels[2]},{pixel_text(images[2]).replace(' ', chr(9))},{usages[2]}",  # tabs: slow path
    ]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    rows = list(iter_rows(path))
    assert [r.row for r in rows] == [0, 1, 2]  # the blank line is not a row
    assert [r.line for r in rows] == [2, 4, 5]
    for r, image in zip(rows, images):
        np.testing.assert_array_equal(r.pixels, image)


def test_fast_parser_agrees_with_slow_parser():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (20, 2304))
    images[0, :5] = [0, 9, 10, 99, 255]  # every digit count
    fields = [" ".join(map(str, im)).encode() for im in images]
    fields[3] = b"  " + fields[3].replace(b" ", b"   ") + b" "  # extra spaces are fine
    fields[5] = b"007 " + b" ".join([b"1"] * 2303)  # leading zeros: 3 digits -> 7
    fields[6] = b"0255 " + b" ".join([b"1"] * 2303)  # 4 digits: only the slow path decides
    values, ok = _parse_pixels_fast(fields)
    assert ok.tolist() == [True] * 6 + [False] + [True] * 13
    for i in np.flatnonzero(ok):
        slow, problem = _parse_pixels_slow(fields[i])
        assert problem is None
        np.testing.assert_array_equal(values[i], slow)
    np.testing.assert_array_equal(values[0], images[0])
    assert values[5][0] == 7
    slow, problem = _parse_pixels_slow(fields[6])
    assert problem is None and slow[0] == 255


def test_iter_rows_streams(tmp_path):
    images, labels, usages = make_rows(600)
    path = tmp_path / "big.csv"
    write_csv(path, "fer2013", images, labels, usages)
    with path.open("a") as fh:
        fh.write("9,1 2 3,Training\n")  # bad last row
    rows = iter_rows(path)
    first = next(rows)  # rows arrive before the end of the file is read
    assert first.row == 0
    with pytest.raises(DataError, match=rf"{path}:602: "):
        list(rows)


# --------------------------------------------------------------------------- bad input

GOOD = " ".join(["128"] * 2304)


@pytest.mark.parametrize(
    "line, problem",
    [
        ("0," + " ".join(["1"] * 2303) + ",Training", "expected 2304 pixel values (48x48), got 2303"),
        ("0," + " ".join(["1"] * 2305) + ",Training", "expected 2304 pixel values (48x48), got 2305"),
        ("0," + GOOD.replace("128", "12a", 1) + ",Training", "pixel 1 is not an integer: '12a'"),
        ("0," + GOOD.replace("128", "1.5", 1) + ",Training", "pixel 1 is not an integer: '1.5'"),
        ("0,1 " + GOOD[4:].replace("128", "256", 1) + ",Training", "pixel 2 out of range 0..255: 256"),
        ("0," + GOOD.replace("128", "-1", 1) + ",Training", "pixel 1 out of range 0..255: -1"),
        (
            "0," + GOOD.replace("128", "999", 2) + ",Training",
            "pixel 1 out of range 0..255: 999 (and 1 more bad pixel values)",
        ),
        ("7," + GOOD + ",Training", "unknown emotion label 7 (expected 0..6: Anger, Disgust,"),
        ("happy," + GOOD + ",Training", "emotion label 'happy' is not an integer 0..6"),
        ("," + GOOD + ",Training", "empty emotion label"),
        ("0," + GOOD + ",Validation", "unknown Usage 'Validation' (expected Training, PublicTest, PrivateTest)"),
        ("0," + GOOD, "expected 3 fields (emotion,pixels,Usage), got 2"),
    ],
)
def test_bad_rows_name_file_line_and_problem(tmp_path, line, problem):
    images, labels, usages = make_rows(2)
    path = tmp_path / "bad.csv"
    write_csv(path, "fer2013", images, labels, usages)
    with path.open("a") as fh:
        fh.write(line + "\n")
    with pytest.raises(DataError) as info:
        list(iter_rows(path))
    assert str(info.value).startswith(f"{path}:4: {problem}")
    # collected instead of raised
    bad: list[BadRow] = []
    rows = list(iter_rows(path, bad=bad))
    assert [r.row for r in rows] == [0, 1]
    assert len(bad) == 1 and bad[0].row == 2 and bad[0].line == 4 and bad[0].problem.startswith(problem)
    assert [r.row for r in iter_rows(path, skip_bad=True)] == [0, 1]


def test_every_bad_row_is_collected_in_order(tmp_path):
    images, labels, usages = make_rows(5)
    labels[1], labels[3] = 9, 8
    path = tmp_path / "two_bad.csv"
    write_csv(path, "fer2013", images, labels, usages)
    bad: list[BadRow] = []
    rows = list(iter_rows(path, bad=bad))
    assert [r.row for r in rows] == [0, 2, 4]
    assert [(b.row, b.line) for b in bad] == [(1, 3), (3, 5)]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("", "empty file (no header, no data)"),
        ("emotion,pixels,Usage\n", "no data rows after the header (line 1)"),
        ("emotion,Usage\n0,Training\n", "missing column 'pixels'"),
        ("\nemotion,pixels,Usage\n", "empty first line"),
    ],
)
def test_empty_file_and_missing_columns(tmp_path, content, problem):
    path = tmp_path / "x.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(problem)) as info:
        list(iter_rows(path))
    assert str(info.value).startswith(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(iter_rows(tmp_path / "nope.csv"))


# --------------------------------------------------------------------------- load_split


def test_load_split_returns_that_split_in_file_order(tmp_path):
    images, labels, usages = make_rows(40)
    path = tmp_path / "fer.csv"
    write_csv(path, "icml", images, labels, usages)
    for split in SPLITS:
        arrays = load_split(path, split)
        mask = np.array([u == split for u in usages])
        assert arrays.images.dtype == np.uint8 and arrays.images.shape == (mask.sum(), 48, 48)
        assert arrays.labels.dtype == np.int64 and arrays.rows.dtype == np.int64
        np.testing.assert_array_equal(arrays.images, images[mask])
        np.testing.assert_array_equal(arrays.labels, labels[mask])
        np.testing.assert_array_equal(arrays.rows, np.flatnonzero(mask))


def test_load_split_absent_lists_the_splits_present(tmp_path):
    images, labels, _ = make_rows(4)
    path = tmp_path / "train.csv"
    write_csv(path, "train", images, labels, ["Training"] * 4)
    assert len(load_split(path, "Training").labels) == 4
    with pytest.raises(
        DataError, match=r"split 'PrivateTest' is absent or empty \(splits present: Training \(4 rows\)\)"
    ):
        load_split(path, "PrivateTest")
    with pytest.raises(DataError, match="unknown split 'Test'"):
        load_split(path, "Test")


def test_load_split_reports_bad_rows_of_that_split_only(tmp_path):
    images, labels, usages = make_rows(6)  # usages cycle Training, PublicTest, PrivateTest
    labels[0] = 9  # a bad Training row
    path = tmp_path / "fer.csv"
    write_csv(path, "fer2013", images, labels, usages)
    assert load_split(path, "PrivateTest").rows.tolist() == [2, 5]
    with pytest.raises(DataError, match=rf"1 bad row .*\n{path}:2: unknown emotion label 9"):
        load_split(path, "Training")
    assert load_split(path, "Training", skip_bad=True).rows.tolist() == [3]


# --------------------------------------------------------------------------- line endings, compression, escaping


@pytest.mark.parametrize("newline", ["\r", "\r\n"])
def test_cr_only_and_crlf_files_read_like_lf(tmp_path, newline):
    images, labels, usages = make_rows(5)
    write_csv(tmp_path / "lf.csv", "fer2013", images, labels, usages)
    write_csv(tmp_path / "other.csv", "fer2013", images, labels, usages, newline=newline)
    a, b = list(iter_rows(tmp_path / "lf.csv")), list(iter_rows(tmp_path / "other.csv"))
    assert [(r.row, r.line, r.label, r.usage) for r in a] == [(r.row, r.line, r.label, r.usage) for r in b]
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a, b))
    assert np.array_equal(load_split(tmp_path / "other.csv", "Training").images, images[0::3])


def test_cr_only_bad_rows_are_located_by_line(tmp_path):
    images, labels, usages = make_rows(3)
    write_csv(tmp_path / "x.csv", "fer2013", images, labels, usages, newline="\r")
    data = (tmp_path / "x.csv").read_bytes().replace(b",Training\r", b",Trianing\r", 1)
    (tmp_path / "x.csv").write_bytes(data)
    with pytest.raises(DataError, match=r"x.csv:2: unknown Usage 'Trianing'"):
        list(iter_rows(tmp_path / "x.csv"))


@pytest.mark.parametrize(
    "kind,magic", [("gzip", None), ("zip", b"PK\x03\x04"), ("bzip2", b"BZh9"), ("xz", b"\xfd7zXZ\x00")]
)
def test_compressed_files_are_refused_with_the_way_out(tmp_path, kind, magic):
    import gzip

    images, labels, usages = make_rows(2)
    write_csv(tmp_path / "x.csv", "fer2013", images, labels, usages)
    packed = tmp_path / "x.csv.packed"
    data = (tmp_path / "x.csv").read_bytes()
    packed.write_bytes(gzip.compress(data) if magic is None else magic + data)
    with pytest.raises(DataError, match=rf"x.csv.packed: is .*{kind}.*, not a CSV; decompress it first") as info:
        list(iter_rows(packed))
    assert str(info.value).count("\n") == 0


def test_untrusted_text_is_escaped_in_messages(tmp_path):
    images, labels, usages = make_rows(1)
    write_csv(tmp_path / "x.csv", "fer2013", images, labels, usages)
    text = (tmp_path / "x.csv").read_bytes()
    (tmp_path / "h.csv").write_bytes(text.replace(b"Usage", b"Us\x1b[2Jage", 1))
    with pytest.raises(DataError) as info:
        list(iter_rows(tmp_path / "h.csv"))
    assert "\x1b" not in str(info.value) and "Us\\x1b[2Jage" in str(info.value)
    (tmp_path / "u.csv").write_bytes(text.replace(b",Training", b",Tr\x1b]0;x\x07", 1))
    with pytest.raises(DataError) as info:
        list(iter_rows(tmp_path / "u.csv"))
    assert "Tr\\x1b]0;x\\x07" in str(info.value)
    (tmp_path / "l.csv").write_bytes(text.replace(b"\n" + str(labels[0]).encode(), b"\n\x1b[1m", 1))
    with pytest.raises(DataError) as info:
        list(iter_rows(tmp_path / "l.csv"))
    assert "'\\x1b[1m' is not an integer" in str(info.value)
