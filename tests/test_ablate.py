"""The ablation study: the tiny size end to end, resume, settings guard, report numbers, sizes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import write_corpus
from distilkit import cli
from distilkit.ablate import VARIANTS, AblateConfig, AblationSizes, ablate, load_size
from distilkit.ablate_report import build_report, render_markdown
from distilkit.config import ConfigError, load_config, to_dict
from distilkit.errors import DistilkitError
from distilkit.finetune import build_config

ROOT = Path(__file__).resolve().parents[1]
GLUE = Path(__file__).parent / "fixtures" / "glue"
SIZES = ROOT / "configs" / "ablation.yaml"
RECIPES = ROOT / "configs" / "finetune.yaml"


def _overrides(corpus: Path) -> list[str]:
    # Self-contained: a generated corpus and the GLUE fixtures instead of ../shared/data.
    return [f"data.corpus=[{corpus}]", f"evaluate.glue_dir={GLUE}"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    corpus = write_corpus(root / "corpus.txt", n_docs=60)
    cfg = AblateConfig(
        size="tiny",
        out=str(root / "out"),
        sizes_file=str(SIZES),
        overrides=_overrides(corpus),
        command="pytest",
    )
    return cfg, ablate(cfg)


def test_every_model_gets_every_result_and_the_report_is_written(study):
    cfg, result = study
    rows = {r["label"]: r for r in result.report["rows"]}
    assert list(rows) == ["teacher"] + [v.slug for v in VARIANTS]
    for r in rows.values():
        assert set(r["scores"]) == {"cola", "sst2", "stsb"}
        assert r["zeroshot"] is not None
        assert r["latency_ms"] > 0 and r["parameters"] > 0
    assert rows["i-triple-loss"]["delta_vs_i"] == 0.0
    assert rows["teacher"]["delta_vs_i"] is None
    # Every student has the teacher's hidden size and half its layers: fewer parameters.
    assert rows["vi-no-distillation"]["parameters"] < rows["teacher"]["parameters"]
    for name in ("markdown", "json", "scores", "curves", "delta", "speed", "bench"):
        assert result.files[name].is_file() and result.files[name].stat().st_size > 0
    assert result.report_md == Path(cfg.out) / "report" / "ablation.md"
    md = result.report_md.read_text()
    assert "| (vi) | no distillation (teacher layers only) |" in md
    assert "![loss curves](ablation/curves.png)" in md
    saved = json.loads(result.files["json"].read_text())
    assert saved["goals"]["paper_order"] == ["v", "ii", "iii", "iv"]
    # Fine-tuning results are kept per seed and combined in compare's format.
    combined = json.loads(
        (Path(cfg.out) / "eval" / "teacher" / "cola" / "metrics.json").read_text()
    )
    assert combined["task"] == "cola" and combined["config"]["seeds"] == 1


def test_students_start_from_teacher_layers_or_from_scratch(study):
    cfg, _ = study
    out = Path(cfg.out)
    teacher = load_file(out / "teacher" / "model.safetensors")
    init = load_file(out / "students" / "init-teacher" / "model.safetensors")
    rand = load_file(out / "students" / "init-random" / "model.safetensors")
    trained = load_file(out / "students" / "i-triple-loss" / "model.safetensors")
    q = "distilbert.transformer.layer.{}.attention.q_lin.weight"
    # 6 -> 3 layers takes teacher layers [0, 3, 5].
    for i, j in enumerate([0, 3, 5]):
        t = teacher[f"bert.encoder.layer.{j}.attention.self.query.weight"]
        assert init[q.format(i)].equal(t)
        assert not rand[q.format(i)].equal(t)
    assert not trained[q.format(0)].equal(init[q.format(0)])  # (i) was trained
    for v in VARIANTS:
        if v.distill:
            run = json.loads((out / "students" / v.slug / "distilkit_run.json").read_text())
            start = "init-random" if v.init == "random" else "init-teacher"
            if v.objective == "embedding":  # from the unadapted sentence encoder
                start = "init-sentence"
                assert run["teacher"].endswith("teacher-base") and run["objective"] == "embedding"
            else:
                assert run["teacher"].endswith("teacher") and run["objective"] == "triple"
            assert run["student_init"].endswith(start)


def test_each_variant_trains_exactly_its_losses(study):
    cfg, _ = study
    for v in VARIANTS:
        if not v.distill:
            continue
        path = Path(cfg.out) / "students" / v.slug / "metrics.jsonl"
        train = [json.loads(x) for x in path.read_text().splitlines()]
        parts = {k[5:] for r in train if r["kind"] == "train" for k in r if k.startswith("loss_")}
        if v.objective == "embedding":
            assert parts == {"emb", "tok", "layers"}, v.slug  # the tiny size's weights
        else:
            assert parts == {"ce", "mlm", "cos"} - {v.drop}, v.slug


def test_report_has_embedding_goals_and_sanity_gates(study):
    _, result = study
    goals, gates = result.report["goals"], result.report["gates"]
    assert "E_minus_vi" in goals and "E_zeroshot" in goals
    assert {g["gate"] for g in gates} >= {"fine-tuned STS-B >= zero-shot STS-B", "CoLA MCC > 0"}
    # The random-init student is not held to CoLA MCC > 0.
    assert not any(g["model"].startswith("(v)") and "CoLA" in g["gate"] for g in gates)
    md = result.report_md.read_text()
    assert "## Sanity gates" in md and "Embedding track" in md


def _forbid_sub_runs(monkeypatch, message: str) -> None:
    """Make every stage a sub-run could call fail the test with ``message``."""

    def forbidden(*args, **kwargs):
        raise AssertionError(message)

    for module, name in (
        ("distilkit.data", "prepare"),
        ("distilkit.adapt", "adapt_teacher"),
        ("distilkit.distill", "distill"),
        ("distilkit.finetune", "finetune"),
        ("distilkit.zeroshot", "zeroshot"),
        ("distilkit.bench", "bench"),
    ):
        monkeypatch.setattr(f"{module}.{name}", forbidden)


def test_rerun_reuses_every_finished_sub_run(study, monkeypatch, capsys):
    cfg, first = study
    _forbid_sub_runs(monkeypatch, "a finished sub-run was run again")
    report = Path(cfg.out) / "rerun.md"
    argv = ["ablate", "--size", "tiny", "--out", cfg.out, "--sizes", str(SIZES)]
    assert cli.main([*argv, "--report", str(report), *cfg.overrides]) == 0
    assert "all sub-runs reused" in capsys.readouterr().out
    again = json.loads((report.parent / "rerun" / "ablation.json").read_text())
    assert [r["macro"] for r in again["rows"]] == [r["macro"] for r in first.report["rows"]]


def _tree(root: Path) -> dict[str, float]:
    return {str(f.relative_to(root)): f.stat().st_mtime for f in root.rglob("*")}


def test_report_only_reports_what_is_finished_and_writes_nothing_in_the_study(
    study, tmp_path, monkeypatch, capsys
):
    """A study part-way through: (ii) not distilled yet, one fine-tuning seed of (i) not
    finished. --report-only runs nothing, leaves the study folder as it was, and writes a
    report that says it is partial and how far each unfinished model is."""
    import shutil

    cfg, first = study
    out = tmp_path / "study"
    shutil.copytree(cfg.out, out)
    (out / "students" / "ii-no-ce.step.json").unlink()
    stsb = sorted((out / "eval" / "i-triple-loss" / "stsb").glob("seed-*.step.json"))[0]
    record = json.loads(stsb.read_text())
    stsb.write_text(json.dumps({"settings": record["settings"], "finished": False}))
    before = _tree(out)
    _forbid_sub_runs(monkeypatch, "--report-only ran a sub-run")
    report = tmp_path / "partial.md"
    argv = ["ablate", "--size", "tiny", "--out", str(out), "--sizes", str(SIZES)]
    assert cli.main([*argv, "--report-only", "--report", str(report), *cfg.overrides]) == 0
    assert _tree(out) == before
    printed = capsys.readouterr().out
    assert "ii-no-ce" in printed and "not finished" in printed

    data = json.loads((tmp_path / "partial" / "ablation.json").read_text())
    labels = [r["label"] for r in data["rows"]]
    assert "ii-no-ce" not in labels and "i-triple-loss" not in labels
    assert "teacher" in labels and "e-embedding" in labels
    pending = {p["key"]: p for p in data["pending"]}
    assert set(pending) == {"i", "ii"}
    assert not pending["ii"]["distilled"] and pending["i"]["distilled"]
    assert pending["i"]["progress"]["stsb"][0] is None  # the unfinished seed
    assert pending["i"]["progress"]["cola"] == [
        r["scores"]["cola"] for r in first.report["rows"] if r["key"] == "i"
    ]
    # Finished rows keep their numbers; goals that need (i) are left out, (E)'s zero-shot kept.
    full = {r["label"]: r for r in first.report["rows"]}
    for r in data["rows"]:
        assert r["macro"] == pytest.approx(full[r["label"]]["macro"])
    assert "retention_i" not in data["goals"] and "E_zeroshot" in data["goals"]
    md = report.read_text()
    assert "Partial report: 6 of 8 models are finished" in md
    assert "(ii) without L_ce | not yet" in md


def test_report_only_without_a_finished_teacher_is_one_clear_error(study, tmp_path, capsys):
    cfg, _ = study
    argv = ["ablate", "--size", "tiny", "--sizes", str(SIZES), "--report-only"]
    report = ["--report", str(tmp_path / "r.md"), *cfg.overrides]
    assert cli.main([*argv, "--out", str(tmp_path / "none"), *report]) != 0
    assert "no study in" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main([*argv, "--out", str(tmp_path / "empty"), *report]) != 0
    assert "nothing to report yet" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_report_path_that_is_not_ours_is_refused_before_any_work(tmp_path, capsys):
    """A careless --report README.md must not cost the user the file, hours later."""
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    out = tmp_path / "study"
    argv = ["ablate", "--size", "tiny", "--sizes", str(SIZES), "--out", str(out)]
    assert cli.main([*argv, "--report", str(notes)]) != 0
    assert "was not written by distilkit ablate" in capsys.readouterr().err
    assert notes.read_text() == "# my notes\n" and not out.exists()
    figures = tmp_path / "fresh"
    figures.mkdir()
    (figures / "holiday.png").write_bytes(b"x")
    assert cli.main([*argv, "--report", str(tmp_path / "fresh.md")]) != 0
    assert "holds files distilkit did not write (holiday.png)" in capsys.readouterr().err
    assert cli.main([*argv, "--report", str(tmp_path / "report.txt")]) != 0
    assert "ending in .md" in capsys.readouterr().err
    assert not out.exists()


def test_workers_give_the_same_numbers_as_one_process(study, tmp_path):
    cfg, serial = study
    parallel = ablate(
        AblateConfig(
            size="tiny",
            out=str(tmp_path / "w2"),
            sizes_file=str(SIZES),
            overrides=[*cfg.overrides, "workers=2"],
        )
    )
    for a, b in zip(serial.report["rows"], parallel.report["rows"]):
        assert a["label"] == b["label"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-6), a["label"]
        assert a["zeroshot"] == pytest.approx(b["zeroshot"], abs=1e-6), a["label"]
    assert len(parallel.ran) == len(serial.ran)  # every sub-run, each once
    stages = parallel.report["stage_seconds"]
    assert 0 < stages["span"] <= stages["total"]


_PARENT = """
import multiprocessing as mp, os, sys, time
from distilkit.ablate_workers import _worker_init

