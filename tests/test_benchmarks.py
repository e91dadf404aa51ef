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
    # By default the reference runs in both of its L_ce modes, and ratios are taken against
    # the faster of the two.
    assert set(saved["summary"]) == {"a:auto", "b:fp32", "b:fp32+ce-all"}
    for k in ("ce", "mlm", "cos", "ce-all"):
        assert saved["same_losses"][k]["abs_diff"] < 1e-4
    base = saved["baseline"]
    assert base in ("b:fp32", "b:fp32+ce-all")
    speeds = {n: out["summary"][n]["tokens_per_s"] for n in ("b:fp32", "b:fp32+ce-all")}
    assert speeds[base] == max(speeds.values())
    a, b = out["summary"]["a:auto"], out["summary"][base]
    assert a["precision"] == "fp32" or a["precision"] == "bf16"
    assert a["tokens_per_s"] > 0 and b["tokens_per_cpu_s"] > 0
    assert b["vs_" + base]["tokens_per_s"] == pytest.approx(1.0)
    assert a["vs_" + base]["tokens_per_cpu_s"] > 0
    assert {r["timed_steps"] for r in out["results"]} == {2}


def test_reference_batches_group_by_length_like_the_reference():
    """(b)'s default batches (``group_by_size``): lengths within one 4-token bin, every
    sequence once per epoch; ``random-batches`` mixes lengths."""
    import numpy as np

    throughput = _load("throughput")
    rng = np.random.default_rng(0)

    class Data:
        lengths = rng.integers(12, 129, size=400)

        def __len__(self):
            return len(self.lengths)

        def __getitem__(self, i):
            return np.full(self.lengths[i], 7, dtype=np.int64)

    data = Data()
    bins = throughput.REFERENCE_BINS
    grouped = throughput._reference_batches(data, 8, 0, seed=1)
    seen, mixed = 0, 0
    while seen < len(data):
        ids, lengths = next(grouped)
        seen += len(lengths)
        groups = set(np.searchsorted(bins, lengths.numpy(), side="right").tolist())
        mixed += len(groups) > 1
        assert ids.shape == (len(lengths), int(lengths.max()))
    assert seen == len(data)  # one epoch: the leftovers of every bin come out at its end
    assert mixed <= len(set(np.searchsorted(bins, data.lengths, side="right").tolist()))

    def padding(batches) -> float:
        shapes = [(ids.numel(), int(ln.sum())) for ids, ln in (next(batches) for _ in range(20))]
        return 1 - sum(real for _, real in shapes) / sum(slots for slots, _ in shapes)

    random = throughput._reference_batches(data, 8, 0, seed=1, group_by_size=False)
    assert padding(throughput._reference_batches(data, 8, 0, seed=1)) < 0.5 * padding(random)


def test_variants_name_the_reference_modes():
    throughput = _load("throughput")
    v = throughput.parse_variant("b:fp32+ce-all+random-batches")
    assert (v["restrict_ce_to_mask"], v["group_by_size"]) == (False, False)
    v = throughput.parse_variant("a:bf16+compile")
    assert (v["compile"], v["restrict_ce_to_mask"], v["group_by_size"]) == (True, True, True)
    with pytest.raises(SystemExit, match="no random-batches option"):
        throughput.parse_variant("a:fp32+random-batches")


@pytest.mark.parametrize("restrict", [True, False])
def test_reference_losses_match_plain_formulas(restrict):
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
        Fake(s_logits, s_h),
        Fake(t_logits, t_h),
        torch.ones(v),
        {"pad": 0, "mask": 1},
        v,
        restrict_ce_to_mask=restrict,
    )
    got = ref.losses(None, am, labels)
    sel = labels > -1
    ce_rows = sel if restrict else am  # masked targets, or every real token
    torch.testing.assert_close(got["ce"], soft_target_kl(s_logits[ce_rows], t_logits[ce_rows], 2.0))
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


def test_omp_wait_policy_summary_and_load():
    """The wait-policy script's pieces: medians and ratios per load, and a load that is gone
    when its block ends (no timing asserted)."""
    omp = _load("omp_wait_policy")
    results = [
        {"load": load, "policy": pol, "tokens_per_s": tps, "tokens_per_cpu_s": tpc}
        for load, pol, tps, tpc in [
            ("none", "default", 100, 50),
            ("none", "default", 120, 60),
            ("none", "PASSIVE", 110, 110),
            ("spin", "default", 30, 10),
            ("spin", "PASSIVE", 60, 40),
        ]
    ]
    summary = omp.summarise(results, ["none", "spin"], ["default", "PASSIVE"])
    assert summary["none"]["default"]["tokens_per_s"] == 110  # median of 100 and 120
    assert summary["spin"]["PASSIVE"]["vs_default"] == {
        "tokens_per_s": 2.0,
        "tokens_per_cpu_s": 4.0,
    }

    with omp.load("spin", 1) as procs:
        assert len(procs) == 1 and procs[0].poll() is None  # spinning
    assert procs[0].poll() is not None  # killed and reaped


def test_recipe_probe_loads_and_refuses_unknown_keys(monkeypatch, tmp_path):
    probe = _load("demo_recipe_probe")
    monkeypatch.setattr("sys.argv", ["p", str(tmp_path), str(tmp_path / "o"), '{"lrr": 1}'])
    with pytest.raises(SystemExit, match="unknown keys: lrr"):
        probe.main()
    assert not (tmp_path / "o").exists()
