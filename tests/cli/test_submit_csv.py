"""`blogstream submit --file x.csv` reads any CSV a spreadsheet writes: each row taken as written or named.

- A header that names a column twice (two `site_id` columns) took the last one silently: a row
  meant for one site went to another. JSON refuses a key twice in one object for the same
  reason; a CSV header now does too.
- Rows were numbered as if each were one line: after a quoted cell holding a line break, every
  problem named the wrong line; and a quote never closed swallowed the rest of the file into
  one cell, reported as one bad line with nothing saying the lines after it were never read.
- A row with more cells than the header was '"None": is not a field of BlogRequest'.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streams.cli.submit import read_file

COLUMNS = ("site_id", "topic", "keywords", "tone")
CELL = st.text(st.sampled_from('ab ,"\n\r\t;'), max_size=6)
GOOD = {"site_id": st.sampled_from(["shop-1", "shop-2"]), "topic": st.sampled_from(["Tea", "Coffee, black"]),
        "keywords": st.sampled_from(["", "a,b"]), "tone": st.sampled_from(["calm", "dry"])}
ROW = st.fixed_dictionaries({name: st.one_of(value, CELL) for name, value in GOOD.items()})


def written(rows: list[dict[str, Any]], header: tuple[str, ...] = COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # as Excel writes
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[name] for name in header])
    return out.getvalue()


@given(rows=st.lists(ROW, min_size=1, max_size=6))
def test_every_row_is_read_as_written_or_named_by_its_first_line(tmp_path_factory: Any, rows: list[dict]) -> None:
    text = written(rows)
    path = tmp_path_factory.mktemp("csv") / "requests.csv"
    path.write_bytes(text.encode())
    requests, problems = read_file(path)
    starts = _row_lines(text)
    named = {int(p.split(":")[0].split()[1]) for p in problems}
    assert named <= set(starts), (problems, starts)
    assert len(requests) + len(problems) == len(rows)
    kept = iter(requests)
    for row, line in zip(rows, starts):
        if line in named:
            continue
        request = next(kept)
        assert [request.get(name, "") for name in ("site_id", "topic", "tone")] == [
            row["site_id"], row["topic"], row["tone"]]  # (an empty cell is a field left out)


def _row_lines(text: str) -> list[int]:
    """The physical line each data row starts on (the header is line 1)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    starts, line = [], reader.line_num + 1
    for _ in reader:
        starts.append(line)
        line = reader.line_num + 1
    return starts


def test_a_header_that_names_a_column_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    path.write_text("site_id,topic,site_id\nshop-1,Tea,shop-2\nshop-1,Coffee,shop-2\n")
    requests, problems = read_file(path)
    assert requests == []
    assert problems == ["line 1: the header has site_id twice; every column needs a name of its own, "
                        "nothing of this file was read"]


def test_a_row_with_more_cells_than_the_header_says_so(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("site_id,topic\nshop-1,Tea,extra\nshop-1,Coffee\n")
    requests, problems = read_file(path)
    assert [r["topic"] for r in requests] == ["Coffee"]
    assert problems == ["line 2: has 3 cells, the header 2 columns"]


def test_a_quote_never_closed_says_how_far_it_ran(tmp_path: Path) -> None:
    path = tmp_path / "open.csv"
    path.write_text("site_id,topic\nshop-1,\"Tea\nshop-1,Coffee\nshop-1,Cake\n")
    requests, problems = read_file(path)
    assert requests == []
    (problem,) = problems
    assert problem.startswith("line 2 (to line 4, the end of the file: a quote not closed?): ")