def child(path):
    _worker_init()
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    mp.get_context("spawn").Process(target=child, args=(sys.argv[1],)).start()
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its reaping is pending


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl death signal is Linux")
def test_workers_queue_distillations_then_zero_shots_then_one_model_after_another(
    tmp_path, monkeypatch
):
    """The order of the workers' jobs: a study stopped part-way has whole rows for the models
    its goals compare first. An in-process executor that runs each job when submitted, two at a
    time, makes the order exact."""
    import concurrent.futures as cf

    from distilkit.ablate_study import _Study
    from distilkit.ablate_workers import EVALUATION_ORDER, run_workers

    size = load_size("tiny", str(SIZES), ["workers=2", "evaluate.seeds=2"])
    assert size.embedding.enabled
    started: list[tuple] = []

    class Inline:
        def __init__(self, workers, mp_context=None, initializer=None):
            self.workers = workers

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, size, out, job):
            started.append(job)
            f = cf.Future()
            f.set_result((f"{job[1]}-distilled", []) if job[0] == "distill" else (None, []))
            return f

    monkeypatch.setattr(cf, "ProcessPoolExecutor", Inline)
    study = _Study(size, tmp_path)
    monkeypatch.setattr(study, "teacher_of", lambda v, teacher: teacher)
    monkeypatch.setattr(study, "start_of", lambda v, inits: inits["teacher"])
    run_workers(study, "teacher-model", "data", {"teacher": "init"})

    kinds = [job[0] for job in started]
    n_distill = sum(v.distill for v in VARIANTS)
    assert kinds[:n_distill] == ["distill"] * n_distill
    # Each distilled student's evaluations use the student the distillation returned.
    models = {job[1]: job[2] for job in started if job[0] != "distill"}
    assert models["teacher"] == "teacher-model" and models["vi-no-distillation"] == "init"
    assert models["i-triple-loss"] == "i-distilled"
    # Every zero-shot score before any fine-tuning, then whole models in EVALUATION_ORDER.
    rest = started[n_distill:]
    assert {job[0] for job in rest[: len(VARIANTS) + 1]} == {"zeroshot"}
    order = ["teacher"] + [next(v.slug for v in VARIANTS if v.key == k) for k in EVALUATION_ORDER]
    finetunes = [job[1] for job in rest if job[0] == "finetune"]
    per_model = len(size.evaluate.tasks) * 2
    assert finetunes == [label for label in order for _ in range(per_model)]


