"""The sub-runs of ``distilkit ablate`` (``_Study``): the data, the teacher's head, the students,
their distillation, and every evaluation, each resumable (``ablate_steps``). ``ablate`` chains
them and writes the report; ``ablate_workers`` runs them in several processes."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from distilkit.ablate_sizes import REPO_ROOT, AblationSize, TeacherSize, Variant, active_variants
from distilkit.ablate_steps import Pending, _has_checkpoint, _Step, mirror_folder
from distilkit.config import to_dict
from distilkit.errors import DistilkitError

log = logging.getLogger("distilkit.ablate")


def _find(path: str) -> str:
    """A data path as given (relative to the working directory), else relative to the repo."""
    if Path(path).expanduser().exists():
        return path
    alt = REPO_ROOT / path
    if alt.exists():
        return str(alt)
    raise DistilkitError(f"not found: {path} (looked in {Path.cwd()} and {REPO_ROOT})")


class _Study:
    def __init__(self, size: AblationSize, out: Path, collect_only: bool = False):
        self.s = size
        self.out = out
        self.collect_only = collect_only
        """Run nothing: a sub-run that is not finished raises ``Pending``."""
        self.ran: list[str] = []
        self.steps: dict[str, _Step] = {}

    def step(self, name: str, folder: Path, settings: dict[str, Any]) -> _Step:
        st = _Step(folder, settings)
        st.collect_only = self.collect_only
        mirror = mirror_folder(self.s)
        if mirror and folder.is_relative_to(self.out):
            st.mirror = (self.out, mirror)
        self.steps[name] = st
        return st

    def did(self, name: str) -> None:
        self.ran.append(name)
        log.info("ablate: finished %s", name)

    # -- data and teacher

    def data(self) -> _Step:
        s = self.s
        tokenizer = s.teacher.tokenizer if s.teacher.name == "tiny-random" else s.teacher.name
        st = self.step("data", self.out / "data", {"data": to_dict(s.data), "tokenizer": tokenizer})
        if not st.done:
            from distilkit.data import PrepareConfig, prepare

            t = st.start()
            result = prepare(
                PrepareConfig(
                    sources=[_find(p) for p in s.data.corpus],
                    tokenizer=tokenizer,
                    out_dir=str(st.folder),
                    max_length=s.data.max_length,
                    max_documents=s.data.max_documents,
                    validation_fraction=s.data.validation_fraction,
                    seed=s.data.seed,
                    overwrite=True,
                )
            )
            splits = result.manifest["splits"]
            st.finish(
                t,
                {
                    k: {"sequences": v["sequences"], "tokens": v["tokens"]}
                    for k, v in splits.items()
                },
            )
            self.did("data")
        return st

    def teacher(self, data: _Step) -> _Step:
        s = self.s
        base = s.teacher.name
        upstream = [data.digest]
        if base == "tiny-random":
            st = self.step(
                "teacher-base", self.out / "teacher-base", {"teacher": to_dict(s.teacher)}
            )
            if not st.done:
                t = st.start()
                _tiny_bert(s.teacher, st.folder)
                st.finish(t)
                self.did("teacher-base")
            base, upstream = str(st.folder), upstream + [st.digest]
        self.base = (base, upstream)
        if s.adapt.steps == 0:  # a teacher that already has a head is used as it is
            from distilkit.modeling import resolve_model

            return self.step("teacher", Path(resolve_model(base)), {"teacher": s.teacher.name})
        st = self.step(
            "teacher",
            self.out / "teacher",
            # The name, not the path, of the base: the upstream digest pins a built one.
            {"upstream": upstream, "teacher": s.teacher.name, "adapt": _result_keys(s.adapt)},
        )
        if not st.done:
            from distilkit.adapt import AdaptConfig, adapt_teacher

            resume = st.same_settings and _has_checkpoint(st.folder)
            t = st.start()
            a = s.adapt
            train = replace(
                AdaptConfig().train,
                max_steps=a.steps,
                batch_size=a.batch_size,
                log_every=a.log_every,
                eval_every=a.eval_every,
                eval_batches=a.eval_batches,
                checkpoint_every=a.checkpoint_every,
                threads=a.threads or s.threads,
            )
            r = adapt_teacher(
                AdaptConfig(
                    teacher=base,
                    data=str(data.folder),
                    out_dir=str(st.folder),
                    overwrite=not resume,
                    head_lr=a.head_lr,
                    train=train,
                ),
                resume=resume,
            )
            st.finish(t, {"steps": r.steps, "head_only": r.head_only, "held_out": r.final_eval})
            self.did("teacher")
        return st

    def sentence_teacher(self) -> _Step:
        """The teacher as given (a sentence encoder, no MLM head): the embedding track's."""
        from distilkit.modeling import resolve_model

        base, upstream = self.base
        return self.step(
            "teacher-sentence",
            Path(resolve_model(base)),
            {"upstream": upstream, "teacher": self.s.teacher.name},
        )

    # -- students

    def inits(self, teacher: _Step) -> dict[str, _Step]:
        """The starting points: teacher layers, the same architecture drawn afresh, and (for
        the embedding track) the unadapted teacher's layers."""
        s = self.s
        init = self._layer_init("init-teacher", teacher)
        rand = self.step(
            "init-random",
            self.out / "students" / "init-random",
            {"upstream": [init.digest], "seed": s.distill.seed},
        )
        if not rand.done:
            t = rand.start()
            _random_student(init.folder, rand.folder, s.distill.seed)
            rand.finish(t)
            self.did("init-random")
        inits = {"teacher": init, "random": rand}
        if s.embedding.enabled:
            inits["sentence"] = self._layer_init("init-sentence", self.sentence_teacher())
        return inits

    def _layer_init(self, name: str, teacher: _Step) -> _Step:
        """``init-student`` from ``teacher``: every other layer, ``student_layers`` of them."""
        from distilkit.student import init_student

        layers = self.s.student_layers
        st = self.step(
            name, self.out / "students" / name, {"upstream": [teacher.digest], "layers": layers}
        )
        if not st.done:
            t = st.start()
            r = init_student(teacher.folder, st.folder, num_layers=layers, overwrite=True)
            st.finish(t, {"teacher_layers": r.layers, "architecture": r.architecture})
            self.did(name)
        return st

    def start_of(self, v: Variant, inits: dict[str, _Step]) -> _Step:
        if v.objective == "embedding":
            return inits["sentence"]
        return inits["random"] if v.init == "random" else inits["teacher"]

    def teacher_of(self, v: Variant, teacher: _Step) -> _Step:
        return self.sentence_teacher() if v.objective == "embedding" else teacher

    def students(self, teacher: _Step, data: _Step, inits: dict[str, _Step]) -> dict[str, _Step]:
        """Every variant's student (distilled now if it is not yet); when only collecting,
        the finished ones."""
        out: dict[str, _Step] = {}
        for v in active_variants(self.s):
            if not v.distill:
                out[v.key] = inits["teacher"]
                continue
            with contextlib.suppress(Pending):  # only when collecting: not distilled yet
                out[v.key] = self._distill(
                    v, self.teacher_of(v, teacher), self.start_of(v, inits), data
                )
        return out

    def _distill(self, v: Variant, teacher: _Step, start: _Step, data: _Step) -> _Step:
        from distilkit.distill import DistillConfig, LossConfig, distill

        d = self.s.distill
        alphas = {"ce": d.alpha_ce, "mlm": d.alpha_mlm, "cos": d.alpha_cos}
        if v.drop:
            alphas[v.drop] = 0.0
        if v.objective == "embedding":
            loss, settings = self._embedding_loss()
        else:
            loss = LossConfig(
                objective="triple",
                alpha_ce=alphas["ce"],
                alpha_mlm=alphas["mlm"],
                alpha_cos=alphas["cos"],
                temperature=d.temperature,
            )
            settings = {"distill": _result_keys(d), "alphas": alphas}
        st = self.step(
            v.slug,
            self.out / "students" / v.slug,
            {"upstream": [teacher.digest, start.digest, data.digest], **settings},
        )
        if st.done:
            return st
        resume = st.same_settings and _has_checkpoint(st.folder)
        t = st.start()
        r = distill(
            DistillConfig(
                teacher=str(teacher.folder),
                student=str(start.folder),
                data=str(data.folder),
                out_dir=str(st.folder),
                overwrite=not resume,
                loss=loss,
                train=self._train_config(v),
            ),
            resume=resume,
        )
        st.finish(
            t,
            {
                "steps": r.steps,
                "tokens": r.tokens,
                "train_seconds": r.seconds,
                "tokens_per_second": r.tokens_per_second,
                "held_out": r.final_eval,
            },
        )
        self.did(v.slug)
        return st

    def _embedding_loss(self):
        from distilkit.distill import LossConfig
        from distilkit.sentence import EmbeddingLossConfig

        e = self.s.embedding
        loss = LossConfig(
            objective="embedding",
            embedding=EmbeddingLossConfig(
                alpha_emb=e.alpha_emb,
                alpha_sim=e.alpha_sim,
                alpha_tok=e.alpha_tok,
                alpha_layers=e.alpha_layers,
                spans=e.spans,
            ),
        )
        return loss, {"embedding": to_dict(e), "seed": self.s.distill.seed}

    def _train_config(self, v: Variant):
        """One budget for the paper track's students (``distill``), another for the embedding
        track's (``embedding``); logging, evaluation and seed are shared."""
        from distilkit.loop import OptimConfig, TrainConfig

        d, e = self.s.distill, self.s.embedding
        budget = e if v.objective == "embedding" else d
        return TrainConfig(
            batch_size=budget.batch_size,
            grad_accumulation=budget.grad_accumulation,
            max_steps=budget.steps,
            precision=d.precision,
            seed=d.seed,
            log_every=d.log_every,
            eval_every=d.eval_every,
            eval_batches=d.eval_batches,
            checkpoint_every=d.checkpoint_every,
            threads=self.s.threads,
            optim=OptimConfig(
                lr=budget.lr,
                warmup_ratio=budget.warmup_ratio,
                **({"max_grad_norm": e.max_grad_norm} if budget is e else {}),
            ),
        )

    # -- evaluation

    def evaluate(self, key: str, model: _Step) -> dict[str, Any]:
        """Fine-tune ``model`` on every task (one folder per seed), combine the seeds, and score
        STS-B zero-shot. Returns ``{task: metrics dict}`` in the format of ``finetune``."""
        ev = self.s.evaluate
        results: dict[str, Any] = {}
        # When only collecting: each task's score per seed, None where not finished.
        progress: dict[str, Any] = {}
        for task in ev.tasks:
            folders = [
                self._finished(self.finetune_seed, key, model, task, i) for i in range(ev.seeds)
            ]
            per_seed = [
                json.loads((f / "metrics.json").read_text("utf-8")) if f else None for f in folders
            ]
            progress[_canon(task)] = [m and m["score"] for m in per_seed]
            if all(per_seed):
                results[_canon(task)] = _combine_seeds(
                    per_seed, folders[0].parent, write=not self.collect_only
                )
        if ev.zeroshot:
            folder = self._finished(self.zeroshot, key, model)
            if folder:
                results["stsb-zeroshot"] = json.loads((folder / "metrics.json").read_text("utf-8"))
            progress["stsb-zeroshot"] = results.get("stsb-zeroshot", {}).get("score")
        if len(results) < len(ev.tasks) + ev.zeroshot:
            raise Pending(self.out / "eval" / key, progress)
        return results

    def _finished(self, run, *args) -> Path | None:
        """``run(*args)``; None if it is not finished and the study only collects."""
        try:
            return run(*args)
        except Pending:
            return None

    def finetune_seed(self, key: str, model: _Step, task: str, i: int) -> Path:
        """Fine-tune ``model`` on ``task`` with the ``i``-th seed (if not done); its folder."""
        from distilkit.finetune import build_config, default_recipes_path, finetune

        s = self.s
        ev = s.evaluate
        glue = _find(ev.glue_dir)
        recipes = default_recipes_path()
        overrides = list(ev.overrides) + list(ev.task_overrides.get(task, []))
        base = build_config(task, recipes, overrides, model=str(model.folder), data_dir=glue)
        seed = base.seed + i
        folder = self.out / "eval" / key / base.task / f"seed-{seed}"
        cfg = build_config(
            task,
            recipes,
            overrides,
            model=str(model.folder),
            data_dir=glue,
            out=str(folder),
            seeds=1,
            seed=seed,
            threads=s.threads,
        )
        kept = _settings_of(to_dict(cfg), "finetune")
        st = self.step(
            f"{key}/{base.task}/seed-{seed}",
            folder,
            {"upstream": [model.digest], "glue_dir": ev.glue_dir, "finetune": kept},
        )
        if not st.done:
            t = st.start()
            # The folder is the study's own: what is there is an unfinished attempt.
            r = finetune(cfg, overwrite=True)
            st.finish(t, {"score": r["score"]})
            self.did(f"eval {key} {base.task} seed {seed}")
        return folder

    def zeroshot(self, key: str, model: _Step) -> Path:
        """Score ``model`` on STS-B zero-shot (if not done); its folder."""
        from distilkit.zeroshot import ZeroShotConfig, zeroshot

        s = self.s
        folder = self.out / "eval" / key / "stsb-zeroshot"
        zcfg = ZeroShotConfig(
            model=str(model.folder),
            data_dir=_find(s.evaluate.glue_dir),
            out=str(folder),
            max_eval_examples=s.evaluate.zeroshot_max_examples,
            threads=s.threads,
        )
        kept = _settings_of(to_dict(zcfg), "zeroshot")
        st = self.step(
            f"{key}/stsb-zeroshot",
            folder,
            {"upstream": [model.digest], "glue_dir": s.evaluate.glue_dir, "zeroshot": kept},
        )
        if not st.done:
            t = st.start()
            r = zeroshot(zcfg, overwrite=True)
            st.finish(t, {"score": r["score"]})
            self.did(f"eval {key} stsb-zeroshot")
        return folder

    # -- speed

    def bench(self, models: dict[str, _Step]) -> dict[str, Any] | None:
        b = self.s.bench
        if not b.enabled:
            return None
        from distilkit.bench import BenchConfig, bench

        cfg = BenchConfig(
            models=[f"{label}={st.folder}" for label, st in models.items()],
            out=str(self.out / "bench"),
            data_dir=_find(self.s.evaluate.glue_dir),
            max_examples=b.max_examples,
            repeats=b.repeats,
            warmup=b.warmup,
            threads=b.threads,
            isolate=b.isolate,
            throughput_batch=b.throughput_batch,
            throughput_seq=b.throughput_seq,
            throughput_iters=b.throughput_iters,
        )
        st = self.step(
            "bench",
            self.out / "bench",
            {"upstream": {k: v.digest for k, v in models.items()}, "bench": to_dict(b)},
        )
        if not st.done:
            if self.collect_only:
                return None
            t = st.start()
            bench(cfg)
            st.finish(t)
            self.did("bench")
        return json.loads((st.folder / "bench.json").read_text(encoding="utf-8"))


