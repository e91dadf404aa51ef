from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from distilkit.data import PrepareConfig, TokenDataset, id_dtype, prepare
from distilkit.errors import DistilkitError


def _prepare(tiny_teacher, sources, out, **kw):
    cfg = PrepareConfig(
        sources=[str(s) for s in sources], tokenizer=str(tiny_teacher), out_dir=str(out), **kw
    )
    return prepare(cfg)


def test_counts_lengths_packing_and_filters(tiny_teacher, tmp_path):
    # Doc 1: two 10-word paragraphs -> packed into one 22-token sequence at max_length 32.
    # Doc 2: one 40-word paragraph -> split into 30 + 10 tokens -> [32, 12] with CLS/SEP.
    # Doc 3: 5 words -> 7 tokens -> dropped (<= 11 tokens).
    # Doc 4: 12 unknown words -> 14 tokens, 12 [UNK] -> dropped.
    ten = "the river city king war music film school team game"
    forty = " ".join([ten] * 4)
    corpus = tmp_path / "c.txt"
    corpus.write_text(
        f"{ten}\n{ten}\n\n{forty}\n\nthe king ran . .\n\n" + " ".join(["zzzq"] * 12) + "\n"
    )
    r = _prepare(tiny_teacher, [corpus], tmp_path / "out", max_length=32, validation_fraction=0.0)
    m = r.manifest
    assert m["dropped_sequences"] == {"too_short": 1, "too_many_unk": 1}
    ds = TokenDataset(tmp_path / "out", "train")
    assert sorted(ds.lengths.tolist()) == [12, 22, 32]
    assert m["splits"]["train"]["tokens"] == 66
    assert m["read"]["documents"] == 4
    for i in range(len(ds)):
        seq = ds[i]
        assert seq[0] == m["special_ids"]["cls"] and seq[-1] == m["special_ids"]["sep"]
    counts = np.load(tmp_path / "out" / "token_counts.npy")
    assert counts.sum() == 66
    assert counts[m["special_ids"]["cls"]] == 3
    assert m["dtype"] == "uint16"
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").is_file()


def test_sources_gz_jsonl_and_folders(tiny_teacher, tmp_path):
    text = "the river city king war music film school team game ."
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    with gzip.open(folder / "a.txt.gz", "wt") as f:
        f.write(text + "\n")
    (folder / "sub" / "b.jsonl").write_text(json.dumps({"text": text + "\n" + text}) + "\n")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    plain = tmp_path / "c.txt"
    plain.write_text(text + "\n")
    r = _prepare(tiny_teacher, [folder, plain], tmp_path / "out", validation_fraction=0.0)
    assert r.manifest["read"]["files"] == 3
    assert r.manifest["splits"]["train"]["sequences"] == 3


def test_validation_split_holds_whole_documents(tiny_data):
    train, val = TokenDataset(tiny_data, "train"), TokenDataset(tiny_data, "validation")
    assert len(val) > 0 and len(train) > len(val)
    m = json.loads((tiny_data / "manifest.json").read_text())
    assert m["splits"]["validation"]["tokens"] == int(val.lengths.sum())


def test_id_dtype_never_uint16_above_65535():
    assert id_dtype(30522) == np.uint16
    assert id_dtype(65536) == np.uint16  # ids 0..65535 fit
    assert id_dtype(65537) == np.uint32
    assert id_dtype(250_002) == np.uint32


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "no training sequences"),
        (b"\x00\x01\x02binary", "looks binary"),
    ],
)
def test_bad_corpora_fail_and_leave_nothing(tiny_teacher, tmp_path, content, match):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(DistilkitError, match=match):
        _prepare(tiny_teacher, [bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("*.tmp-prepare"))


def test_non_utf8_lines_are_skipped_and_counted(tiny_teacher, tmp_path):
    good = "the river city king war music film school team game ."
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(good.encode() + b"\n\xff\xfe broken line\n" + good.encode() + b"\n")
    r = _prepare(tiny_teacher, [corpus], tmp_path / "out", validation_fraction=0.0)
    assert r.manifest["read"]["bad_utf8_lines_skipped"] == 1


def test_missing_source_and_existing_output(tiny_teacher, tmp_path):
    with pytest.raises(DistilkitError, match="not found"):
        _prepare(tiny_teacher, [tmp_path / "nope.txt"], tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    corpus = tmp_path / "c.txt"
    corpus.write_text("the river city king war music film school team game .\n")
    with pytest.raises(DistilkitError, match="not empty"):
        _prepare(tiny_teacher, [corpus], tmp_path / "out")
    assert (tmp_path / "out" / "keep").read_text() == "x"


def test_jsonl_without_text_field_names_the_line(tiny_teacher, tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "the river city king war music film school team"}\n{"body": "x"}\n')
    with pytest.raises(DistilkitError, match=r"c.jsonl:2"):
        _prepare(tiny_teacher, [f], tmp_path / "out")