def test_workers_die_with_a_killed_study(tmp_path):
    script, pid_file = tmp_path / "parent.py", tmp_path / "child.pid"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    try:
        deadline = time.time() + 60
        while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert _alive(child)
    finally:
        parent.kill()  # SIGKILL: no cleanup code of the parent runs
        parent.wait()
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "a worker outlived its study"


def test_a_finished_result_is_never_mixed_with_other_settings(study, tmp_path):
    cfg, _ = study
    changed = AblateConfig(
        size="tiny",
        out=cfg.out,
        sizes_file=str(SIZES),
        overrides=[*cfg.overrides, "evaluate.overrides=[max_steps=3, max_train_examples=8]"],
        report=str(tmp_path / "x.md"),
    )
    with pytest.raises(DistilkitError, match=r"finished with other settings \(differing: finetune"):
        ablate(changed)


def _row(key: str, cola: float, sst2: float, zeroshot: float = 0.5) -> dict:
    return {"key": key, "scores": {"cola": cola, "sst2": sst2}, "zeroshot": zeroshot}


def test_report_numbers_follow_table_4():
    rows = [
        _row("teacher", 0.50, 0.90),
        _row("i", 0.50, 0.88),
        _row("ii", 0.44, 0.86),
        _row("iii", 0.48, 0.87),
        _row("iv", 0.50, 0.875),
        _row("v", 0.30, 0.80),
        _row("vi", 0.40, 0.85),
    ]
    report = build_report(rows, ["cola", "sst2"])
    by = {r["key"]: r for r in report["rows"]}
    assert by["i"]["macro"] == pytest.approx(0.69)
    assert by["i"]["retention"] == pytest.approx(100 * 0.69 / 0.70)
    assert by["ii"]["delta_vs_i"] == pytest.approx(-4.0)
    assert by["teacher"]["delta_vs_i"] is None
    g = report["goals"]
    assert g["order"] == ["v", "ii", "iii", "iv"] and g["order_met"] and g["order_exact"]
    assert g["i_minus_vi"] == pytest.approx(6.5) and g["beats_vi"]
    assert g["retention_met"]  # 98.57%
    # A margin that the seeds' spread can explain is not "clearly better".
    by_seed = {"i": [0.70, 0.66, 0.69], "vi": [0.60, 0.68, 0.62]}
    spread = [{**r, "spread": {}} for r in rows]
    for r in spread:
        if r["key"] in by_seed:
            v = by_seed[r["key"]]
            r["spread"] = {"cola": {"values": v}, "sst2": {"values": v}}
    g = build_report(spread, ["cola", "sst2"])["goals"]
    assert g["i_minus_vi"] == pytest.approx(6.5) and not g["beats_vi"]
    assert g["seed_ranges"] == [pytest.approx([66.0, 70.0]), pytest.approx([60.0, 68.0])]
    # Removing L_mlm hurting most breaks the paper's order.
    rows[4] = _row("iv", 0.20, 0.80)
    assert not build_report(rows, ["cola", "sst2"])["goals"]["order_met"]