# Settings that change where or how fast a run goes, not its result. Paths are left out too:
# the upstream digest pins the model and ``glue_dir`` is recorded as written in the size.
_NOT_RESULT_KEYS = ("out", "threads", "log_every", "device", "eval_batch_size", "model", "data_dir")

# Keys added to an evaluation config after studies had recorded their sub-runs, with the value
# that means what the runs without the key did. At that value they stay out of the settings,
# so finished sub-runs (and their committed mirror) keep their settings and digests.
_ADDED_KEYS: dict[str, dict[str, Any]] = {"finetune": {"form": "cross"}, "zeroshot": {}}


def _settings_of(config: dict[str, Any], section: str) -> dict[str, Any]:
    """An evaluation config (``section``: "finetune" or "zeroshot") as a sub-run records it
    (see ``_NOT_RESULT_KEYS``, ``_ADDED_KEYS``)."""
    added = _ADDED_KEYS[section]
    return {
        k: v
        for k, v in config.items()
        if k not in _NOT_RESULT_KEYS and not (k in added and v == added[k])
    }


def _result_keys(section) -> dict[str, Any]:
    """A training section without its logistics: changing how often a run logs or
    checkpoints, or on how many threads, must not invalidate it."""
    logistics = ("log_every", "checkpoint_every", "threads")
    return {k: v for k, v in to_dict(section).items() if k not in logistics}


