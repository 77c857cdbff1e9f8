"""Caption tables from every source `datasets` reads (issue 16): the same rows and the same pixels whatever the
format, column names mapped, several tables concatenated, and unreadable sources refused naming the problem."""

import dataclasses

import datasets
import pytest
import torch

from processing_panovlm.data import DataArguments, load_caption_table, prepare_caption_table
from processing_panovlm.image_loading import load_panorama

from .data_tables import COLORS, ROWS, embedded, write_csv, write_every_format, write_images


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    return folder, write_every_format(folder)


def pixels(folder):
    return {color: load_panorama(folder / "images" / f"{color}.jpg") for color in COLORS}


@pytest.mark.parametrize(
    "name",
    [
        "csv",
        "tsv",
        "csv.gz",
        "json",
        "jsonl",
        "parquet",
        "parquet with a datasets.Image column",
        "mapped columns",
        "webdataset",
        "save_to_disk",
        "saved DatasetDict split",
        "data_files dict",
        "Hub-layout folder",
    ],
)
def test_every_source_gives_the_same_rows_and_pixels(formats, name):
    folder, sources = formats
    source, options, split = sources[name]
    table = load_caption_table(source, DataArguments(**options), split=split)
    assert [(row["query"], row["annotation"]) for row in table] == [(query, text) for _, query, text in ROWS]
    assert table["row"] == [1, 2, 3] and set(table["prompt_style"]) == {"query"} and set(table["problem"]) == {""}
    expected = pixels(folder)
    for row, color in zip(table, COLORS):
        # The one loader reads a path, a URL or an embedded datasets.Image value alike: same pixels everywhere.
        assert torch.equal(load_panorama(row["image"]), expected[color])
    embeds = isinstance(table.features["image"], datasets.Image)
    assert embeds == (name in ("parquet with a datasets.Image column", "mapped columns", "webdataset", "Hub-layout folder"))
    if embeds:
        assert all(image_id.startswith("sha1:") for image_id in table["image_id"]) and table["url"][0] in ("red.jpg", "000.jpg")
    else:
        assert table["url"] == [location for location, _, _ in ROWS]
        assert table["image"] == [str(folder.resolve() / location) for location, _, _ in ROWS]
    prepared = prepare_caption_table(source, DataArguments(**options), split=split)
    assert prepared.rows_read == 3 and len(prepared.rows) == 3 and prepared.problems == []


def test_the_only_image_column_is_found_and_prompt_styles_follow_the_columns(tmp_path):
    write_images(tmp_path)
    embedded(tmp_path, ROWS, ("photo", "query", "annotation")).to_parquet(str(tmp_path / "photo.parquet"))
    table = load_caption_table(str(tmp_path / "photo.parquet"))
    assert isinstance(table.features["image"], datasets.Image) and table["url"][0] == "red.jpg"
    assert set(table["prompt_style"]) == {"query"}

    write_csv(tmp_path / "cora.csv", ROWS, header=("url", "instruction", "response"))
    assert set(load_caption_table(tmp_path / "cora.csv")["prompt_style"]) == {"instruction"}
    forced = load_caption_table(tmp_path / "cora.csv", DataArguments(prompt_style="query"))
    assert set(forced["prompt_style"]) == {"query"}
    write_csv(tmp_path / "vqa.csv", ROWS, header=("image_path", "question", "answer"))
    vqa = DataArguments(image_column="image_path", query_column="question", answer_column="answer")
    assert set(load_caption_table(tmp_path / "vqa.csv", vqa)["prompt_style"]) == {"query"}
    verbatim = dataclasses.replace(vqa, prompt_style="instruction")
    assert load_caption_table(tmp_path / "vqa.csv", verbatim)[0]["prompt_style"] == "instruction"