def test_markdown_states_retention_delta_and_goals():
    base = {
        "title": "x",
        "parameters": 10e6,
        "spread": {"cola": {"min": 0.4, "max": 0.6, "values": [0.4, 0.5, 0.6]}},
        "seeds": {"cola": 3},
        "n_train": {"cola": [100, 8551]},
        "distilled": False,
        "paper_delta": None,
    }
    rows = [
        {**base, **_row("teacher", 0.5, 0.0), "label": "teacher"},
        {**base, **_row("i", 0.49, 0.0), "label": "i-triple-loss", "paper_delta": 0.0},
    ]
    for r in rows:
        r["scores"] = {"cola": r["scores"]["cola"]}
    report = build_report(rows, ["cola"])
    report["settings"] = to_dict(load_size("cpu", SIZES))
    md = render_markdown(report, "figs")
    d = report["settings"]["distill"]
    rows_per_step = d["batch_size"] * d["grad_accumulation"]
    assert f"{d['steps']} optimizer steps of {rows_per_step} sequences" in md
    assert f"`{' '.join(report['settings']['evaluate']['overrides'])}`" in md
    assert "| Score of each seed |" in md and "| 40.0, 50.0, 60.0 |" in md
    assert "| (i) | x | 10.0M | 49.0 | **49.0** | 98.0% | +0.00 | +0.00 | 50.0 |" in md
    assert "keeps **98.0%** of the teacher's Score (goal ≥ 97%, reaching for 98%): **met**" in md
    assert "98% reached." in md
    assert "random subset of 100 of its 8,551 training examples" in md
    assert "medians over 3 fine-tuning seed(s)" in md


