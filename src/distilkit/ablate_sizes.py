"""Sizes and variants of ``distilkit ablate``: every number of a study size
(``configs/ablation.yaml``) as typed dataclasses, and the students the study compares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distilkit.config import ConfigError, load_config, parse_override, to_dict
from distilkit.errors import DistilkitError

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Sizes (configs/ablation.yaml)


@dataclass
class TeacherSize:
    name: str = "minilm"
    """'minilm' (the packaged all-MiniLM-L6-v2), a folder or hub id, or 'tiny-random': a random
    headless BERT built from the numbers below, with the vocabulary of ``tokenizer``."""
    tokenizer: str = "minilm"
    """Tokenizer of a 'tiny-random' teacher (other teachers bring their own)."""
    layers: int = 6
    """Layers of a 'tiny-random' teacher."""
    hidden: int = 32
    """Hidden size of a 'tiny-random' teacher."""
    heads: int = 2
    """Attention heads of a 'tiny-random' teacher."""
    intermediate: int = 64
    """Feed-forward size of a 'tiny-random' teacher."""
    seed: int = 0
    """Seed of a 'tiny-random' teacher's weights."""


@dataclass
class DataSize:
    corpus: list[str] = field(
        default_factory=lambda: ["../shared/data/corpus/enwiki2015_sample.txt.gz"]
    )
    """Corpus files or folders (as ``distilkit prepare --source``)."""
    max_length: int = 128
    """Longest packed sequence."""
    max_documents: int = 0
    """0: the whole corpus."""
    validation_fraction: float = 0.01
    """Share of the documents held out for validation."""
    seed: int = 56
    """Seed of the validation hold-out."""


@dataclass
class AdaptSize:
    steps: int = 400
    """Optimizer steps fitting the teacher's masked-LM head (0: use the teacher as it is; it
    must then have a head)."""
    batch_size: int = 32
    """Sequences per step."""
    head_lr: float = 1e-2
    """Learning rate of the head."""
    log_every: int = 10
    """Log every N steps."""
    eval_every: int = 0
    """Validate every N steps (0: only at the end)."""
    eval_batches: int = 40
    """Validation batches per evaluation."""
    checkpoint_every: int = 0
    """Checkpoint every N steps (0: never)."""
    threads: int = 0
    """torch threads of this stage (0: the size's ``threads``). It runs alone before the
    workers start, so it may use every core."""


@dataclass
class DistillSize:
    """One budget for every distilled student."""

    steps: int = 800
    """Optimizer steps per student."""
    batch_size: int = 16
    """Sequences per micro-batch."""
    grad_accumulation: int = 4
    """Micro-batches per optimizer step."""
    lr: float = 5e-4
    """Peak learning rate."""
    warmup_ratio: float = 0.05
    """Share of the steps with linear warm-up."""
    alpha_ce: float = 5.0
    """Weight of L_ce (soft targets)."""
    alpha_mlm: float = 2.0
    """Weight of L_mlm (masked LM)."""
    alpha_cos: float = 1.0
    """Weight of L_cos (hidden-state cosine)."""
    temperature: float = 2.0
    """Softmax temperature T of L_ce."""
    seed: int = 56
    """Training seed (batch order, masks, dropout) and the seed of the random init (v)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """As distill's train.precision; 'auto': bf16 where the hardware has it natively, else fp32."""
    log_every: int = 10
    """Log every N steps."""
    eval_every: int = 100
    """Validate every N steps (0: only at the end)."""
    eval_batches: int = 40
    """Validation batches per evaluation."""
    checkpoint_every: int = 50
    """Checkpoint every N steps (0: never)."""


@dataclass
class EmbeddingTrackSize:
    """The embedding track: the sentence-embedding objective (``loss.objective=embedding``) on
    the *unadapted* sentence-encoder teacher, against layer dropping (vi) and the teacher."""

    enabled: bool = True
    """Run the embedding track (student E)."""
    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 16
    """Sequences per micro-batch."""
    grad_accumulation: int = 2
    """Micro-batches per optimizer step."""
    lr: float = 2e-4
    """Peak learning rate."""
    warmup_ratio: float = 0.05
    """Share of the steps with linear warm-up."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0: off)."""
    alpha_emb: float = 1.0
    """loss.embedding.alpha_emb of the run."""
    alpha_sim: float = 0.0
    """loss.embedding.alpha_sim of the run."""
    alpha_tok: float = 1.0
    """loss.embedding.alpha_tok of the run."""
    alpha_layers: float = 1.0
    """loss.embedding.alpha_layers of the run."""
    spans: str = "pairs"
    """loss.embedding.spans of the run."""


@dataclass
class EvalSize:
    glue_dir: str = "../shared/data/glue"
    """GLUE root folder."""
    tasks: list[str] = field(default_factory=lambda: ["cola", "sst2", "stsb"])
    """Fine-tuned GLUE tasks; their mean is the macro score (as in the paper's Table 4)."""
    seeds: int = 3
    """Fine-tuning seeds per task; the median is reported."""
    overrides: list[str] = field(default_factory=list)
    """KEY=VALUE for every fine-tuning run, on top of configs/finetune.yaml."""
    task_overrides: dict[str, list[str]] = field(default_factory=dict)
    """Per task, KEY=VALUE on top of ``overrides`` (e.g. an SST-2 training subset)."""
    zeroshot: bool = True
    """Also score STS-B zero-shot (mean-pooled embeddings, cosine, Spearman)."""
    zeroshot_max_examples: int = 0
    """Zero-shot STS-B pairs scored (0: all)."""

    def validate(self) -> None:
        from distilkit.tasks import get_task

        if not self.tasks:
            raise ConfigError("config key 'evaluate.tasks' must list at least one task")
        if self.seeds < 1:
            raise ConfigError("config key 'evaluate.seeds' must be at least 1")
        names = [get_task(t).name for t in self.tasks]
        for task, items in self.task_overrides.items():
            if get_task(task).name not in names:
                raise ConfigError(f"evaluate.task_overrides: '{task}' is not in evaluate.tasks")
            if not isinstance(items, list):
                raise ConfigError(f"evaluate.task_overrides.{task} must be a list of KEY=VALUE")
        for text in self.overrides + [x for v in self.task_overrides.values() for x in v]:
            key, _ = parse_override(str(text))
            if key in _RUN_KEYS:
                raise ConfigError(f"evaluate override '{text}': '{key}' is set by the study")