def test_several_tables_are_concatenated_with_their_own_rows_sources_and_folders(tmp_path):
    for name in ("first", "second"):
        write_images(tmp_path / name)
    write_csv(tmp_path / "first" / "a.csv", ROWS[:2])
    write_csv(tmp_path / "second" / "b.csv", ROWS[2:])
    embedded(tmp_path / "first", ROWS[:1]).to_parquet(str(tmp_path / "c.parquet"))
    sources = [tmp_path / "first" / "a.csv", str(tmp_path / "second" / "b.csv"), str(tmp_path / "c.parquet")]
    table = load_caption_table(sources)
    # Paths next to embedded images: one datasets.Image column, a path becoming an image value naming it.
    assert isinstance(table.features["image"], datasets.Image)
    assert table["row"] == [1, 2, 1, 1]
    assert table["source"] == [str(sources[0])] * 2 + sources[1:]
    assert [image["path"] for image in table["image"][:3]] == [
        str(tmp_path / "first" / "images" / "red.jpg"),
        str(tmp_path / "first" / "images" / "green.jpg"),
        str(tmp_path / "second" / "images" / "blue.jpg"),
    ]
    red = load_panorama(tmp_path / "first" / "images" / "red.jpg")
    assert torch.equal(load_panorama(table[3]["image"]), red) and torch.equal(load_panorama(table[0]["image"]), red)
    # The same table twice: its rows repeat (same image, query and answer), kept for training and listed.
    prepared = prepare_caption_table([*sources, sources[1]])
    assert len(prepared.rows) == 5 and [(p.row, p.reason) for p in prepared.duplicates_kept] == [(1, "duplicate row")]
    assert prepared.duplicates_kept[0].detail == "same image, query and answer as row 1"
    # An image is identified by its path, URL or bytes: c.parquet's embedded copy of red.jpg is another image.
    assert len(set(table["image_id"])) == 4


def test_unusable_embedded_images_are_reported_like_files(tmp_path):
    write_images(tmp_path)
    rows = ROWS[:1] + [("images/cut.jpg", "location", "cut"), ("images/square.png", "location", "square")]
    embedded(tmp_path, rows).to_parquet(str(tmp_path / "t.parquet"))
    prepared = prepare_caption_table(str(tmp_path / "t.parquet"))
    assert prepared.rows["row"] == [1]
    assert [(p.row, p.url, p.reason) for p in prepared.problems] == [
        (2, "cut.jpg", "truncated or corrupt image"),
        (3, "square.png", "not a 2:1 panorama"),
    ]


@pytest.mark.parametrize(
    ("source", "options", "split", "error", "match"),
    [
        ("missing.csv", {}, None, FileNotFoundError, "missing.csv does not exist"),
        ("nothing/*.parquet", {}, None, FileNotFoundError, "no caption table matches"),
        ("table.xlsx", {}, None, ValueError, "unsupported table format '.xlsx'"),
        ("t.csv", {"query_column": "question"}, None, ValueError, r"no column 'question' for the query; its columns: \['url'"),
        ("wrong.csv", {}, None, ValueError, r"expected columns url,query,annotation .* found \['image', 'caption'\]"),
        ("numbers.parquet", {}, None, ValueError, "the answer column 'annotation' holds Value\\('int64'\\), not text"),
        ("saved_dict", {}, "validation", ValueError, r"no split 'validation'; its splits: \['train', 'test'\]"),
        ({"train": "t.csv"}, {}, "test", ValueError, r"the data_files dict has no split 'test'; its splits: \['train'\]"),
        ([], {}, None, ValueError, "an empty list of caption tables"),
        (42, {}, None, TypeError, "not int"),
    ],
)
def test_unreadable_sources_are_refused_naming_the_problem(tmp_path, source, options, split, error, match):
    write_images(tmp_path)
    write_csv(tmp_path / "t.csv", ROWS)
    write_csv(tmp_path / "wrong.csv", [("a.jpg", "x")], header=("image", "caption"))
    (tmp_path / "table.xlsx").write_bytes(b"PK")
    datasets.Dataset.from_dict({"url": ["a.jpg"], "query": ["q"], "annotation": [3]}).to_parquet(
        str(tmp_path / "numbers.parquet")
    )
    table = datasets.Dataset.from_list([dict(zip(("url", "query", "annotation"), row)) for row in ROWS])
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(str(tmp_path / "saved_dict"))

    def rooted(value):
        if isinstance(value, str):
            return str(tmp_path / value)
        if isinstance(value, dict):
            return {key: rooted(item) for key, item in value.items()}
        return value

    with pytest.raises(error, match=match):
        load_caption_table(rooted(source), DataArguments(**options), split=split)


def test_data_arguments_refuse_bad_values():
    with pytest.raises(ValueError, match="prompt_style must be one of"):
        DataArguments(prompt_style="chat")
    with pytest.raises(ValueError, match="num_proc must be >= 1"):
        DataArguments(num_proc=0)
    with pytest.raises(ValueError, match="image_column must be a non-empty string"):
        DataArguments(image_column=" ")
    with pytest.raises(ValueError, match="eval_split must be a non-empty split name"):
        DataArguments(eval_split="")
