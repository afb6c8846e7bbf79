"""Provenance records: a CSV is recognised as the synthetic sample only when it is one, byte
for byte; the canonical FER2013 by its size; prepared folders report their CSV."""

from __future__ import annotations

import json

from fertool.data.provenance import SYNTHETIC, csv_provenance, describe, images_provenance, is_synthetic
from fertool.data.sample import generate_sample
from fertool.files import sha256_file


def test_a_generated_sample_is_recognised_by_its_bytes(tmp_path):
    path = generate_sample(tmp_path / "s.csv", per_class=2, seed=3)
    record = csv_provenance(path, sample_seeds=(3,))
    assert record == {"kind": SYNTHETIC, "source": "s.csv", "sha256": sha256_file(path), "rows": 28}
    assert is_synthetic(record) and "synthetic sample (s.csv, sha256 " in describe(record)
    # Another seed than the ones tried, or one changed pixel: not recognised.
    assert csv_provenance(path, sample_seeds=(0,))["kind"] == "CSV"
    header, first, rest = path.read_text().split("\n", 2)
    label, pixels, usage = first.split(",")
    values = pixels.split()
    values[0] = str((int(values[0]) + 1) % 256)
    changed = tmp_path / "changed.csv"
    changed.write_text("\n".join([header, f"{label},{' '.join(values)},{usage}", rest]))
    assert csv_provenance(changed, sample_seeds=(3,))["kind"] == "CSV"


def test_fer2013_is_named_by_its_row_count(tmp_path):
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,pixels,Usage\n" + "0,0,Training\n" * 35_887)
    assert csv_provenance(path)["kind"] == "FER2013"
    path.write_text("emotion,pixels,Usage\n" + "0,0,Training\n" * 35_886)
    assert csv_provenance(path)["kind"] == "CSV"


def test_a_prepared_folder_reports_its_csv_and_a_plain_folder_has_no_hash(tmp_path):
    csv = generate_sample(tmp_path / "sample.csv", per_class=1, seed=0)
    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / "prepare.json").write_text(
        json.dumps({"source": {"csv": str(csv), "sha256": sha256_file(csv), "data_rows": 21}})
    )
    assert images_provenance(folder) == csv_provenance(csv)
    assert images_provenance(tmp_path) == {
        "kind": "image folder",
        "source": tmp_path.name,
        "sha256": None,
        "rows": None,
    }
    assert not is_synthetic(None) and describe(None).startswith("unknown")
