"""GLUE readers on fixtures in their exact download_glue_data.py layout, generic files, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distilkit.errors import DistilkitError
from distilkit.tasks import (
    GLUE_TASKS,
    TASKS,
    ClassificationOptions,
    Example,
    canonical_label,
    get_task,
    load_task,
    read_task,
)

GLUE = Path(__file__).parent / "fixtures" / "glue"


def test_registry_has_the_nine_glue_tasks():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert all(t in TASKS for t in GLUE_TASKS)
    assert get_task("SST-2") is TASKS["sst2"]
    assert get_task("sts_b") is TASKS["stsb"]
    assert get_task("MNLI-mm") is TASKS["mnli-mm"]
    with pytest.raises(DistilkitError, match="unknown task 'glue'"):
        get_task("glue")


def test_cola_no_header_and_no_final_newline():
    train = read_task("cola", "train", GLUE)
    dev = read_task("cola", "dev", GLUE)
    assert len(train) == 8 and len(dev) == 6  # the last dev line has no newline and still counts
    assert train[0] == Example("The cat slept on the warm mat.", None, 1)
    assert train[1].label == 0
    assert dev[-1] == Example("Sing birds morning the in.", None, 0)


def test_sst2_keeps_quotes_and_spacing():
    train = read_task("sst2", "train", GLUE)
    assert train[-1] == Example('a tedious , "clever" mess ', None, 0)
    assert [e.label for e in read_task("sst2", "dev", GLUE)] == [1, 0, 1, 0]


def test_mrpc_header_with_byte_order_mark():
    assert (GLUE / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    train = read_task("mrpc", "train", GLUE)
    assert train[0] == Example(
        "The company said profits rose 5 percent.", "Profits rose 5 percent, the company said.", 1
    )
    assert [e.label for e in train] == [1, 0, 1, 0]


def test_stsb_pairs_and_float_scores():
    train = read_task("stsb", "train", GLUE)
    assert train[0] == Example("A dog runs in a field.", "A dog is running across a field.", 4.6)
    assert [e.label for e in read_task("stsb", "dev", GLUE)] == [4.25, 0.0, 4.8, 0.4]


def test_qqp_qnli_rte_wnli_columns():
    qqp = read_task("qqp", "dev", GLUE)
    assert qqp[0] == Example("How can I sleep better?", "What helps me sleep better at night?", 1)
    qnli = read_task("qnli", "train", GLUE)
    assert qnli[1] == Example("When did the war end?", "The river flows to the sea.", 1)
    assert TASKS["qnli"].labels[qnli[1].label] == "not_entailment"
    rte = read_task("rte", "dev", GLUE)
    assert [e.label for e in rte] == [0, 1]  # entailment, not_entailment
    wnli = read_task("wnli", "dev", GLUE)
    assert [e.label for e in wnli] == [1, 0]  # WNLI writes 1/0 itself
    assert wnli[0].text_b == "Anna finished work."


def test_mnli_matched_and_mismatched():
    data = load_task("mnli", GLUE)
    assert list(data.dev) == ["dev_matched", "dev_mismatched"]
    labels = TASKS["mnli"].labels
    # train has 12 columns, dev 16: the label is gold_label (the last column) in both.
    assert [labels[e.label] for e in data.train] == [
        "entailment",
        "contradiction",
        "neutral",
        "contradiction",
    ]
    assert [labels[e.label] for e in data.dev["dev_matched"]] == [
        "entailment",
        "contradiction",
        "neutral",
    ]
    assert data.dev["dev_mismatched"][1].text_a == "The word has two meanings."
    assert read_task("mnli", "dev", GLUE) == data.dev["dev_matched"]
    assert read_task("mnli-mm", "dev", GLUE) == data.dev["dev_mismatched"]


def test_task_folder_itself_as_data_dir():
    assert read_task("rte", "train", GLUE / "RTE") == read_task("rte", "train", GLUE)


def _copy(tmp_path: Path, task_dir: str, name: str, text: str) -> Path:
    folder = tmp_path / task_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DistilkitError, match=r"no CoLA train file: looked for .*CoLA/train\.tsv"):
        read_task("cola", "train", tmp_path)


def test_wrong_column_count_names_file_and_line(tmp_path):
    good = (GLUE / "CoLA" / "train.tsv").read_text(encoding="utf-8").splitlines()
    good[2] = "tst01\t1\tmissing a column"
    root = _copy(tmp_path, "CoLA", "train.tsv", "\n".join(good) + "\n")
    with pytest.raises(DistilkitError, match=r"CoLA/train\.tsv:3: expected 4 .* found 3"):
        read_task("cola", "train", root)


def test_wrong_header_is_rejected(tmp_path):
    # A CoLA-style file where SST-2 expects its header: the header check must catch it, not
    # treat the first sentence as a header.
    text = (GLUE / "CoLA" / "train.tsv").read_text(encoding="utf-8")
    root = _copy(tmp_path, "SST-2", "train.tsv", text)
    with pytest.raises(DistilkitError, match=r"SST-2/train\.tsv:1: not a SST-2 header"):
        read_task("sst2", "train", root)


def test_non_numeric_score_names_line(tmp_path):
    lines = (GLUE / "STS-B" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    cells = lines[3].split("\t")
    cells[-1] = "high"
    lines[3] = "\t".join(cells)
    root = _copy(tmp_path, "STS-B", "dev.tsv", "\n".join(lines) + "\n")
    with pytest.raises(
        DistilkitError, match=r"STS-B/dev\.tsv:4: STS-B score 'high' is not a number"
    ):
        read_task("stsb", "dev", root)


def test_unknown_label_names_line(tmp_path):
    lines = (GLUE / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace("not_entailment", "maybe")
    root = _copy(tmp_path, "RTE", "train.tsv", "\n".join(lines) + "\n")
    with pytest.raises(DistilkitError, match=r"RTE/train\.tsv:3: RTE label 'maybe' is not one of"):
        read_task("rte", "train", root)


def test_unknown_split(tmp_path):
    with pytest.raises(DistilkitError, match="has splits train, dev; not 'test'"):
        read_task("cola", "test", GLUE)


def test_hf_source_maps_mnli_labels_by_name(monkeypatch):
    datasets = pytest.importorskip("datasets")
    hub = datasets.Dataset.from_dict(
        {"premise": ["a", "b", "c"], "hypothesis": ["x", "y", "z"], "label": [0, 1, 2]},
        features=datasets.Features(
            {
                "premise": datasets.Value("string"),
                "hypothesis": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
            }
        ),
    )
    calls = []

    def fake_load(path, config, split):
        calls.append((path, config, split))
        return hub

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    got = read_task("mnli", "dev_mismatched", "hf")
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    labels = TASKS["mnli"].labels
    assert [labels[e.label] for e in got] == ["entailment", "neutral", "contradiction"]
    assert got[0] == Example("a", "x", 1)


# ----------------------------------------------------------------------------- generic files


def test_csv_with_quotes_and_auto_split(tmp_path):
    path = tmp_path / "reviews.csv"
    rows = ["review,sentiment"] + [
        f'"Film {i}, with a comma and ""quotes""",{"pos" if i % 2 else "neg"}' for i in range(20)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    opts = ClassificationOptions(text_column="review", label_column="sentiment", dev_fraction=0.25)
    data = load_task("classification", path, opts)
    assert data.spec.labels == ("neg", "pos")
    assert len(data.train) == 15 and len(data.dev["dev"]) == 5
    assert data.train[0].text_a.startswith("Film ") and '"quotes"' in data.train[0].text_a
    # Deterministic and disjoint: every seed of a fine-tune sees the same split.
    again = load_task("classification", path, opts)
    assert again.dev == data.dev
    texts = {e.text_a for e in data.train}
    assert not texts & {e.text_a for e in data.dev["dev"]}
    other = load_task(
        "classification",
        path,
        ClassificationOptions(
            text_column="review", label_column="sentiment", dev_fraction=0.25, split_seed=1
        ),
    )
    assert other.dev != data.dev