def _tiny_bert(t: TeacherSize, folder: Path) -> None:
    """A random headless BERT (like the packaged MiniLM, which has no masked-LM head)."""
    from transformers import BertConfig, BertModel

    from distilkit.modeling import load_tokenizer

    tok = load_tokenizer(t.tokenizer)
    torch.manual_seed(t.seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=t.hidden,
        num_hidden_layers=t.layers,
        num_attention_heads=t.heads,
        intermediate_size=t.intermediate,
        max_position_embeddings=512,
    )
    _save_atomically(
        BertModel(cfg), tok, folder, {"built": "tiny-random", **to_dict(t)}, sentence_layout=True
    )


def _random_student(init_dir: Path, folder: Path, seed: int) -> None:
    """Variant (v): the architecture of the teacher-initialised student, every weight drawn
    afresh (embeddings and vocabulary head included)."""
    from distilkit.modeling import load_mlm, load_tokenizer

    model, _ = load_mlm(init_dir)
    torch.manual_seed(seed)
    fresh = type(model)(model.config)
    meta_file = init_dir / "distilkit_student.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    meta |= {"init": "random", "seed": seed, "layers": None, "head_from_teacher": False}
    _save_atomically(fresh, load_tokenizer(init_dir), folder, meta, "distilkit_student.json")


