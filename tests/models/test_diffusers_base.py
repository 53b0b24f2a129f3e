"""Tests for `tinypipe.models.diffusers_base`: a diffusers pipeline folder, loaded as a base model and saved complete."""

import json

from tinypipe.models.diffusers_base import write_vocabulary_files

TOKENIZER_JSON = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab</w>": 2}, "merges": [["a", "b</w>"], "ab c"]}}


def test_a_bpe_tokenizer_json_gets_the_vocab_and_merges_files_slow_tokenizers_read(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps(TOKENIZER_JSON), encoding="utf-8")
    write_vocabulary_files(tmp_path)
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8")) == TOKENIZER_JSON["model"]["vocab"]
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8") == "#version: 0.2\na b</w>\nab c\n"


def test_existing_vocabulary_files_and_other_tokenizer_types_are_left_alone(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps(TOKENIZER_JSON), encoding="utf-8")
    (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    write_vocabulary_files(tmp_path)
    assert (tmp_path / "vocab.json").read_text(encoding="utf-8") == "{}"
    other = tmp_path / "wordpiece"
    other.mkdir()
    (other / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}}), encoding="utf-8")
    write_vocabulary_files(other)
    assert sorted(path.name for path in other.iterdir()) == ["tokenizer.json"]
