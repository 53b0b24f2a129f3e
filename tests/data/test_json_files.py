"""Tests for `tinypipe.data.json_files`: the user's JSON / JSON Lines data files, read with errors naming file and line."""

import os

import pytest

from tinypipe.data.json_files import read_json_document, read_json_lines
from tinypipe.errors import DataError


def test_json_lines_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n  \n[2]\n', encoding="utf-8")
    assert read_json_lines(path) == [(1, {"a": 1}), (4, [2])]


def test_a_bad_line_is_named_and_shown(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n{"a": 2,}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"data.jsonl line 2 is not valid JSON \(.* at column 9\): '\{\"a\": 2,\}'\. Fix it\."):
        read_json_lines(path)


def test_a_bad_document_names_the_line_and_the_callers_hint(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2,}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"data.json line 3 is not valid JSON .*Give a list\."):
        read_json_document(path, hint="Give a list.")


def test_deep_nesting_is_a_data_error_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(DataError, match="nests lists or objects too deeply"):
        read_json_document(path)


def test_non_utf8_text_is_a_data_error(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="latin1.jsonl is not UTF-8 text"):
        read_json_lines(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "data.json"
    os.mkfifo(path)
    with pytest.raises(DataError, match="is not a regular file"):
        read_json_document(path)
