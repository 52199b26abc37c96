"""Generic CSV/TSV/JSONL image–caption readers."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from unimlip_kit.data import ImageTextDataset, SkipCounter, read_csv_pairs, read_jsonl_pairs, read_pairs


def _img(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (6, 5), 77).save(p)


def test_csv_relative_paths_and_columns(tmp_path: Path) -> None:
    _img(tmp_path / "imgs" / "a.png")
    _img(tmp_path / "imgs" / "b.png")
    table = tmp_path / "meta" / "pairs.csv"
    table.parent.mkdir()
    table.write_text(
        "uid,path,report,dx,mod\n"
        'p1,../imgs/a.png,"Chest X-ray, normal.",normal,xray\n'
        "p2,../imgs/b.png,Brain MRI.,tumour,\n"
        "p3,../imgs/zz.png,Missing file.,normal,ct\n"
        "p4,../imgs/a.png,,normal,ct\n"
    )
    skips = SkipCounter()
    recs = read_csv_pairs(
        table, image_column="path", caption_column="report", id_column="uid",
        label_column="dx", modality_column="mod", skips=skips,
    )
    assert [r.id for r in recs] == ["p1", "p2"]
    assert recs[0].image_path.resolve() == (tmp_path / "imgs" / "a.png").resolve()
    assert recs[0].caption == "Chest X-ray, normal."
    assert [r.label for r in recs] == [0, 1] and recs[1].meta["label_name"] == "tumour"
    assert [r.modality for r in recs] == ["xray", "mri"]  # empty column -> inferred from caption
    assert skips.counts() == {"empty_caption": 1, "missing_image": 1}
    ds = ImageTextDataset(recs, image_size=8, resize="stretch")
    assert abs(float(ds[0]["image"].mean()) - 77 / 255) < 1e-6


def test_tsv_and_image_root(tmp_path: Path) -> None:
    _img(tmp_path / "root" / "x.png")
    t = tmp_path / "p.tsv"
    t.write_text("image\tcaption\tlabel\nx.png\tCT, with a comma.\t3\n")
    recs = read_pairs(t, image_root=tmp_path / "root", label_column="label")
    assert len(recs) == 1 and recs[0].caption == "CT, with a comma." and recs[0].label == 3
    assert recs[0].id == "p:0"


def test_jsonl_bad_lines_and_duplicates(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    rows = [
        {"id": "1", "file": "a.png", "text": "Ultrasound."},
        {"id": "1", "file": "a.png", "text": "Duplicate id."},
        {"id": "2", "text": "No image column."},
        [1, 2],
    ]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    skips = SkipCounter()
    recs = read_jsonl_pairs(p, image_column="file", caption_column="text", id_column="id", skips=skips)
    assert [r.id for r in recs] == ["1"] and recs[0].modality == "ultrasound"
    assert skips.counts() == {"bad_row": 3, "duplicate_id": 1}
    assert [r.id for r in read_pairs(p, image_column="file", caption_column="text", id_column="id")] == ["1"]
