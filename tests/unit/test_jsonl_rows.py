"""tiebreak.services.data.jsonl_rows: the one JSON Lines reader of the replay data (services.data.load_items) and of
`tiebreak compare`'s --pairs / --prompts files; a bad line names the file and the line."""

from __future__ import annotations

import pytest

from tiebreak.services.commands.compare import _read_jsonl_or_json
from tiebreak.services.data import DataError, jsonl_rows, load_items
from tiebreak.services.errors import BadInput


def test_rows_skip_blank_lines_and_keep_line_numbers(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n  \n[2, 3]\n"s"\n')
    assert list(jsonl_rows(p)) == [(1, {"a": 1}), (4, [2, 3]), (5, "s")]


def test_a_bad_line_names_file_and_line_in_the_callers_error(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"human_votes": ["A"], "model_a": "x", "model_b": "y"}\n\n{oops\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        load_items(p)
    with pytest.raises(BadInput, match=r"bad\.jsonl:3: not valid JSON"):
        _read_jsonl_or_json(p)


def test_compare_reads_a_json_list_or_json_lines(tmp_path):
    lines, whole = tmp_path / "p.jsonl", tmp_path / "p.json"
    lines.write_text('{"id": "a"}\n{"id": "b"}\n')
    whole.write_text('[{"id": "a"}, {"id": "b"}]')
    assert _read_jsonl_or_json(lines) == _read_jsonl_or_json(whole) == [{"id": "a"}, {"id": "b"}]
    whole.write_text('{"id": "a"}')
    with pytest.raises(BadInput, match="expected a JSON list"):
        _read_jsonl_or_json(whole)
