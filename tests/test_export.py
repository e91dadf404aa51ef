"""ONNX export on tiny random models: every head round-trips within tolerance, failures write
nothing, the dev-set metric check runs, and the int8 file exists and stays close."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from distilkit.errors import DistilkitError
from distilkit.export import (
    FP32_FILE,
    INT8_FILE,
    MANIFEST,
    ExportConfig,
    OnnxModel,
    export,
    load_torch_model,
)

GLUE = Path(__file__).parent / "fixtures" / "glue"

# Characters and word pieces: any English text tokenises without [UNK] floods.
VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list(string.ascii_lowercase)
    + ["##" + c for c in string.ascii_lowercase]
    + list(string.digits)
    + list(".,!?'\"-:;()")
)


def tiny_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})


def tiny_model(head: str, family: str, num_labels: int = 2, seed: int = 0):
    """A random 2-layer, hidden-32 model of ``family`` (bert / distilbert) with ``head``."""
    import transformers

    torch.manual_seed(seed)
    if family == "bert":
        config = transformers.BertConfig(
            vocab_size=len(VOCAB),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
            num_labels=num_labels,
        )
        prefix = "Bert"
    else:
        config = transformers.DistilBertConfig(
            vocab_size=len(VOCAB),
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=37,
            max_position_embeddings=64,
            num_labels=num_labels,
        )
        prefix = "DistilBert"
    suffix = {
        "encoder": "Model",
        "sequence-classification": "ForSequenceClassification",
        "question-answering": "ForQuestionAnswering",
        "masked-lm": "ForMaskedLM",
    }[head]
    return getattr(transformers, prefix + suffix)(config).eval()


def save_tiny(
    folder: Path, head: str, family: str, with_tokenizer: bool = True, seed: int = 0
) -> Path:
    tiny_model(head, family, seed=seed).save_pretrained(folder)
    if with_tokenizer:
        tiny_tokenizer().save_pretrained(folder)
    return folder


# head, family, tokenizer: both families, with and without token_type_ids and tokenizer files.
CASES = [
    ("encoder", "bert", True),
    ("sequence-classification", "distilbert", True),
    ("question-answering", "bert", False),
    ("masked-lm", "distilbert", False),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """One export (fp32 + int8) per head, shared by the tests below: export is the slow part."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for head, family, tok in CASES:
        src = save_tiny(root / f"{head}-src", head, family, with_tokenizer=tok)
        extra = {}
        if head == "sequence-classification":
            # The metric check on the SST-2 fixture; a random model may flip any of 4 int8
            # predictions, so only its plumbing is checked here, not a tolerance.
            extra = dict(task="sst2", data_dir=str(GLUE), max_metric_drop=100.0)
        cfg = ExportConfig(model=str(src), out=str(root / f"{head}-onnx"), quantize="int8", **extra)
        export(cfg)
        out[head] = (src, root / f"{head}-onnx")
    return out