def test_jsonl_folder_with_dev_and_pairs(tmp_path):
    def dump(name, items):
        (tmp_path / name).write_text("\n".join(json.dumps(x) for x in items) + "\n")

    dump("train.jsonl", [{"q": f"q{i}", "a": f"a{i}", "y": i % 3} for i in range(6)])
    dump("dev.jsonl", [{"q": "q", "a": "a", "y": 2}])
    opts = ClassificationOptions(text_column="q", text_pair_column="a", label_column="y")
    data = load_task("classification", tmp_path, opts)
    assert data.spec.labels == ("0", "1", "2") and data.spec.num_labels == 3
    assert data.spec.is_pair
    assert data.dev["dev"] == [Example("q", "a", 2)]
    assert read_task("classification", "train", tmp_path, opts)[4] == Example("q4", "a4", 1)


def test_generic_errors_name_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "ok", "label": 1}\n{"text": "bad"\n', encoding="utf-8")
    with pytest.raises(DistilkitError, match=r"train\.jsonl:2: invalid JSON"):
        load_task("classification", path)
    path.write_text('{"text": "ok", "label": 1}\n{"txt": "x", "label": 0}\n', encoding="utf-8")
    with pytest.raises(DistilkitError, match=r"train\.jsonl:2: no field 'text'"):
        load_task("classification", path)
    tsv = tmp_path / "data.tsv"
    tsv.write_text("sentence\tlabel\nfine\t1\n", encoding="utf-8")
    with pytest.raises(DistilkitError, match=r"data\.tsv:1: no column 'text'"):
        load_task("classification", tsv)
    tsv.write_text("text\tlabel\na\t1\nb\t0\nc\n", encoding="utf-8")
    with pytest.raises(DistilkitError, match=r"data\.tsv:4: wrong number of columns"):
        load_task("classification", tsv)
    fixed = ClassificationOptions(labels=["0", "1"])
    tsv.write_text("text\tlabel\na\t1\nb\t0\nc\t7\n", encoding="utf-8")
    with pytest.raises(DistilkitError, match=r"data\.tsv:4: label '7' is not one of 0, 1"):
        load_task("classification", tsv, fixed)


# ----------------------------------------------------------------------------- label spellings


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("1", "1"),
        ("1.0", "1"),
        (" 1 ", "1"),
        ("+1", "1"),
        ("1e0", "1"),
        ("01", "1"),
        (1.0, "1"),
        ("-0.0", "0"),
        ("0.50", "0.5"),
        (True, "true"),
        ("pos", "pos"),
        (" Pos ", "Pos"),  # names keep their case: only white space goes
        ("nan", "nan"),  # a word, not a number
        ("1_0", "1_0"),
    ],
)
def test_canonical_label(raw, canonical):
    assert canonical_label(raw) == canonical


