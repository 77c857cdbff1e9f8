"""Caption tables: encodings, broken rows, duplicates, through loading, training and evaluation."""

from __future__ import annotations

import json
import re
from pathlib import Path

from case_helpers import Ctx, LocalServer, imp, load_model, load_processor, refusal
from case_registry import case


# ---- tables ---------------------------------------------------------------------------------------------------------


def _rows(ctx: Ctx) -> list[tuple[str, str, str]]:
    import csv

    with (ctx.ws / "data" / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = [(str((ctx.ws / "data" / r["url"]).resolve()), r["query"], r["annotation"]) for r in csv.DictReader(handle)]
    unique = {}
    for row in rows:
        unique.setdefault(row[0], row)
    return list(unique.values())[:3]


def _quote(value: str) -> str:
    return f'"{value}"' if ("," in value or '"' in value) else value


def _defective_table(ctx: Ctx, defect: str) -> tuple[Path, dict]:
    """`<case dir>/<defect>.csv`: the clean rows with the defect ("clean": none), and what a correct reader makes
    of it."""
    rows = _rows(ctx)
    lines = ["url,query,annotation"] + [",".join(_quote(v) for v in row) for row in rows]
    expect = {"rows": len(rows)}
    image = rows[0][0]
    if defect == "duplicate":
        lines.append(lines[1])
        expect.update(defect_row=len(rows) + 1)
    elif defect == "empty_reference":
        lines.append(f"{image},what is behind?,")
        expect.update(defect_row=len(rows) + 1)
    elif defect == "unquoted_comma":
        lines.append(f"{image},what is behind?,a red circle, and a blue square behind")
        expect.update(defect_row=len(rows) + 1, lost="blue square behind")
    elif defect == "short_row":
        lines.insert(2, f"{image},what is behind?")
        expect.update(defect_row=2)
    data = ("\n".join(lines) + "\n").encode()
    if defect == "bom":
        data = b"\xef\xbb\xbf" + data
    elif defect == "non_utf8":
        data += f"{image},what is behind?,caf\xe9 cr\xe8me\n".encode("latin-1")
        expect.update(defect_row=len(rows) + 1)
    elif defect == "utf16":
        data = ("\n".join(lines) + "\n").encode("utf-16")
    path = ctx.tmp / f"{defect}.csv"
    path.write_bytes(data)
    return path, expect


def table_load(ctx: Ctx, defect: str) -> tuple[str, str]:
    path, expect = _defective_table(ctx, defect)
    load = imp("processing_panovlm.data:load_caption_table", "processing_panovlm.caption_data:load_caption_table")
    try:
        table = load(path)
    except Exception as error:  # noqa: BLE001
        if defect == "bom":
            return "unclear_error", f"a BOM header is not recognised: {type(error).__name__}: {str(error)[:300]}"
        needles = [path.name] + ({"short_row": ["line 3|row 2"], "unquoted_comma": [f"line {expect.get('defect_row', 0) + 1}|row {expect.get('defect_row', 0)}"]}.get(defect, []))
        return refusal(error, *needles)
    columns = table.column_names
    problems = [p for p in table["problem"] if p] if "problem" in columns else []
    if defect == "bom":
        ok = "url" in columns and len(table) == expect["rows"] and all(table["annotation"])
        return ("good" if ok else "silent_wrong"), f"columns {columns}, {len(table)} rows"
    if defect in ("unquoted_comma", "short_row"):
        if problems:
            return "good", f"the row is marked: {problems}"
        annotations = table["annotation"]
        if defect == "unquoted_comma" and not any(expect["lost"] in (a or "") for a in annotations):
            return "silent_wrong", f"the row lost its last field silently: {annotations[-1]!r}"
        return "silent_wrong", f"a {defect} loads as an ordinary row: {table[expect['defect_row'] - 1]}"
    return "silent_wrong", f"{defect} table loaded ({len(table)} rows, columns {columns})"


for _defect in ("bom", "non_utf8", "utf16", "unquoted_comma", "short_row"):
    case("tables", f"load_caption_table_{_defect}", defect=_defect)(table_load)


def table_prepare(ctx: Ctx, defect: str) -> tuple[str, str]:
    """The training path: prepare_table(csv, output_dir, split, needs_text, augment) drops and reports rows."""
    path, expect = _defective_table(ctx, defect)
    prepare = imp("modeling_panovlm.training.runner:prepare_table", "modeling_panovlm.stage_runner:prepare_table")
    try:
        table = prepare(str(path), ctx.tmp / "out", "train", True, False)
    except Exception as error:  # noqa: BLE001
        if defect == "bom":
            return "unclear_error", f"a BOM header is not recognised: {str(error)[:300]}"
        return refusal(error, path.name, f"line {expect.get('defect_row', 0) + 1}|row {expect.get('defect_row', 0)}")
    reports = list((ctx.tmp / "out").glob("*report*.json"))
    report = reports[0].read_text() if reports else ""
    if defect == "bom":
        ok = len(table) == expect["rows"]
        return ("good" if ok else "silent_wrong"), f"{len(table)} rows kept of {expect['rows']}"
    row = expect["defect_row"]
    mentioned = re.search(rf'"row": {row}\b', report) is not None
    if mentioned:
        return "good", f"row {row} reported in {reports[0].name} ({len(table)} rows kept)"
    return "silent_wrong", f"row {row} ({defect}) neither dropped with a report nor counted: {len(table)} rows kept, report {report[:200]!r}"


for _defect in ("duplicate", "empty_reference", "unquoted_comma", "short_row", "bom"):
    case("tables", f"training_table_{_defect}", defect=_defect)(table_prepare)


def table_evaluate(ctx: Ctx, defect: str) -> tuple[str, str]:
    path, expect = _defective_table(ctx, defect)
    evaluate = imp("modeling_panovlm.evaluation:evaluate_caption_table")
    greedy = imp("modeling_panovlm.evaluation:greedy_generation_config")
    model, processor = load_model(ctx.ws / "a"), load_processor(ctx.ws / "a")
    try:
        summary = evaluate(model, processor, path, ctx.tmp / "eval", generation_config=greedy(model, 3))
    except Exception as error:  # noqa: BLE001
        if defect == "bom":
            return "unclear_error", f"a BOM header is not recognised: {type(error).__name__}: {str(error)[:300]}"
        return refusal(error, path.name, *([] if defect == "non_utf8" else [f"line {expect.get('defect_row', 0) + 1}|row {expect.get('defect_row', 0)}"]))
    text = json.dumps(summary)
    units = summary.get("protocols", {}).get("per-row", {}).get("units")
    if defect == "bom":
        return ("good" if units == expect["rows"] else "silent_wrong"), f"per-row units {units} of {expect['rows']} rows"
    row = expect["defect_row"]
    counted = re.search(rf'"row": {row}\b', text) is not None
    if units == expect["rows"] and counted:
        return "good", f"row {row} left out of the scores and reported; per-row units {units}"
    if units == expect["rows"]:
        return "silent_wrong", f"row {row} left out of the scores but not reported; per-row units {units}"
    return "silent_wrong", f"row {row} ({defect}) scored: per-row units {units} for {expect['rows']} good rows"


for _defect in ("duplicate", "empty_reference", "unquoted_comma", "short_row", "bom", "non_utf8"):
    case("tables", f"evaluation_table_{_defect}", timeout=300, defect=_defect)(table_evaluate)


@case("tables", "evaluation_table_failing_url", timeout=300)
def evaluation_failing_url(ctx: Ctx) -> tuple[str, str]:
    rows = _rows(ctx)
    evaluate = imp("modeling_panovlm.evaluation:evaluate_caption_table")
    greedy = imp("modeling_panovlm.evaluation:greedy_generation_config")
    model, processor = load_model(ctx.ws / "a"), load_processor(ctx.ws / "a")
    with LocalServer(ctx) as server:
        url = server.url + "/missing/pano.png"
        path = ctx.tmp / "url.csv"
        path.write_text("url,query,annotation\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows[:2]) + f"{url},front,a red circle\n")
        try:
            summary = evaluate(model, processor, path, ctx.tmp / "eval", generation_config=greedy(model, 3))
        except Exception as error:  # noqa: BLE001
            return refusal(error, url, "row 3|line 4")
    text = json.dumps(summary)
    units = summary.get("protocols", {}).get("per-row", {}).get("units")
    if units == 2 and url in text and re.search(r'"row": 3\b', text):
        return "good", f"row 3 ({url}) left out of the scores and reported; per-row units {units}"
    return "silent_wrong", f"a failing URL row: per-row units {units}, reported: {url in text}"


@case("tables", "control_clean_table_loads")
def clean_table(ctx: Ctx) -> tuple[str, str]:
    path, expect = _defective_table(ctx, "clean")
    load = imp("processing_panovlm.data:load_caption_table", "processing_panovlm.caption_data:load_caption_table")
    table = load(path)
    return ("good" if len(table) == expect["rows"] else "silent_wrong"), f"{len(table)} rows"


