from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, pipeline

from distilkit.distill import DistillConfig, DistillObjective, LMNet, LossConfig, distill
from distilkit.errors import DistilkitError
from distilkit.loop import OptimConfig, TrainConfig, index_batch
from distilkit.losses import hidden_cosine, mlm_cross_entropy, soft_target_kl
from distilkit.student import init_student

PAD, MASK = 0, 4


def _masked_batch(seed: int, b: int = 3, length: int = 12, vocab: int = 100) -> dict:
    """A padded batch with ~30% targets, built by hand (independent of the masking code)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, length), generator=g)
    ids[:, 0] = 2
    ids[0, 8:] = PAD
    targets = (torch.rand(b, length, generator=g) < 0.3) & (ids != PAD)
    targets[:, 0] = False
    targets[1, 3] = True
    masked = torch.where(targets, torch.full_like(ids, MASK), ids)
    return {"ids": ids, "masked": masked, "targets": targets}


def _reference_losses(student, teacher, raw, loss: LossConfig) -> dict:
    """The reference computation: full-vocabulary logits everywhere, then select positions."""
    am = (raw["ids"] != PAD).long()
    s = student(input_ids=raw["masked"], attention_mask=am, output_hidden_states=True)
    with torch.no_grad():
        t = teacher(input_ids=raw["masked"], attention_mask=am, output_hidden_states=True)
    sel = raw["targets"] if loss.restrict_ce_to_mask else am.bool()
    out = {
        "ce": soft_target_kl(s.logits[sel], t.logits[sel], loss.temperature),
        "mlm": mlm_cross_entropy(s.logits[raw["targets"]], raw["ids"][raw["targets"]]),
        "cos": hidden_cosine(s.hidden_states[-1][am.bool()], t.hidden_states[-1][am.bool()]),
    }
    return out


@pytest.fixture()
def pair(tiny_teacher, tmp_path):
    init_student(tiny_teacher, tmp_path / "s")
    student = AutoModelForMaskedLM.from_pretrained(tmp_path / "s")
    teacher = AutoModelForMaskedLM.from_pretrained(tiny_teacher).eval()
    return student, teacher


@pytest.mark.parametrize("restrict", [True, False])
def test_logits_only_at_used_positions_give_the_same_losses(pair, restrict):
    student, teacher = pair
    student.eval()
    loss = LossConfig(alpha_ce=5.0, restrict_ce_to_mask=restrict)
    obj = DistillObjective(student, teacher, loss)
    raw = _masked_batch(0)
    b = index_batch(raw["ids"], raw["masked"], raw["targets"], PAD)
    norms = {k: None for k in obj.part_names}
    got = obj.losses(obj.student, b, norms)
    ref = _reference_losses(student, teacher, raw, loss)
    for k in ("ce", "mlm", "cos"):
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5)


def test_lmnet_rows_equal_full_logits_then_select(pair):
    student, _ = pair
    student.eval()
    raw = _masked_batch(1)
    b = index_batch(raw["ids"], raw["masked"], raw["targets"], PAD)
    _, rows_logits = LMNet(student)(b["input_ids"], b["attention_mask"], b["target_idx"])
    full = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(
        rows_logits, full.reshape(-1, full.shape[-1])[b["target_idx"]], atol=1e-5, rtol=1e-5
    )


def test_accumulation_equals_one_big_batch(pair):
    student, teacher = pair
    student.train()  # dropout is 0 in the tiny models, so train mode is deterministic
    obj = DistillObjective(student, teacher, LossConfig(alpha_ce=5.0))
    parts = [_masked_batch(s, b=2, length=10) for s in (10, 11)]
    micro = [index_batch(p["ids"], p["masked"], p["targets"], PAD) for p in parts]
    big = index_batch(
        *(torch.cat([p[k] for p in parts]) for k in ("ids", "masked", "targets")), PAD
    )

    def grads(batches):
        student.zero_grad()
        rows = {n: 0 for n in obj.part_names}
        for b in batches:
            for n, v in obj.rows(b).items():
                rows[n] += v
        for b in batches:
            out = obj.losses(obj.student, b, rows)
            sum(obj.weights[n] * out[n] for n in out).backward()
        return [p.grad.clone() for p in student.parameters() if p.grad is not None]

    g_micro, g_big = grads(micro), grads([big])
    assert len(g_micro) == len(g_big) > 10
    for a, b in zip(g_micro, g_big):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def _cfg(tiny_teacher, tiny_data, out, **train) -> DistillConfig:
    base = dict(
        batch_size=8,
        max_steps=20,
        log_every=1,
        eval_batches=4,
        precision="fp32",
        optim=OptimConfig(lr=2e-3, warmup_ratio=0.1),
    )
    base.update(train)
    return DistillConfig(
        teacher=str(tiny_teacher), data=str(tiny_data), out_dir=str(out), train=TrainConfig(**base)
    )


def _train_losses(out, key: str = "loss") -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if r["kind"] == "train"]


def test_twenty_steps_loss_falls_and_output_is_a_usable_model(tiny_teacher, tiny_data, tmp_path):
    # A randomly initialised student has something to learn from the teacher (a copied one
    # starts at L_ce = L_cos = 0, and random tiny-corpus words leave L_mlm at its entropy floor).
    init_student(tiny_teacher, tmp_path / "init")
    copied = AutoModelForMaskedLM.from_pretrained(tmp_path / "init")
    torch.manual_seed(0)
    random_student = type(copied)(copied.config)
    assert not torch.equal(random_student.vocab_transform.weight, copied.vocab_transform.weight)
    random_student.save_pretrained(tmp_path / "random")
    for f in (tmp_path / "init").glob("tok*"):
        (tmp_path / "random" / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "run"
    cfg = _cfg(tiny_teacher, tiny_data, out)
    cfg.student = str(tmp_path / "random")
    r = distill(cfg)
    assert r.steps == 20
    losses = _train_losses(out)
    assert len(losses) == 20
    assert sum(losses[-4:]) < sum(losses[:4])
    # The random tiny teacher's logits are near uniform (L_ce ~ 0.01 throughout); its hidden
    # states are not, so L_cos shows the student moving towards the teacher.
    cos = _train_losses(out, "loss_cos")
    assert sum(cos[-4:]) < 0.7 * sum(cos[:4]), cos
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert type(model).__name__ == "DistilBertForMaskedLM"
    assert model.config.n_layers == 2
    fill = pipeline("fill-mask", model=str(out), tokenizer=str(out))
    assert len(fill("the river [MASK] .")) == 5
    for name in ("README.md", "loss_curve.png", "results.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").iterdir())
    assert {"agreement", "student_mlm_loss"} <= set(r.final_eval)


def test_resume_continues_at_the_right_step_and_matches_bit_for_bit(
    tiny_teacher, tiny_data, tmp_path
):
    distill(
        _cfg(
            tiny_teacher,
            tiny_data,
            tmp_path / "a",
            max_steps=8,
            grad_accumulation=2,
            checkpoint_every=3,
        )
    )
    halted = distill(
        _cfg(
            tiny_teacher,
            tiny_data,
            tmp_path / "b",
            max_steps=8,
            grad_accumulation=2,
            checkpoint_every=3,
            halt_at_step=5,
        )
    )
    assert halted.halted and halted.steps == 5
    assert not (tmp_path / "b" / "config.json").exists()  # nothing that looks like a model
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert ckpts == ["step-00000003", "step-00000005"]
    resumed = distill(
        _cfg(
            tiny_teacher,
            tiny_data,
            tmp_path / "b",
            max_steps=8,
            grad_accumulation=2,
            checkpoint_every=3,
        ),
        resume=True,
    )
    assert resumed.steps == 8
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert steps == list(range(1, 9))
    a = AutoModelForMaskedLM.from_pretrained(tmp_path / "a").state_dict()
    b = AutoModelForMaskedLM.from_pretrained(tmp_path / "b").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_headless_teacher_turns_off_ce_or_refuses_it(headless_teacher, tiny_data, tmp_path, caplog):
    cfg = _cfg(headless_teacher, tiny_data, tmp_path / "a", max_steps=2)
    r = distill(cfg)
    assert "alpha_ce set to 0" in caplog.text and r.steps == 2
    cfg = _cfg(headless_teacher, tiny_data, tmp_path / "b", max_steps=2)
    cfg.loss.alpha_ce = 5.0
    with pytest.raises(DistilkitError, match="no masked-LM head"):
        distill(cfg)


def test_refuses_to_mix_runs_and_to_resume_from_nothing(tiny_teacher, tiny_data, tmp_path):
    distill(_cfg(tiny_teacher, tiny_data, tmp_path / "a", max_steps=2))
    with pytest.raises(DistilkitError, match="already holds"):
        distill(_cfg(tiny_teacher, tiny_data, tmp_path / "a", max_steps=2))
    with pytest.raises(DistilkitError, match="no usable checkpoint"):
        distill(_cfg(tiny_teacher, tiny_data, tmp_path / "c", max_steps=2), resume=True)


def test_validation_set_is_fixed_and_uniform_whatever_the_seed_or_batch_size(
    tiny_teacher, tiny_data, tmp_path
):
    from distilkit.data import TokenDataset
    from distilkit.loop import _validation_batches

    # The teacher is frozen, so its held-out accuracy is a fingerprint of the masks.
    a = distill(_cfg(tiny_teacher, tiny_data, tmp_path / "a", max_steps=2, seed=1, batch_size=4))
    b = distill(_cfg(tiny_teacher, tiny_data, tmp_path / "b", max_steps=2, seed=9, batch_size=8))
    assert a.final_eval["teacher_accuracy"] == b.final_eval["teacher_accuracy"]
    # Uniform: 15% of the real tokens of each held-out batch are targets (ceil), and the
    # masked positions do not follow the frequency-smoothed training weights.
    val = TokenDataset(tiny_data, "validation")
    batches = _validation_batches(val, 0, val.special_ids)
    assert sum(len(x["original_ids"]) for x in batches) == len(val)
    for x in batches:
        assert len(x["target_idx"]) == -(-15 * x["n_tokens"] // 100)