def test_numeric_labels_spelt_differently_are_one_class(tmp_path):
    # pandas writes 1.0 for 1, people pad cells, JSON has 1 and 1.0 and "1": all one class.
    (tmp_path / "train.csv").write_text(
        "text,label\na,1\nb,1.0\nc,0\nd, 0 \ne,+1\nf,0.0\n", encoding="utf-8"
    )
    rows = [("a", 1), ("b", 1.0), ("c", "0"), ("d", " 1 "), ("e", 0.0)]
    (tmp_path / "dev.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "label": y}) for t, y in rows) + "\n", encoding="utf-8"
    )
    data = load_task("classification", tmp_path)
    assert data.spec.labels == ("0", "1") and data.spec.num_labels == 2
    assert [e.label for e in data.train] == [1, 1, 0, 0, 1, 0]
    assert [e.label for e in data.dev["dev"]] == [1, 1, 0, 1, 0]


def test_numeric_labels_sort_by_value():
    from distilkit.tasks import _discover_labels

    rows = [("t", None, y, f"f:{i}") for i, y in enumerate(["10", "2", "-1", "2.5"])]
    assert _discover_labels(Path("f"), rows, "label") == ("-1", "2", "2.5", "10")


def test_a_label_column_of_numbers_and_names_is_refused(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\na,1\nb,pos\nc,0\nd,neg\n", encoding="utf-8")
    with pytest.raises(DistilkitError) as exc:
        load_task("classification", path)
    assert str(exc.value) == (
        f"{path}: label column 'label' mixes numbers and text (1 at {path}:2, 'pos' at {path}:3), "
        "so its classes are ambiguous; make the column all numbers or all names, or list the "
        "classes with classification.labels=[...]"
    )
    # Listing the classes settles it: every value must then be one of them.
    data = load_task(
        "classification", path, ClassificationOptions(labels=["neg", "pos", "0", "1.0"])
    )
    assert data.spec.labels == ("neg", "pos", "0", "1")
    assert len(data.train) + len(data.dev["dev"]) == 4


def test_string_labels_stay_as_written(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"text": str(i), "label": y} for i, y in enumerate(["Pos", "pos", " neg", "neg"] * 3)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert load_task("classification", path).spec.labels == ("Pos", "neg", "pos")


def test_fixed_labels_naming_a_class_twice_are_refused(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\na,1\nb,0\n", encoding="utf-8")
    with pytest.raises(DistilkitError, match=r"classification.labels .* names a class twice"):
        load_task("classification", path, ClassificationOptions(labels=["0", "1", "1.0"]))


def test_glue_labels_written_as_floats(tmp_path):
    root = _copy(tmp_path, "SST-2", "dev.tsv", "sentence\tlabel\ngood\t1.0\nbad\t0.0\nok\t 1\n")
    assert [e.label for e in read_task("sst2", "dev", root)] == [1, 0, 1]
    root = _copy(tmp_path, "SST-2", "dev.tsv", "sentence\tlabel\ngood\t1\nbad\t2\n")
    with pytest.raises(
        DistilkitError, match=r"SST-2/dev\.tsv:3: SST-2 label '2' is not one of 0, 1"
    ):
        read_task("sst2", "dev", root)


@pytest.mark.parametrize(
    ("score", "message"),
    [
        ("inf", "STS-B score 'inf' is not a finite number"),
        ("-Infinity", "STS-B score '-Infinity' is not a finite number"),
        ("nan", "STS-B score 'nan' is not a finite number"),
        ("", "STS-B score is empty"),
    ],
)
def test_non_finite_scores_name_file_and_row(tmp_path, score, message):
    lines = (GLUE / "STS-B" / "train.tsv").read_text(encoding="utf-8").splitlines()
    cells = lines[2].split("\t")
    cells[-1] = score
    lines[2] = "\t".join(cells)
    root = _copy(tmp_path, "STS-B", "train.tsv", "\n".join(lines) + "\n")
    with pytest.raises(DistilkitError) as exc:
        read_task("stsb", "train", root)
    assert str(exc.value) == f"{root / 'STS-B' / 'train.tsv'}:3: {message}"


def test_empty_and_header_only_files(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DistilkitError, match=r"train\.csv: file is empty"):
        load_task("classification", path)
    path.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DistilkitError, match=r"train\.csv: no rows"):
        load_task("classification", path)
    root = _copy(tmp_path, "SST-2", "train.tsv", "sentence\tlabel\n")
    with pytest.raises(DistilkitError, match=r"SST-2/train\.tsv: no examples after the header"):
        read_task("sst2", "train", root)
