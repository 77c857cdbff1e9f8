"""QuIC-360-style tables: reading, URL resolution, reported (never silent) drops, prompts."""

import json

import pytest
from PIL import Image

from modeling_panovlm.testing.synthetic_panoramas import SceneObject, render_panorama
from processing_panovlm.data.captions import (
    load_caption_table,
    scan_images,
    write_data_report,
)


@pytest.fixture
def table_dir(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    render_panorama([SceneObject("red", "circle", 0.0)], height=32).save(images / "ok.jpg")
    (images / "truncated.jpg").write_bytes((images / "ok.jpg").read_bytes()[:300])
    Image.new("RGB", (40, 40)).save(images / "square.png")
    (images / "text.jpg").write_text("not an image")
    return tmp_path


def test_quic360_csv_is_read_verbatim_and_urls_resolve(table_dir):
    (table_dir / "t.csv").write_text(
        'url,query,annotation\nimages/ok.jpg,location,"A red, round ""thing""."\n'
        "images/ok.jpg,people,nan\nhttps://example.com/p.jpg,trees,\n"
    )
    table = load_caption_table(table_dir / "t.csv")
    assert table.column_names == [
        "url", "query", "annotation", "image", "prompt_style", "row", "image_id", "source", "problem", "problem_detail"
    ]
    assert table["annotation"] == ['A red, round "thing".', "nan", ""]  # "nan" stays a string
    assert table["image"] == [str(table_dir / "images/ok.jpg")] * 2 + ["https://example.com/p.jpg"]
    assert table["row"] == [1, 2, 3] and set(table["prompt_style"]) == {"query"}
    assert table["image_id"] == table["image"] and set(table["problem"]) == {""}
    assert set(table["source"]) == {str(table_dir / "t.csv")}


def test_instruction_variant_and_tsv(table_dir):
    (table_dir / "t.tsv").write_text("url\tinstruction\tresponse\nimages/ok.jpg\tWhat is in front?\tA red circle.\n")
    table = load_caption_table(table_dir / "t.tsv")
    assert table[0]["query"] == "What is in front?" and table[0]["annotation"] == "A red circle."
    assert table[0]["prompt_style"] == "instruction"


def test_missing_columns_and_empty_tables_raise(table_dir):
    (table_dir / "bad.csv").write_text("image,caption\na.jpg,x\n")
    with pytest.raises(ValueError, match="expected columns url,query,annotation"):
        load_caption_table(table_dir / "bad.csv")
    (table_dir / "empty.csv").write_text("url,query,annotation\n")
    with pytest.raises(ValueError, match="no rows"):
        load_caption_table(table_dir / "empty.csv")
    with pytest.raises(FileNotFoundError):
        load_caption_table(table_dir / "nope.csv")


def test_unusable_images_are_reported_row_by_row(table_dir):
    rows = ["ok.jpg", "missing.jpg", "truncated.jpg", "square.png", "text.jpg", "ok.jpg"]
    (table_dir / "t.csv").write_text("url,query,annotation\n" + "".join(f"images/{r},q,a\n" for r in rows))
    table = load_caption_table(table_dir / "t.csv")
    kept, problems = scan_images(table)
    assert kept["row"] == [1, 6]
    assert [(p.row, p.reason) for p in problems] == [
        (2, "image file not found"),
        (3, "truncated or corrupt image"),
        (4, "not a 2:1 panorama"),
        (5, "not an image"),
    ]
    report = json.loads(write_data_report(table_dir / "out", "train", len(table), problems).read_text())
    assert report["rows"] == 6 and report["kept"] == 2 and report["dropped"] == 4
    assert report["dropped_by_reason"]["truncated or corrupt image"] == 1
    assert report["dropped_rows"][0]["url"] == "images/missing.jpg"
