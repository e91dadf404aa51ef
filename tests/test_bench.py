"""bench on tiny models: PyTorch, ONNX fp32 and int8 rows in one table, every field written,
every row naming the file it timed, quality measured as `distilkit zeroshot` measures it.

No assertion is about time: only that each measurement exists and has the right form.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from distilkit.bench import BenchConfig, bench
from distilkit.config import load_config
from distilkit.errors import DistilkitError
from distilkit.export import FP32_FILE, INT8_FILE, ExportConfig, export

REPO = Path(__file__).resolve().parents[1]
GLUE = Path(__file__).parent / "fixtures" / "glue"
VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list(string.ascii_lowercase)
    + ["##" + c for c in string.ascii_lowercase]
    + list(string.digits)
    + list(".,!?'\"-:;()")
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT teacher (2 layers), a 1-layer DistilBERT student and its ONNX export."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("bench")
    tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    torch.manual_seed(0)
    teacher = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=len(VOCAB),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    )
    student = transformers.DistilBertModel(
        transformers.DistilBertConfig(
            vocab_size=len(VOCAB),
            dim=32,
            n_layers=1,
            n_heads=4,
            hidden_dim=37,
            max_position_embeddings=64,
        )
    )
    for name, model in (("teacher", teacher), ("student", student)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    export(ExportConfig(model=str(root / "student"), out=str(root / "onnx"), quantize="int8"))
    return {"teacher": root / "teacher", "student": root / "student", "onnx": root / "onnx"}


def small(paths: dict[str, Path], out: Path, **kw) -> BenchConfig:
    cfg = dict(
        models=[
            f"teacher={paths['teacher']}",
            f"student={paths['student']}",
            str(paths["onnx"]),  # an export folder: one row per file, labels from the path
        ],
        out=str(out),
        data_dir=str(GLUE),
        repeats=2,
        warmup=2,
        threads=1,
        throughput_batch=2,
        throughput_seq=16,
        throughput_iters=2,
        device="cpu",
    )
    cfg.update(kw)
    return BenchConfig(**cfg)


def test_bench_writes_every_field(models, tmp_path):
    """Isolated workers (one per model, as in real runs): every field, memory included."""
    cfg = small(
        models,
        tmp_path,
        models=[f"teacher={models['teacher']}", f"int8={models['onnx'] / INT8_FILE}"],
    )
    r = bench(cfg)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [m["label"] for m in data["models"]] == ["teacher", "int8"]
    assert [m["format"] for m in data["models"]] == ["safetensors fp32", "onnx int8"]
    assert [m["file"] for m in data["models"]] == [
        str(models["teacher"] / "model.safetensors"),
        str(models["onnx"] / INT8_FILE),
    ]
    for m in data["models"]:
        assert m["parameters"]["total"] > m["parameters"]["without_embeddings"] > 0
        assert m["size_bytes"] > 0 and m["size_mb"] > 0
        assert m["runtime"] and m["head"] == "encoder" and m["load_s"] > 0
        lat = m["latency"]
        assert lat["examples"] == 4  # the STS-B fixture's dev pairs
        assert len(lat["total_s_runs"]) == 2
        assert 0 < lat["per_example_ms_median"] <= lat["per_example_ms_p90"]
        assert lat["total_s"] > 0 and lat["per_example_ms_mean"] > 0
        tp = m["throughput"]
        assert (tp["batch"], tp["seq"]) == (2, 16)
        assert tp["sequences_per_s"] > 0 and tp["tokens_per_s"] > 0 and tp["batch_s_median"] > 0
        mem = m["memory"]
        assert mem["isolated"] and mem["peak_rss_mb"] > 0
        assert mem["model_rss_mb"] is not None and mem["loaded_rss_mb"] is not None
        assert mem["peak_cuda_mb"] is None  # CPU run
        assert set(m["ratios"]) == {
            "speedup_latency",
            "speedup_latency_median",
            "speedup_throughput",
            "size_ratio",
            "parameters_ratio",
            "quality_points",
        }
        ratios = {k: v for k, v in m["ratios"].items() if k != "quality_points"}
        assert all(v is not None and v > 0 for v in ratios.values())
        assert m["ratios"]["quality_points"] is not None
        assert m["device"] == "cpu" and m["threads"] == 1
        q = m["quality"]
        assert q["task"] == "stsb-zeroshot" and q["pairs"] == 4
        assert -1 <= q["spearman"] <= 1 and -1 <= q["pearson"] <= 1
    assert data["models"][0]["ratios"]["speedup_latency"] == pytest.approx(1.0)
    env = data["environment"]
    for key in (
        "date",
        "cpu",
        "cpus_usable",
        "loadavg_start",
        "loadavg_end",
        "torch",
        "onnxruntime",
    ):
        assert env[key] is not None
    assert data["protocol"]["isolated_processes"] is True
    md = (tmp_path / "bench.md").read_text()
    assert "| teacher |" in md and "| int8 |" in md and "load average" in md
    assert f"`{models['onnx'] / INT8_FILE}`" in md and "STS-B 0-shot" in md
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.files["png"] == tmp_path / "bench.png"


def test_bench_one_table_pytorch_onnx_int8(models, tmp_path):
    """Teacher fp32 -> student fp32 -> student ONNX -> student int8, in-process (fast): the
    export folder gives one row per file, and each row names the file it timed."""
    r = bench(small(models, tmp_path, isolate=False, plot=False))
    rows = r.models
    assert [m["label"] for m in rows] == [
        "teacher",
        "student",
        "onnx/model.onnx",
        "onnx/model.int8.onnx",
    ]
    assert [m["format"] for m in rows] == [
        "safetensors fp32",
        "safetensors fp32",
        "onnx fp32",
        "onnx int8",
    ]
    assert [m["file"] for m in rows[2:]] == [
        str(models["onnx"] / FP32_FILE),
        str(models["onnx"] / INT8_FILE),
    ]
    # One student, three files: the same parameters, and int8 is the smallest file.
    s, fp32, int8 = rows[1:]
    assert s["parameters"] == fp32["parameters"] == int8["parameters"]
    assert int8["size_bytes"] < fp32["size_bytes"]
    assert rows[1]["ratios"]["parameters_ratio"] < 1
    # A process-wide peak is not one model's: reported as unknown rather than misleading.
    assert all(m["memory"]["peak_rss_mb"] is None for m in rows)
    assert not (tmp_path / "bench.png").exists()
    # Quality: the student's PyTorch row is what `distilkit zeroshot` reports, and its fp32 ONNX
    # file computes the same function, so the same score.
    from distilkit.zeroshot import ZeroShotConfig, zeroshot

    want = zeroshot(
        ZeroShotConfig(model=str(models["student"]), data_dir=str(GLUE), out=str(tmp_path / "zs"))
    )
    assert s["quality"]["spearman"] == pytest.approx(want["metrics"]["spearman"], abs=1e-9)
    assert fp32["quality"]["spearman"] == pytest.approx(want["metrics"]["spearman"], abs=1e-6)
    assert fp32["ratios"]["quality_points"] == pytest.approx(
        100 * (fp32["quality"]["spearman"] - rows[0]["quality"]["spearman"])
    )


def test_bench_label_on_an_export_folder_names_each_file(models, tmp_path):
    """'int8=FOLDER' once timed the folder's fp32 file under the int8 label: now each file is
    a row of its own, and naming the file times only that one."""
    cfg = small(
        models,
        tmp_path,
        models=[f"int8={models['onnx']}", f"only={models['onnx'] / INT8_FILE}"],
        isolate=False,
        plot=False,
        quality=False,
    )
    rows = bench(cfg).models
    assert [(m["label"], Path(m["file"]).name, m["format"]) for m in rows] == [
        ("int8/model.onnx", FP32_FILE, "onnx fp32"),
        ("int8/model.int8.onnx", INT8_FILE, "onnx int8"),
        ("only", INT8_FILE, "onnx int8"),
    ]
    assert all(m["quality"] is None for m in rows)
    md = (tmp_path / "bench.md").read_text()
    assert "STS-B 0-shot" not in md and "Quality not measured" in md


def test_bench_quality_needs_the_encoder_output(models, tmp_path):
    """A row timed with a task head has no sentence embeddings: quality says why it is absent."""
    import transformers

    mlm = tmp_path / "mlm"
    transformers.DistilBertForMaskedLM(
        transformers.AutoConfig.from_pretrained(models["student"])
    ).save_pretrained(mlm)
    transformers.AutoTokenizer.from_pretrained(models["student"]).save_pretrained(mlm)
    cfg = small(models, tmp_path / "b", models=[str(mlm)], isolate=False, plot=False, head="auto")
    (row,) = bench(cfg).models
    assert row["head"] == "masked-lm"
    assert row["quality"]["spearman"] is None and "masked-lm" in row["quality"]["skipped"]
    assert "Not measured for mlm" in (tmp_path / "b" / "bench.md").read_text()


def test_bench_errors(models, tmp_path):
    with pytest.raises(DistilkitError, match="needs data_dir"):
        bench(small(models, tmp_path, data_dir=""))
    with pytest.raises(DistilkitError, match="share a label"):
        bench(small(models, tmp_path, models=[f"a={models['student']}", f"a={models['teacher']}"]))
    with pytest.raises(DistilkitError, match="ONNX file not found"):
        bench(small(models, tmp_path, models=[str(tmp_path / "nope.onnx")]))
    with pytest.raises(DistilkitError, match="exceeds the model's 64 positions"):
        bench(
            small(
                models, tmp_path, models=[str(models["student"])], isolate=False, throughput_seq=128
            )
        )


def test_bench_output_folder_is_checked_before_any_timing(models, tmp_path):
    import os

    one = {"models": [str(models["student"])], "isolate": False, "quality": False}
    # A folder of the user's files: refused, untouched.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(DistilkitError, match="did not write"):
        bench(small(models, mine, **one))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # Unwritable: one line before the first pass (root ignores permissions: skip then).
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):
            with pytest.raises(DistilkitError, match="cannot write"):
                bench(small(models, locked, **one))
    finally:
        locked.chmod(0o700)
    # A rerun replaces its own earlier results.
    out = tmp_path / "b"
    bench(small(models, out, **one))
    first = (out / "bench.json").read_text()
    bench(small(models, out, **one))
    assert (out / "bench.json").read_text() != first  # rewritten (dates, times differ)


def test_cli_bench_prints_the_table(models, tmp_path, capsys):
    from distilkit.cli import main

    code = main(
        [
            "bench",
            "--model",
            str(models["student"]),
            "--out",
            str(tmp_path),
            "--data-dir",
            str(GLUE),
            "--repeats",
            "1",
            "--threads",
            "1",
            "isolate=false",
            "throughput_seq=8",
            "throughput_batch=2",
            "throughput_iters=1",
            "plot=false",
        ]
    )
    assert code == 0
    assert "| student |" in capsys.readouterr().out


def test_shipped_bench_config_loads():
    cfg = load_config(BenchConfig, REPO / "configs" / "bench_paper.yaml")
    assert cfg.threads >= 1 and cfg.repeats >= 3 and cfg.max_examples == 0
    assert cfg.throughput_batch == 32 and cfg.throughput_seq == 128