def _save_atomically(
    model,
    tok,
    folder: Path,
    meta: dict,
    meta_name: str = "distilkit.json",
    sentence_layout: bool = False,
):
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / meta_name).write_text(json.dumps(meta, indent=2) + "\n")
    if sentence_layout:  # a sentence encoder like all-MiniLM-L6-v2: mean pooling, normalised
        from distilkit.sentence import write_module_list

        write_module_list(tmp, normalize=True)
        pooling = {
            "word_embedding_dimension": model.config.hidden_size,
            "pooling_mode_mean_tokens": True,
        }
        (tmp / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def _combine_seeds(
    per_seed: list[dict[str, Any]], folder: Path, write: bool = True
) -> dict[str, Any]:
    """One ``metrics.json`` over seeds, in the format ``finetune`` writes for ``--seeds N``
    (so that ``distilkit compare`` can collect it too); ``write``: save it in ``folder``."""
    from distilkit.finetune import summarise

    runs = [r for result in per_seed for r in result["runs"]]
    summary = summarise(runs)
    first = per_seed[0]
    main = first["main_split"]
    combined = {
        **first,
        "score": summary[main]["score"]["median"],
        "metrics": {k: v["median"] for k, v in summary[main].items()},
        "summary": summary,
        "runs": runs,
        "config": {**first["config"], "seeds": len(runs), "out": str(folder)},
    }
    if write:
        (folder / "metrics.json").write_text(
            json.dumps(combined, indent=2) + "\n", encoding="utf-8"
        )
    return combined


def _canon(task: str) -> str:
    from distilkit.tasks import get_task

    return get_task(task).name
