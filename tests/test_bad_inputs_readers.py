"""Caption tables and ROCO folders as real files are written: BOM, CRLF, lone CR, tabs and quotes inside fields,
odd ids and labels, a bad metadata line. Nothing is lost or changed without a count.

The reference is the data the test wrote: every row's id, caption and label are compared with what was written
(captions whitespace-normalised, as the readers document).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from unimlip_kit.data import SkipCounter, read_csv_pairs, read_jsonl_pairs, read_pairs, read_roco
from unimlip_kit.data.textfile import parse_label, read_text_lines


def _img(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), 9).save(p)
    return p


def _norm(s: str) -> str:
    return " ".join(s.split())


# ------------------------------------------------------------------ byte-order mark


def test_csv_with_a_utf8_bom_reads_every_row(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    (tmp_path / "t.csv").write_bytes("\ufeffimage,caption\r\na.png,Chest X-ray.\r\na.png,Knee MRI.\r\n".encode("utf-8"))
    recs = read_csv_pairs(tmp_path / "t.csv")
    assert [r.caption for r in recs] == ["Chest X-ray.", "Knee MRI."]


def test_jsonl_with_a_utf8_bom_keeps_its_first_pair(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    body = "\n".join(json.dumps({"id": f"x{i}", "image": "a.png", "caption": f"CT {i}."}) for i in range(3))
    (tmp_path / "t.jsonl").write_bytes(("\ufeff" + body + "\n").encode("utf-8"))
    c = SkipCounter()
    assert [r.id for r in read_jsonl_pairs(tmp_path / "t.jsonl", id_column="id", skips=c)] == ["x0", "x1", "x2"]
    assert c.total == 0


def _roco(root: Path, captions: bytes, images: dict[str, bytes | None] | None = None) -> Path:
    d = root / "data" / "train" / "radiology"
    (d / "images").mkdir(parents=True, exist_ok=True)
    (d / "captions.txt").write_bytes(captions)
    for name, data in (images or {}).items():
        if data is None:
            _img(d / "images" / name)
        else:
            (d / "images" / name).write_bytes(data)
    return d


def test_roco_captions_with_a_bom_keep_the_first_pair(tmp_path: Path) -> None:
    _roco(tmp_path, "\ufeffROCO_1\tFirst caption.\nROCO_2\tSecond.\n".encode(), {"ROCO_1.jpg": None, "ROCO_2.jpg": None})
    assert [r.id for r in read_roco(tmp_path)] == ["ROCO_1", "ROCO_2"]


# ------------------------------------------------------------------ ids, labels


def test_rows_without_an_id_get_their_row_id_and_are_all_kept(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("uid,image,caption\n,a.png,One.\n  ,a.png,Two.\nk,a.png,Three.\n,a.png,Four.\n")
    c = SkipCounter()
    recs = read_csv_pairs(tmp_path / "t.csv", id_column="uid", skips=c)
    assert [r.id for r in recs] == ["t:0", "t:1", "k", "t:3"] and c.total == 0
    rows = [{"image": "a.png", "caption": "A."}, {"id": None, "image": "a.png", "caption": "B."}]
    (tmp_path / "t.jsonl").write_text("\n".join(map(json.dumps, rows)))
    assert [r.id for r in read_jsonl_pairs(tmp_path / "t.jsonl", id_column="id")] == ["t:0", "t:1"]


def test_integral_float_labels_are_their_class_and_unicode_digits_are_names(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    rows = [{"image": "a.png", "caption": f"c{i}", "label": lab} for i, lab in enumerate([2.0, 1, "3", "²", None, -1])]
    (tmp_path / "t.jsonl").write_text("\n".join(map(json.dumps, rows)))
    recs = read_jsonl_pairs(tmp_path / "t.jsonl", label_column="label")
    # integers keep their value; the name "²" is numbered after the largest integer label (3)
    assert [r.label for r in recs] == [2, 1, 3, 4, -1, -1]
    assert recs[3].meta["label_name"] == "²"


@pytest.mark.parametrize("bad", [2.5, True, -3, [1], {"a": 1}, float("nan")])
def test_a_label_that_is_no_class_is_a_counted_bad_row(tmp_path: Path, bad) -> None:
    _img(tmp_path / "a.png")
    rows = [{"id": "ok", "image": "a.png", "caption": "x", "label": 0}, {"id": "bad", "image": "a.png", "caption": "y", "label": bad}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))  # NaN: Python's json writes NaN
    c = SkipCounter()
    recs = read_jsonl_pairs(tmp_path / "t.jsonl", id_column="id", label_column="label", skips=c)
    assert [r.id for r in recs] == ["ok"] and c.counts() == {"bad_row": 1} and "bad" in c


def test_a_column_the_header_lacks_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("image,text\na.png,x\n")
    with pytest.raises(ValueError, match=r"no column 'caption' in the header \(columns: image, text\)"):
        read_csv_pairs(tmp_path / "t.csv")
    with pytest.raises(ValueError, match="no column 'dx'"):
        read_csv_pairs(tmp_path / "t.csv", caption_column="text", label_column="dx")


# ------------------------------------------------------------------ TSV: tabs and quotes inside fields


def test_tsv_tab_inside_the_last_column_caption_is_kept(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    (tmp_path / "t.tsv").write_text("image\tcaption\na.png\tLeft lung\twith a tab.\n")
    recs = read_pairs(tmp_path / "t.tsv")
    assert [r.caption for r in recs] == ["Left lung with a tab."]


def test_tsv_tab_inside_a_middle_caption_is_a_counted_bad_row(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    (tmp_path / "t.tsv").write_text("image\tcaption\tlabel\na.png\tcut\there\t1\na.png\tfine\t2\n")
    c = SkipCounter()
    recs = read_pairs(tmp_path / "t.tsv", label_column="label", skips=c)
    assert [(r.caption, r.label) for r in recs] == [("fine", 2)] and c.counts() == {"bad_row": 1}


def test_tsv_caption_starting_with_a_quote_does_not_swallow_rows(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    (tmp_path / "t.tsv").write_text('image\tcaption\na.png\t"Ground-glass" opacity\na.png\tSecond.\na.png\t"Third\n')
    recs = read_pairs(tmp_path / "t.tsv")
    assert [r.caption for r in recs] == ['"Ground-glass" opacity', "Second.", '"Third']


def test_csv_unterminated_quote_is_one_bad_row_and_the_rest_is_read(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text('image,caption\na.png,"Opened never closed\na.png,Two.\na.png,"Three, quoted."\n')
    c = SkipCounter()
    recs = read_csv_pairs(tmp_path / "t.csv", skips=c)
    assert [r.caption for r in recs] == ["Two.", "Three, quoted."]
    assert c.counts() == {"bad_row": 1} and "t.csv:line2" in c


def test_csv_unquoted_comma_in_the_last_column_caption_is_rejoined(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("image,caption\na.png,CT, axial, contrast.\n")
    assert [r.caption for r in read_csv_pairs(tmp_path / "t.csv")] == ["CT, axial, contrast."]


# ------------------------------------------------------------------ CR


def test_lone_cr_inside_a_caption_is_whitespace_in_every_reader(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    (tmp_path / "t.tsv").write_bytes(b"image\tcaption\r\na.png\tLeft\rlung.\r\n")
    (tmp_path / "t.csv").write_bytes(b"image,caption\na.png,Left\rlung.\n")
    (tmp_path / "t.jsonl").write_bytes(b'{"image": "a.png", "caption": "Left\rlung."}\n')
    for name in ("t.tsv", "t.csv", "t.jsonl"):
        assert [r.caption for r in read_pairs(tmp_path / name)] == ["Left lung."], name
    _roco(tmp_path / "roco", b"ROCO_1\tLeft\rlung.\r\nROCO_2\tTwo.\r\n", {"ROCO_1.jpg": None, "ROCO_2.jpg": None})
    assert [(r.id, r.caption) for r in read_roco(tmp_path / "roco")] == [("ROCO_1", "Left lung."), ("ROCO_2", "Two.")]


def test_classic_mac_cr_line_ends_are_lines(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_bytes(b"image,caption\ra.png,One.\ra.png,Two.\r")
    assert read_text_lines(p) == ["image,caption", "a.png,One.", "a.png,Two."]


def test_a_file_in_another_encoding_names_the_argument_to_pass(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    (tmp_path / "t.csv").write_bytes("image,caption\na.png,Röntgen.\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid utf-8 at byte .*pass encoding="):
        read_csv_pairs(tmp_path / "t.csv")
    assert read_csv_pairs(tmp_path / "t.csv", encoding="latin-1")[0].caption == "Röntgen."


# ------------------------------------------------------------------ ROCO: limit, metadata, image formats


def test_roco_limit_zero_reads_nothing_and_negative_is_an_error(tmp_path: Path) -> None:
    _roco(tmp_path, b"ROCO_1\tOne.\nROCO_2\tTwo.\n", {"ROCO_1.jpg": None, "ROCO_2.jpg": None})
    assert read_roco(tmp_path, limit=0) == []
    assert [r.id for r in read_roco(tmp_path, limit=1)] == ["ROCO_1"]
    with pytest.raises(ValueError, match="limit must be None or an integer >= 0"):
        read_roco(tmp_path, limit=-1)


def test_one_bad_metadata_line_is_counted_with_file_and_line(tmp_path: Path) -> None:
    d = _roco(tmp_path, b"ROCO_1\tOne.\nROCO_2\tTwo.\n", {"ROCO_1.jpg": None, "ROCO_2.jpg": None})
    (d / "metadata.jsonl").write_text('{"id": "ROCO_1", "label": 3, "group": "g"}\n{broken\n{"id": "ROCO_2", "label": "x"}\n')
    c = SkipCounter()
    recs = read_roco(tmp_path, skips=c)
    assert [(r.id, r.label, r.group) for r in recs] == [("ROCO_1", 3, "g"), ("ROCO_2", -1, "")]
    assert c.counts() == {"bad_row": 2}
    details = [d for ids in c.items().values() for d in ids.values()]
    assert any("metadata.jsonl: line 2" in d for d in details) and any("line 3" in d and "'x'" in d for d in details)


def test_roco_finds_dicom_and_other_decodable_images(tmp_path: Path) -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    dcm = Path(pydicom_data.get_testdata_file("CT_small.dcm")).read_bytes()
    _roco(tmp_path, b"ROCO_1\tCT.\nROCO_2\tX-ray.\nROCO_3\tMissing.\n", {"ROCO_1.dcm": dcm, "ROCO_2.PNG": None})
    c = SkipCounter()
    recs = read_roco(tmp_path, skips=c)
    assert [(r.id, r.image_path.name) for r in recs] == [("ROCO_1", "ROCO_1.dcm"), ("ROCO_2", "ROCO_2.PNG")]
    assert c.counts() == {"missing_image": 1}
    from unimlip_kit.data import ImageTextDataset

    assert ImageTextDataset(recs, image_size=8)[0]["image"].shape == (1, 8, 8)


# ------------------------------------------------------------------ property: any caption text survives every format

caption_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40
).filter(lambda s: _norm(s) != "")
newline = st.sampled_from(["\n", "\r\n"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(caps=st.lists(caption_text, min_size=1, max_size=5), nl=newline, bom=st.booleans())
def test_any_caption_text_round_trips_through_csv_and_jsonl(tmp_path_factory, caps, nl, bom) -> None:
    d = tmp_path_factory.mktemp("rt")
    _img(d / "a.png")
    buf = io.StringIO()
    csv.writer(buf, lineterminator=nl).writerows([["image", "caption", "label"]] + [["a.png", c, i] for i, c in enumerate(caps)])
    prefix = "\ufeff" if bom else ""
    (d / "t.csv").write_bytes((prefix + buf.getvalue()).encode("utf-8"))
    body = nl.join(json.dumps({"image": "a.png", "caption": c, "label": float(i)}) for i, c in enumerate(caps))
    (d / "t.jsonl").write_bytes((prefix + body + nl).encode("utf-8"))
    for name in ("t.csv", "t.jsonl"):
        c = SkipCounter()
        recs = read_pairs(d / name, label_column="label", skips=c)
        assert c.total == 0, (name, c.items())
        assert [(r.caption, r.label) for r in recs] == [(_norm(x), i) for i, x in enumerate(caps)], name


tsv_caption = caption_text.filter(lambda s: "\n" not in s and "\t" not in s)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(caps=st.lists(st.tuples(tsv_caption, st.booleans()), min_size=1, max_size=5), nl=newline, bom=st.booleans())
def test_any_tsv_caption_with_quotes_tabs_and_cr_round_trips(tmp_path_factory, caps, nl, bom) -> None:
    d = tmp_path_factory.mktemp("tsv")
    _img(d / "a.png")
    # a caption may hold quotes anywhere, a lone CR, and (as the last column) extra tabs
    extra = "\tmore"
    lines = ["label\timage\tcaption"] + [f"{i}\ta.png\t{c + (extra if tab else '')}" for i, (c, tab) in enumerate(caps)]
    (d / "t.tsv").write_bytes((("\ufeff" if bom else "") + nl.join(lines) + nl).encode("utf-8"))
    roco = nl.join(f"ROCO_{i}\t{c}" for i, (c, _) in enumerate(caps)) + nl
    _roco(d, (("\ufeff" if bom else "") + roco).encode("utf-8"), {f"ROCO_{i}.jpg": None for i in range(len(caps))})
    c = SkipCounter()
    recs = read_pairs(d / "t.tsv", label_column="label", skips=c)
    assert c.total == 0 and [(r.caption, r.label) for r in recs] == [
        (_norm(x + (" more" if tab else "")), i) for i, (x, tab) in enumerate(caps)]
    assert [r.caption for r in read_roco(d)] == [_norm(x) for x, _ in caps]


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=6), st.none(), st.booleans()))
def test_parse_label_is_an_index_a_name_unknown_or_a_clear_error(value) -> None:
    from unimlip_kit.data.textfile import BadLabel

    try:
        got = parse_label(value)
    except BadLabel as err:
        assert "label" in str(err)
        return
    assert got is None or (isinstance(got, int) and not isinstance(got, bool) and got >= 0) or (isinstance(got, str) and got)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        assert got == value