@pytest.mark.parametrize("head,family,tok", CASES)
def test_round_trip_each_head(exported, head, family, tok):
    src, out = exported[head]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["head"] == head
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == sorted(
        [FP32_FILE, INT8_FILE]
    )
    # DistilBERT has no segment embeddings: the graph must not ask for token_type_ids.
    expected_inputs = ["input_ids", "attention_mask"] + (
        ["token_type_ids"] if family == "bert" else []
    )
    assert manifest["inputs"] == expected_inputs
    assert manifest["parity"]["fp32"]["max_abs_diff"] <= 1e-4
    # int8 parity of every head type, with the default recipe (per-channel weights)
    assert manifest["parity"]["int8"]["relative_max_diff"] <= 0.25
    assert manifest["int8_recipe"]["matmul_weights"] == "int8, per channel"
    assert manifest["parameters"]["total"] > manifest["parameters"]["without_embeddings"] > 0
    assert (out / "config.json").is_file()
    assert (out / "tokenizer.json").is_file() == tok

    # Dynamic axes: a batch and length the export never saw, padded, against PyTorch.
    model, _ = load_torch_model(src, head)
    ids = torch.randint(5, len(VOCAB), (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    onnx_model = OnnxModel.from_export(out)
    got = onnx_model(**inputs)  # token_type_ids dropped for DistilBERT
    assert onnx_model.input_names == expected_inputs
    with torch.no_grad():
        ref = model(**{k: v for k, v in inputs.items() if k in expected_inputs})
    for name in manifest["outputs"]:
        r = ref[name].numpy()
        assert got[name].shape == r.shape
        real = mask.numpy().astype(bool) if r.ndim >= 2 and r.shape[1] == 9 else slice(None)
        assert np.abs(got[name][real] - r[real]).max() <= 1e-4


def test_metric_check_records_pytorch_and_each_file(exported):
    _, out = exported["sequence-classification"]
    metric = json.loads((out / MANIFEST).read_text())["metric"]
    assert metric["task"] == "sst2" and metric["n_examples"] > 0
    assert set(metric["scores"]) == {"pytorch", FP32_FILE, INT8_FILE}
    # fp32 ONNX computes the same function: the same predictions, so no metric change.
    assert metric["drop_points"][FP32_FILE] == pytest.approx(0.0, abs=1e-9)
    assert metric["prediction_agreement"][FP32_FILE] == 1.0
    assert 0.0 <= metric["prediction_agreement"][INT8_FILE] <= 1.0


def test_parity_failure_raises_and_writes_nothing(exported, tmp_path, monkeypatch):
    """A graph that computes something else (another model's weights) must fail parity, and
    neither the output folder nor a temporary folder may be left behind."""
    import distilkit.export as ex

    other = save_tiny(tmp_path / "other", "encoder", "bert", seed=1)  # same shapes, new weights
    wrong_graph = exported["encoder"][1] / FP32_FILE

    def fake_export(graph, sample, path, opset):
        shutil.copy(wrong_graph, path)

    monkeypatch.setattr(ex, "_torch_to_onnx", fake_export)
    out = tmp_path / "out"
    with pytest.raises(DistilkitError, match="parity check failed for model.onnx"):
        export(ExportConfig(model=str(other), out=str(out)))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["other"]


def test_int8_tolerance_is_enforced(exported, tmp_path, monkeypatch):
    import distilkit.export as ex

    src, done = exported["encoder"]
    monkeypatch.setattr(
        ex, "_torch_to_onnx", lambda g, s, path, o: shutil.copy(done / FP32_FILE, path)
    )
    out = tmp_path / "out"
    with pytest.raises(DistilkitError, match="parity check failed for model.int8.onnx"):
        export(ExportConfig(model=str(src), out=str(out), quantize="int8", int8_rtol=1e-9))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def _tiny_mlm_graph(exported):
    import distilkit.export as ex

    src, out = exported["masked-lm"]
    model, _ = load_torch_model(src, "masked-lm")
    names = ex._input_names(model)
    samples = ex._sample_inputs(model, None, names)
    return ex._Graph(model, names, ("logits",)), samples, out / FP32_FILE


@pytest.mark.parametrize("where", ["padding", "real token"])
def test_masked_lm_parity_reads_real_tokens_only(exported, tmp_path, monkeypatch, where):
    """(B, L, V) vocabulary logits at padded positions mean nothing (they failed the int8 check
    of a real student on their own); any error at a real token must still fail."""
    from distilkit.export import _check_parity

    graph, samples, path = _tiny_mlm_graph(exported)
    assert not bool(samples[0]["attention_mask"].all())  # the parity batch has padding
    run_feed = OnnxModel.run_feed

    def corrupted(self, feed):
        (logits,) = run_feed(self, feed)  # (B, L, V)
        pad = feed["attention_mask"] == 0  # (B, L)
        if where == "padding":
            logits[pad] += 1e3
        else:
            logits[0, 0, 0] += 1e3
        return [logits]

    monkeypatch.setattr(OnnxModel, "run_feed", corrupted)
    cfg = ExportConfig(out=str(tmp_path / "o"))
    if where == "padding":
        result = _check_parity(graph, path, samples, "fp32", cfg)
        assert result["max_abs_diff"] <= 1e-4
    else:
        with pytest.raises(DistilkitError, match="parity check failed for model.onnx"):
            _check_parity(graph, path, samples, "fp32", cfg)


def test_non_finite_int8_output_fails_whatever_the_tolerance(exported, tmp_path, monkeypatch):
    """A NaN difference compares False with any tolerance: it must fail on its own."""
    src, _ = exported["encoder"]
    run_feed = OnnxModel.run_feed

    def nan_in_int8(self, feed):
        outputs = run_feed(self, feed)
        if self.path.name == INT8_FILE:
            outputs[0][0, 0, 0] = np.nan  # (B, L, H), a real token
        return outputs

    monkeypatch.setattr(OnnxModel, "run_feed", nan_in_int8)
    out = tmp_path / "out"
    with pytest.raises(DistilkitError, match="model.int8.onnx: output last_hidden_state has non"):
        export(ExportConfig(model=str(src), out=str(out), quantize="int8", int8_rtol=1e9))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_per_tensor_int8_is_still_available(exported, tmp_path):
    src, _ = exported["sequence-classification"]
    r = export(
        ExportConfig(
            model=str(src), out=str(tmp_path / "o"), quantize="int8", int8_per_channel=False
        )
    )
    manifest = json.loads((r.out_dir / MANIFEST).read_text())
    assert manifest["int8_recipe"]["matmul_weights"] == "int8, per tensor"
    assert r.parity["int8"]["relative_max_diff"] <= 0.25


def test_keep_ffn_output_finds_one_projection_per_layer(exported):
    import onnx

    from distilkit.export import _ffn_output_matmuls

    _, out = exported["encoder"]
    names = _ffn_output_matmuls(onnx.load(str(out / FP32_FILE)))
    assert len(names) == 2  # two layers, one FFN down-projection each


def test_refuses_to_export_an_untrained_head(tmp_path):
    src = save_tiny(tmp_path / "enc", "encoder", "bert", with_tokenizer=False)
    with pytest.raises(DistilkitError, match="no trained weights for the sequence-classification"):
        export(
            ExportConfig(model=str(src), out=str(tmp_path / "o"), head="sequence-classification")
        )


def test_refuses_a_non_empty_output_without_overwrite(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DistilkitError, match="not empty"):
        export(ExportConfig(model=str(tmp_path), out=str(out)))
    assert (out / "keep.txt").is_file()


def test_overwrite_replaces_only_its_own_export_never_the_model(tmp_path):
    src = save_tiny(tmp_path / "enc", "encoder", "bert")
    before = sorted(p.name for p in src.iterdir())
    # --out is the model folder: refused, the model untouched (not even a lock file left).
    with pytest.raises(DistilkitError, match="holds an input"):
        export(ExportConfig(model=str(src), out=str(src), overwrite=True))
    assert sorted(p.name for p in src.iterdir()) == before
    # A folder of the user's files: refused even with --overwrite.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(DistilkitError, match="did not write"):
        export(ExportConfig(model=str(src), out=str(mine), overwrite=True))
    assert (mine / "notes.txt").read_text() == "mine"
    # Its own earlier export: replaced with --overwrite, refused without.
    out = tmp_path / "o"
    export(ExportConfig(model=str(src), out=str(out), head="encoder"))
    with pytest.raises(DistilkitError, match="not empty"):
        export(ExportConfig(model=str(src), out=str(out), head="encoder"))
    export(ExportConfig(model=str(src), out=str(out), head="encoder", overwrite=True))
    assert (out / "export.json").is_file() and not (out / ".tmp-export").exists()


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    from distilkit.cli import main

    code = main(["export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "model path does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_default_minilm_student_int8_with_its_own_head(tmp_path):
    """The first thing a user tries: init-student from MiniLM, export int8, default head."""
    from distilkit.student import init_student

    init_student("minilm", tmp_path / "student")
    r = export(
        ExportConfig(model=str(tmp_path / "student"), out=str(tmp_path / "o"), quantize="int8")
    )
    assert r.head == "masked-lm"
    assert r.parity["int8"]["relative_max_diff"] <= 0.25


@pytest.mark.slow
def test_minilm_encoder_int8(tmp_path):
    r = export(ExportConfig(model="minilm", out=str(tmp_path / "m"), quantize="int8"))
    assert r.parity["fp32"]["max_abs_diff"] < 1e-4
    assert r.files[INT8_FILE] < 0.3 * r.files[FP32_FILE]