def test_sizes_file_pins_every_size():
    sizes = load_config(AblationSizes, SIZES)
    assert sizes.tiny.teacher.name == "tiny-random" and sizes.tiny.report == ""
    for name in ("cpu", "gpu"):
        s = getattr(sizes, name)
        assert s.teacher.name == "minilm" and s.student_layers == 3
        assert s.evaluate.seeds >= 3 and s.evaluate.tasks == ["cola", "sst2", "stsb"]
        assert s.report.startswith("docs/results/")
    assert sizes.gpu.evaluate.seeds == 5  # the paper's median of 5
    # Every size's fine-tuning settings build valid configs now, not hours into a run.
    for name in ("tiny", "cpu", "gpu"):
        ev = getattr(sizes, name).evaluate
        for task in ev.tasks:
            overrides = ev.overrides + ev.task_overrides.get(task, [])
            cfg = build_config(task, RECIPES, overrides, model="m", data_dir="d", out="o")
            assert cfg.task == task
    # The cpu size's protocol converges (issue 14): full training sets but SST-2 (>= 20,000),
    # >= 3 epochs, an lr in the standard BERT range, for every task.
    for task in ("cola", "sst2", "stsb"):
        ev = sizes.cpu.evaluate
        cfg = build_config(task, RECIPES, ev.overrides + ev.task_overrides.get(task, []))
        assert cfg.epochs >= 3 and 2e-5 <= cfg.lr <= 1e-4
        assert cfg.max_train_examples == 0 or (task == "sst2" and cfg.max_train_examples >= 20000)
    assert sizes.cpu.workers * sizes.cpu.threads <= 2  # the 2-core machine it is sized for
    assert load_size("cpu", SIZES, ["distill.steps=7"]).distill.steps == 7
    with pytest.raises(ConfigError, match="distill.stepz"):
        load_size("cpu", SIZES, ["distill.stepz=7"])
    with pytest.raises(ConfigError, match="set by the study"):
        load_size("cpu", SIZES, ["evaluate.overrides=[seed=3]"])
    with pytest.raises(DistilkitError, match="unknown size"):
        load_size("huge", SIZES)