# Fine-tuning fields the study sets per run; an override of them would break seeds or folders.
_RUN_KEYS = ("model", "task", "data_dir", "out", "seeds", "seed", "save_model")


@dataclass
class BenchSize:
    enabled: bool = True
    """Benchmark the models (the report's speed table)."""
    max_examples: int = 0
    """STS-B dev pairs of the latency pass (0: all 1,500, the paper's Table 3)."""
    repeats: int = 3
    """Full latency passes per model."""
    warmup: int = 20
    """Untimed forward passes before the first timed pass."""
    threads: int = 1
    """CPU threads of the benchmark."""
    isolate: bool = True
    """One process per model (needed for per-model peak memory)."""
    throughput_batch: int = 32
    """Batch size of the throughput measurement."""
    throughput_seq: int = 128
    """Sequence length of the throughput measurement."""
    throughput_iters: int = 10
    """Timed forward passes of the throughput measurement."""


@dataclass
class AblationSize:
    """Every number of one size of the study."""

    description: str = ""
    """What this size is for."""
    report: str = "docs/results/ablation.md"
    """Markdown report; its PNG and JSON go into a folder of the same stem beside it. Empty:
    OUT/report/ablation.md."""
    teacher: TeacherSize = field(default_factory=TeacherSize)
    student_layers: int = 3
    """Depth of every student."""
    data: DataSize = field(default_factory=DataSize)
    adapt: AdaptSize = field(default_factory=AdaptSize)
    distill: DistillSize = field(default_factory=DistillSize)
    embedding: EmbeddingTrackSize = field(default_factory=EmbeddingTrackSize)
    evaluate: EvalSize = field(default_factory=EvalSize)
    bench: BenchSize = field(default_factory=BenchSize)
    threads: int = 0
    """torch CPU threads for training and evaluation (0: torch's default), per worker."""
    workers: int = 1
    """Processes running the distillations and evaluations side by side (1: one after the
    other, in this process). On a CPU, ``workers x threads`` should not exceed the cores."""

    def validate(self) -> None:
        if self.student_layers < 1:
            raise ConfigError("config key 'student_layers' must be at least 1")
        if self.workers < 1:
            raise ConfigError("config key 'workers' must be at least 1")


@dataclass
class AblationSizes:
    """The shipped sizes file."""

    tiny: AblationSize = field(default_factory=AblationSize)
    cpu: AblationSize = field(default_factory=AblationSize)
    gpu: AblationSize = field(default_factory=AblationSize)


SIZES = ("tiny", "cpu", "gpu")


def default_sizes_path() -> Path:
    for candidate in (
        Path.cwd() / "configs" / "ablation.yaml",
        REPO_ROOT / "configs" / "ablation.yaml",
    ):
        if candidate.is_file():
            return candidate
    raise DistilkitError("cannot find configs/ablation.yaml; give --sizes FILE")


def load_size(
    name: str, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> AblationSize:
    """Size ``name`` of the sizes file, with ``KEY=VALUE`` overrides (e.g. ``distill.steps=10``)."""
    if name not in SIZES:
        raise DistilkitError(f"unknown size '{name}' (known: {', '.join(SIZES)})")
    sizes = load_config(AblationSizes, path or default_sizes_path())
    tree = to_dict(getattr(sizes, name))
    return load_config(AblationSize, None, list(overrides), flags=tree)


# ---------------------------------------------------------------------------------------------
# The variants


@dataclass(frozen=True)
class Variant:
    key: str
    slug: str
    label: str
    init: Literal["teacher", "random"]
    drop: str | None = None
    """Loss part removed: 'ce', 'mlm' or 'cos'."""
    distill: bool = True
    paper_delta: float | None = None
    """Change of the GLUE macro score against (i) in the paper's Table 4."""
    objective: Literal["triple", "embedding"] = "triple"
    """triple: the paper's losses from the MLM-headed teacher; embedding: the sentence-embedding
    objective from the unadapted sentence-encoder teacher (the embedding track)."""


VARIANTS = (
    Variant("i", "i-triple-loss", "triple loss + teacher init", "teacher", paper_delta=0.0),
    Variant("ii", "ii-no-ce", "without L_ce", "teacher", drop="ce", paper_delta=-2.96),
    Variant("iii", "iii-no-cos", "without L_cos", "teacher", drop="cos", paper_delta=-1.46),
    Variant("iv", "iv-no-mlm", "without L_mlm", "teacher", drop="mlm", paper_delta=-0.31),
    Variant("v", "v-random-init", "triple loss + random init", "random", paper_delta=-3.69),
    Variant(
        "vi",
        "vi-no-distillation",
        "no distillation (teacher layers only)",
        "teacher",
        distill=False,
    ),
    Variant(
        "E",
        "e-embedding",
        "sentence-embedding objective + teacher init",
        "teacher",
        objective="embedding",
    ),
)


def active_variants(size: AblationSize) -> tuple[Variant, ...]:
    """The variants this size runs: the embedding track only where enabled."""
    return tuple(v for v in VARIANTS if v.objective == "triple" or size.embedding.enabled)
