"""The benchmark scripts run end to end in their tiny modes (no timing asserts)."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_tiny_runs_both_paths_and_checks_equal_losses(tiny_teacher, tiny_data, tmp_path):
    throughput = _load("throughput")
    out = throughput.main(
        [
            *("--teacher", str(tiny_teacher), "--data", str(tiny_data)),
            *("--work", str(tmp_path / "work"), "--json", str(tmp_path / "r.json")),
            *shlex.split(
                "--batch-size 4 --steps 2 --warmup 1 --repeats 1 --threads 1 --in-process"
            ),
        ]
    )
    saved = json.loads((tmp_path / "r.json").read_text())
    assert set(saved["summary"]) == {"a:auto", "b:fp32"}
    for k in ("ce", "mlm", "cos"):
        assert saved["same_losses"][k]["abs_diff"] < 1e-4
    a, b = out["summary"]["a:auto"], out["summary"]["b:fp32"]
    assert a["precision"] == "fp32" or a["precision"] == "bf16"
    assert a["tokens_per_s"] > 0 and b["tokens_per_cpu_s"] > 0
    assert b["vs_b:fp32"]["tokens_per_s"] == pytest.approx(1.0)
    assert a["vs_b:fp32"]["tokens_per_cpu_s"] > 0
    # Length grouping: distilkit's batches never carry more padding than random ones.
    assert a["padding"] <= b["padding"] + 1e-9
    assert {r["timed_steps"] for r in out["results"]} == {2}


def test_reference_losses_match_plain_formulas():
    """(b)'s loss code (KLDivLoss batchmean, CE ignore_index, CosineEmbeddingLoss) is the
    triple loss of the spec: check it against distilkit's pure functions on random tensors."""
    import torch

    from distilkit.losses import hidden_cosine, mlm_cross_entropy, soft_target_kl

    throughput = _load("throughput")
    g = torch.Generator().manual_seed(0)
    b, length, v, h = 2, 6, 11, 4
    s_logits, t_logits = (
        torch.randn(b, length, v, generator=g),
        torch.randn(b, length, v, generator=g),
    )
    s_h, t_h = torch.randn(b, length, h, generator=g), torch.randn(b, length, h, generator=g)
    labels = torch.full((b, length), -100)
    labels[0, 1], labels[1, 4] = 3, 7
    am = torch.ones(b, length, dtype=torch.bool)
    am[1, 5] = False

    class Fake(torch.nn.Module):
        def __init__(self, logits, hidden):
            super().__init__()
            self.out = {"logits": logits, "hidden_states": (hidden,)}

        def forward(self, **kw):
            return self.out

    ref = throughput.ReferenceDistiller(
        Fake(s_logits, s_h), Fake(t_logits, t_h), torch.ones(v), {"pad": 0, "mask": 1}, v
    )
    got = ref.losses(None, am, labels)
    sel = labels > -1
    torch.testing.assert_close(got["ce"], soft_target_kl(s_logits[sel], t_logits[sel], 2.0))
    torch.testing.assert_close(got["mlm"], mlm_cross_entropy(s_logits[sel], labels[sel]))
    torch.testing.assert_close(got["cos"], hidden_cosine(s_h[am], t_h[am]))


def test_gpu_script_dry_run(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert set(result["summary"]) == {"b:fp32", "a:fp32", "a:bf16", "a:fp32+compile"}
    assert result["summary"]["a:bf16"]["precision"] == "bf16"
    assert "x tok/s" in proc.stdout


def test_reference_masking_keeps_padding_and_counts():
    """(b)'s masking: ceil(15%) targets drawn, never on padding, labels -100 elsewhere."""
    import torch

    throughput = _load("throughput")
    ids = torch.randint(5, 50, (3, 10))
    lengths = torch.tensor([10, 7, 4])
    for i, n in enumerate(lengths.tolist()):
        ids[i, n:] = 0
    probs = torch.ones(50)
    probs[:5] = 0
    ref = throughput.ReferenceDistiller(None, None, probs, {"pad": 0, "mask": 4}, 50)
    torch.manual_seed(0)
    masked, attn, labels = ref.prepare_batch_mlm(ids, lengths)
    assert int((labels > -1).sum()) == 4  # ceil(0.15 * 21)
    assert not bool(((labels > -1) & ~attn).any())
    assert torch.equal(masked[~attn], ids[~attn])