def test_finished_evaluations_are_mirrored_and_restored(tmp_path):
    from distilkit.ablate_steps import _restore_evaluations, _Step

    out, mirror = tmp_path / "out", tmp_path / "docs" / "subruns"
    folder = out / "eval" / "teacher" / "cola" / "seed-42"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"score": 0.5}')
    (folder / "model.safetensors").write_text("weights")  # never mirrored
    st = _Step(folder, {"a": 1})
    st.mirror = (out, mirror)
    st.finish(time.time(), {"score": 0.5})
    copied = mirror / "eval" / "teacher" / "cola"
    assert (copied / "seed-42" / "metrics.json").is_file()
    assert (copied / "seed-42.step.json").is_file()
    assert not (copied / "seed-42" / "model.safetensors").exists()
    # The record names the machine: a study spread over sessions may change CPUs.
    record = json.loads((copied / "seed-42.step.json").read_text())
    assert record["machine"]["cpu"] and "host" in record["machine"]

    # A new machine: the study folder is gone, the mirror (in git) is not.
    fresh = tmp_path / "fresh"
    assert _restore_evaluations(fresh, mirror) == 1
    again = _Step(fresh / "eval" / "teacher" / "cola" / "seed-42", {"a": 1})
    assert again.done
    assert _restore_evaluations(fresh, mirror) == 0  # never overwrites
    with pytest.raises(DistilkitError, match="other settings"):
        _ = _Step(fresh / "eval" / "teacher" / "cola" / "seed-42", {"a": 2}).done


def test_the_committed_sub_runs_keep_their_settings_when_configs_grow():
    # A key added to FinetuneConfig or ZeroShotConfig changes every evaluation sub-run's
    # recorded settings, and a resumed study (or one restored from the committed mirror) then
    # refuses all its finished work. A new key must be declared in _ADDED_KEYS with the value
    # that means what the old runs did (or the study format changed on purpose).
    from distilkit.ablate_study import _settings_of
    from distilkit.finetune import FinetuneConfig
    from distilkit.zeroshot import ZeroShotConfig

    mirror = ROOT / "docs" / "results" / "ablation" / "subruns" / "eval" / "teacher"
    for record, section, config in (
        ("cola/seed-42.step.json", "finetune", FinetuneConfig()),
        ("stsb-zeroshot.step.json", "zeroshot", ZeroShotConfig()),
    ):
        recorded = json.loads((mirror / record).read_text())["settings"][section]
        assert _keys(_settings_of(to_dict(config), section)) == _keys(recorded), record


def _keys(settings: dict, prefix: str = "") -> set[str]:
    """Every key path of nested settings (``classification.text_column``, ...)."""
    out = set()
    for k, v in settings.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, f"{prefix}{k}.")
    return out
