"""Export an encoder (or one of its task heads) to ONNX, optionally int8, with parity checks.

``export(cfg)`` writes into a temporary sibling folder and renames it to ``cfg.out`` only after
every check passed, so a folder named ``out`` always holds a model that matched PyTorch:

- ``model.onnx``: fp32, dynamic axes ``batch`` and ``sequence`` on every input and output;
- ``model.int8.onnx`` (``quantize: int8``): onnxruntime dynamic quantisation (int8 weights, one
  scale per output channel; uint8 activations quantised per batch at run time; no calibration
  data needed);
- ``config.json`` and tokenizer files of the source model, and ``export.json``: head, inputs,
  outputs, files, parameters and the parity results.

Parity: outputs on sample inputs (a padded batch and a single unpadded sequence, so that both
dynamic axes and the attention mask are exercised) are compared with PyTorch at real-token
positions. fp32 must agree within ``atol``; int8 within ``int8_rtol`` times the largest reference
value (int8 error scales with the output's range, which differs across heads). A NaN or inf
output fails either check. For a
sequence-classification model and ``task``, the dev-set metric of each ONNX file must stay within
``max_metric_drop`` points of PyTorch's.

Exporter: ``torch.onnx.export(dynamo=True)``. The TorchScript exporter (``dynamo=False``) traces
transformers-5 attention masks into constants and gives wrong outputs at other shapes.

A torch int8 path is deliberately absent: ``torch.ao.quantization`` is deprecated, and torchao's
int8 CPU kernels need ``torch.compile`` to be fast, which a deployable file does not carry.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from distilkit.config import ConfigError, to_dict
from distilkit.errors import DistilkitError
from distilkit.modeling import count_parameters, resolve_model
from distilkit.runfolder import claim_folder

log = logging.getLogger(__name__)

Head = Literal["auto", "encoder", "sequence-classification", "question-answering", "masked-lm"]

# Head -> (transformers Auto class, output names in the order the ONNX graph returns them).
_HEADS: dict[str, tuple[str, tuple[str, ...]]] = {
    "encoder": ("AutoModel", ("last_hidden_state",)),
    "sequence-classification": ("AutoModelForSequenceClassification", ("logits",)),
    "question-answering": ("AutoModelForQuestionAnswering", ("start_logits", "end_logits")),
    "masked-lm": ("AutoModelForMaskedLM", ("logits",)),
}
# Architecture-name suffix -> head, for head "auto".
_ARCH_SUFFIX = (
    ("ForSequenceClassification", "sequence-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "masked-lm"),
    ("ForPreTraining", "masked-lm"),
)
# Outputs with a sequence axis: parity ignores their padded positions. ("logits" is per token
# too when it is (B, L, V), the masked-LM head's; a classifier's (B, C) has no sequence axis.)
_PER_TOKEN = {"last_hidden_state", "start_logits", "end_logits"}

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
MANIFEST = "export.json"
_EVAL_BATCH = 64

# Mixed lengths, one pair, a little punctuation: the parity batch.
_SAMPLE_TEXTS = [
    ("The cat sat on the mat.", None),
    ("A distilled student keeps most of the teacher's accuracy at half the depth.", None),
    ("Is this fast?", "Yes, roughly twice as fast on a CPU."),
    ("Tokyo", None),
    (
        "An unusually long sentence, written so that the padded batch has a real spread of "
        "lengths, and the attention mask hides a good number of positions in the shorter rows.",
        None,
    ),
    ("Numbers like 3.14 and 2019 appear too.", "So do names: Sanh, Debut, Chaumond, Wolf."),
]


@dataclass
class ExportConfig:
    """One export job: ``model`` -> ONNX files in ``out``, checked against PyTorch."""

    model: str = ""
    """Model folder, 'minilm', or a hub id."""
    out: str = ""
    """Output folder; must not exist (or be empty) unless overwrite."""
    format: Literal["onnx"] = "onnx"
    """Export format."""
    head: Head = "auto"
    """Which graph to export; auto follows config.json's architectures (none -> encoder)."""
    quantize: Literal["none", "int8"] = "none"
    """int8: also write model.int8.onnx with onnxruntime dynamic quantisation."""
    opset: int = 20
    """ONNX opset of the exported graph."""
    atol: float = 1e-4
    """fp32 parity: largest allowed |onnx - torch| on the sample inputs."""
    int8_rtol: float = 0.25
    """int8 parity: largest allowed |int8 - torch| / max|torch| on the sample inputs."""
    int8_per_channel: bool = True
    """One weight scale per output channel (false: one per tensor). Per tensor, a few large
    weights coarsen every other one: a 3-layer MiniLM student's masked-LM logits missed int8
    parity (0.39 of max|logit|, 0.15 per channel), at no cost in file size."""
    int8_keep_ffn_output: bool = False
    """Keep each layer's FFN output projection (input: GELU activations, whose outliers suffer
    most from per-tensor uint8) in fp32: more accurate, slower."""
    task: str = ""
    """GLUE task for the dev-set metric check (sequence-classification only); empty = skip."""
    data_dir: str = ""
    """GLUE root or task folder for ``task``."""
    max_eval_examples: int = 0
    """Evaluate on the first N dev examples (0 = all)."""
    max_length: int = 128
    """Longest input of the dev-set metric check, in tokens."""
    max_metric_drop: float = 1.0
    """Points (score x 100) an exported file may lose against PyTorch on the dev set."""
    threads: int = 0
    """onnxruntime/torch CPU threads during the checks (0 = library default)."""
    overwrite: bool = False
    """Replace an existing out folder."""

    def validate(self) -> None:
        if self.atol < 0 or self.int8_rtol < 0 or self.max_metric_drop < 0:
            raise ConfigError("atol, int8_rtol and max_metric_drop must be >= 0")
        if self.opset < 17:
            raise ConfigError("config key 'opset' must be at least 17 (LayerNormalization)")
        for name in ("max_eval_examples", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key '{name}' must be >= 0")
        if self.max_length < 2:
            raise ConfigError("config key 'max_length' must be at least 2")


@dataclass
class ExportResult:
    out_dir: Path
    head: str
    files: dict[str, int]  # file name -> bytes
    parity: dict[str, dict[str, Any]]  # "fp32"/"int8" -> max_abs_diff, ...
    metric: dict[str, Any] | None  # task metric of torch and each file, or None


# ----------------------------------------------------------------------------- loading


def detect_head(config) -> str:
    """The head a checkpoint was saved with, from ``config.architectures``."""
    for arch in getattr(config, "architectures", None) or []:
        for suffix, head in _ARCH_SUFFIX:
            if arch.endswith(suffix):
                return head
    return "encoder"


def load_torch_model(name: str | Path, head: str = "auto") -> tuple[nn.Module, str]:
    """Load ``name`` for ``head`` in fp32 eval mode; returns ``(model, head)``.

    Fails when the head's weights are not in the checkpoint: exporting or timing a randomly
    initialised head would look fine and mean nothing.
    """
    import transformers

    ref = resolve_model(name)
    try:
        config = transformers.AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as exc:
        raise DistilkitError(f"cannot read the config of '{name}': {exc}") from exc
    if head == "auto":
        head = detect_head(config)
    if head not in _HEADS:
        raise DistilkitError(f"unknown head '{head}' (known: auto, {', '.join(_HEADS)})")
    auto_cls = getattr(transformers, _HEADS[head][0])
    # transformers prints a load report listing e.g. a masked-LM head left out of an encoder;
    # that is expected here, and the missing keys that matter are checked just below.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, info = auto_cls.from_pretrained(
            ref, config=config, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise DistilkitError(f"cannot load '{name}' as {head}: {exc}") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    # BERT's pooler is unused by every exported output; anything else missing is a real gap.
    missing = [k for k in missing if "pooler" not in k]
    if missing:
        raise DistilkitError(
            f"'{name}' has no trained weights for the {head} head (missing e.g. {missing[0]}); "
            f"export the head it was trained with (--head auto) or fine-tune it first"
        )
    return model.eval(), head


def _input_names(model: nn.Module) -> list[str]:
    accepted = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    # DistilBERT-style models have no segment embeddings and no token_type_ids argument.
    if "token_type_ids" in accepted and getattr(model.config, "type_vocab_size", 0):
        names.append("token_type_ids")
    return names


class _Graph(nn.Module):
    """Positional-input, tuple-output view of a transformers model, the form ONNX export needs."""

    def __init__(self, model: nn.Module, input_names: list[str], output_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = output_names

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        out = self.model(**{n: given[n] for n in self.input_names}, return_dict=True)
        return tuple(out[name] for name in self.output_names)


# ----------------------------------------------------------------------------- inference wrapper


class OnnxModel:
    """An onnxruntime session with the calling convention of a tokenizer's output.

    ``OnnxModel("out/model.int8.onnx")(**tokenizer(texts, return_tensors="np"))`` returns a dict
    ``output name -> np.ndarray``; inputs the graph does not take (``token_type_ids`` for a
    DistilBERT student) are dropped, integer inputs are cast to int64, torch tensors accepted.
    """

    def __init__(self, path: str | Path, threads: int = 0, device: str = "cpu"):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise DistilkitError(f"ONNX file not found: {self.path}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        # One graph, run sequentially: inter-op threads would only compete for the same cores.
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for corrupt files
            raise DistilkitError(f"onnxruntime cannot load {self.path}: {exc}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    @classmethod
    def from_export(cls, folder: str | Path, precision: str = "fp32", **kwargs) -> OnnxModel:
        """Load ``model.onnx`` (fp32) or ``model.int8.onnx`` (int8) from an export folder."""
        name = {"fp32": FP32_FILE, "int8": INT8_FILE}.get(precision)
        if name is None:
            raise DistilkitError(f"precision must be fp32 or int8, not '{precision}'")
        return cls(Path(folder) / name, **kwargs)

    def feed(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DistilkitError(f"{self.path.name} needs input '{missing[0]}'")
        feed = {}
        for name in self.input_names:
            value = inputs[name]
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            feed[name] = np.asarray(value, dtype=np.int64)
        return feed

    def run_feed(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run a feed prepared by :meth:`feed` (the timing loop's path: no per-call conversion)."""
        return self.session.run(None, feed)

    def __call__(self, **inputs: Any) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, self.feed(inputs))))


# ----------------------------------------------------------------------------- export


def export(cfg: ExportConfig) -> ExportResult:
    """Export ``cfg.model`` to ONNX (and int8) in ``cfg.out``, failing on any parity breach."""
    cfg.validate()
    if not cfg.model or not cfg.out:
        raise DistilkitError("export needs model and out")
    if cfg.task and not cfg.data_dir:
        raise DistilkitError("the dev-set metric check (task) needs data_dir")
    out = Path(cfg.out)
    # Locked for the whole export; --overwrite only ever removes an earlier output of distilkit,
    # never the model being exported (runfolder).
    with claim_folder(
        out,
        "export",
        overwrite=cfg.overwrite,
        inputs={"the model": cfg.model, "the data": cfg.data_dir},
        is_residue=lambda c: all(p.name == _SCRATCH for p in c.contents()),
    ) as claim:
        return _export(cfg, claim)


_SCRATCH = ".tmp-export"


def _export(cfg: ExportConfig, claim) -> ExportResult:
    out = claim.folder
    model, head = load_torch_model(cfg.model, cfg.head)
    if cfg.task and head != "sequence-classification":
        raise DistilkitError(
            f"the dev-set metric check needs a sequence-classification model, "
            f"'{cfg.model}' exports as {head}"
        )
    tokenizer = _maybe_tokenizer(cfg.model)
    input_names = _input_names(model)
    output_names = _HEADS[head][1]
    samples = _sample_inputs(model, tokenizer, input_names)

    # Built in a hidden sub-folder and published with export.json last: a failed export leaves
    # nothing that looks like one.
    tmp = claim.scratch(_SCRATCH)
    threads_before = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        graph = _Graph(model, input_names, output_names)
        t0 = time.perf_counter()
        _torch_to_onnx(graph, samples[0], tmp / FP32_FILE, cfg.opset)
        log.info("exported %s (%s) to ONNX in %.1fs", cfg.model, head, time.perf_counter() - t0)
        files = [FP32_FILE]
        int8_recipe = None
        if cfg.quantize == "int8":
            int8_recipe = _quantize_int8(tmp / FP32_FILE, tmp / INT8_FILE, cfg)
            files.append(INT8_FILE)

        parity = {}
        for name in files:
            precision = "int8" if name == INT8_FILE else "fp32"
            parity[precision] = _check_parity(graph, tmp / name, samples, precision, cfg)

        metric = None
        if cfg.task:
            metric = _check_metric(model, tokenizer, tmp, files, cfg)

        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        sizes = {name: (tmp / name).stat().st_size for name in files}
        manifest = {
            "source": str(cfg.model),
            "architecture": type(model).__name__,
            "model_type": model.config.model_type,
            "head": head,
            "inputs": input_names,
            "outputs": list(output_names),
            "dynamic_axes": {"batch": 0, "sequence": 1},
            "opset": cfg.opset,
            "int8_recipe": int8_recipe,
            "files": {
                name: {"precision": "int8" if name == INT8_FILE else "fp32", "bytes": sizes[name]}
                for name in files
            },
            "parameters": count_parameters(model),
            "parity": parity,
            "metric": metric,
            "config": to_dict(cfg),
            "versions": _versions(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        claim.publish(tmp, last=MANIFEST)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads_before)
    log.info("wrote %s: %s", out, ", ".join(f"{n} {b / 1e6:.1f} MB" for n, b in sizes.items()))
    return ExportResult(out, head, sizes, parity, metric)


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
)


def _maybe_tokenizer(name: str):
    """The model's tokenizer, or None for a local folder without tokenizer files (transformers
    would otherwise build an empty-vocabulary one, turning every sample text into [UNK])."""
    from distilkit.modeling import load_tokenizer

    path = Path(resolve_model(name))
    if path.is_dir() and not any((path / f).is_file() for f in _TOKENIZER_FILES):
        log.info("%s has no tokenizer files: parity uses random token ids", name)
        return None
    return load_tokenizer(name)


def _sample_inputs(
    model: nn.Module, tokenizer, input_names: list[str]
) -> list[dict[str, torch.Tensor]]:
    """Two feeds: a padded batch (B >= 2, L >= 2: export specialises sizes 0 and 1) and one
    unpadded sequence of another length, so a graph with a baked-in shape or mask fails parity."""
    if tokenizer is not None:
        a = [t for t, _ in _SAMPLE_TEXTS]
        b = [p or "" for _, p in _SAMPLE_TEXTS]
        batch = tokenizer(
            a,
            b,
            padding=True,
            truncation=True,
            max_length=64,
            return_tensors="pt",
            return_token_type_ids=True,
        )
        single = tokenizer(["Short and unpadded."], return_tensors="pt", return_token_type_ids=True)
        feeds = [dict(batch), dict(single)]
    else:
        vocab = model.config.vocab_size
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(low=min(5, vocab - 1), high=vocab, size=(4, 13), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0
        mask[3, 5:] = 0
        single = torch.randint(low=min(5, vocab - 1), high=vocab, size=(1, 6), generator=g)
        feeds = [
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)},
            {
                "input_ids": single,
                "attention_mask": torch.ones_like(single),
                "token_type_ids": torch.zeros_like(single),
            },
        ]
    return [{n: f[n].to(torch.int64) for n in input_names} for f in feeds]


def _torch_to_onnx(graph: _Graph, sample: dict[str, torch.Tensor], path: Path, opset: int) -> None:
    max_len = int(getattr(graph.model.config, "max_position_embeddings", 512))
    batch = torch.export.Dim("batch", max=1 << 16)
    seq = torch.export.Dim("sequence", max=max_len)
    args = tuple(sample[n] for n in graph.input_names)
    n_bytes = sum(p.numel() * p.element_size() for p in graph.parameters())
    try:
        with (
            warnings.catch_warnings(),
            _quiet("torch.onnx", "onnx_ir", "onnxscript"),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                args,
                dynamo=True,
                input_names=list(graph.input_names),
                output_names=list(graph.output_names),
                dynamic_shapes=tuple({0: batch, 1: seq} for _ in args),
                opset_version=opset,
                verbose=False,
            )
            # Protobuf caps one file at 2 GB; bigger models keep weights in a side file.
            program.save(str(path), external_data=n_bytes > 1_800_000_000)
    except ImportError as exc:
        raise DistilkitError(f"ONNX export needs onnxscript: {exc}") from exc
    except Exception as exc:  # the exporter raises many internal types; the message matters
        raise DistilkitError(f"ONNX export of {type(graph.model).__name__} failed: {exc}") from exc


@contextlib.contextmanager
def _quiet(*names: str):
    """Raise these loggers to ERROR: the exporter logs every rewrite rule at INFO."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _QuantisationChatter(logging.Filter):
    """onnxruntime.quantization logs through the root logger: an INFO line per tensor, and a hint
    to run ``quant_pre_process``, whose symbolic shape inference fails on dynamo-exported
    transformer graphs. Neither helps a user; real warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" not in record.pathname:
            return True
        hint = "pre-processing before quantization" in record.getMessage()
        return record.levelno >= logging.WARNING and not hint


def _quantize_int8(src: Path, dst: Path, cfg: ExportConfig) -> dict[str, Any]:
    """Dynamic int8 quantisation of ``src`` into ``dst``; returns the recipe for export.json."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = []
    if cfg.int8_keep_ffn_output:
        exclude = _ffn_output_matmuls(onnx.load(str(src), load_external_data=False))
        log.info("int8: keeping %d FFN output projections in fp32", len(exclude))
    chatter = _QuantisationChatter()
    root = logging.getLogger()
    root.addFilter(chatter)
    try:
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            per_channel=cfg.int8_per_channel,
            nodes_to_exclude=exclude,
            use_external_data_format=src.with_suffix(".onnx.data").exists(),
        )
    except Exception as exc:
        raise DistilkitError(f"int8 quantisation of {src.name} failed: {exc}") from exc
    finally:
        root.removeFilter(chatter)
    return {
        "method": "onnxruntime quantize_dynamic",
        "matmul_weights": "int8, " + ("per channel" if cfg.int8_per_channel else "per tensor"),
        "embedding_tables": "uint8, per tensor",
        "activations": "uint8, scale per batch at run time",
        "kept_fp32": exclude,
    }


def _ffn_output_matmuls(model) -> list[str]:
    """MatMul nodes fed by an activation function: each layer's FFN down-projection.

    The activation is a ``Gelu`` node at opset >= 20 and an Erf/Tanh expression below, so walk
    back a few elementwise nodes. Attention and QKV projections are fed by Reshape/Transpose and
    LayerNormalization and stop the walk at once.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    activations = {"Gelu", "FastGelu", "BiasGelu", "Relu", "Erf", "Tanh"}
    elementwise = {"Mul", "Add", "Div", "Cast"}
    names = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        frontier, found = [node.input[0]], False
        for _ in range(4):
            nodes = [producer[t] for t in frontier if t in producer]
            if any(n.op_type in activations for n in nodes):
                found = True
                break
            frontier = [t for n in nodes if n.op_type in elementwise for t in n.input]
        if found:
            names.append(node.name)
    return names


def _reference(graph: _Graph, feed: dict[str, torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.float().numpy() for t in graph(*(feed[n] for n in graph.input_names))]


def _check_parity(
    graph: _Graph,
    path: Path,
    samples: list[dict[str, torch.Tensor]],
    precision: str,
    cfg: ExportConfig,
) -> dict[str, Any]:
    """Max |onnx - torch| over real-token positions of every output and sample feed, plus how
    often the two agree on the argmax (class, answer start/end, masked token)."""
    session = OnnxModel(path, threads=cfg.threads)
    max_diff = max_ref = sum_diff = 0.0
    count = agree = total = 0
    for feed in samples:
        ref = _reference(graph, feed)
        got = session.run_feed(session.feed(feed))
        keep = feed["attention_mask"].numpy().astype(bool)  # (B, L)
        for name, r, g in zip(graph.output_names, ref, got):
            if r.shape != g.shape:
                raise DistilkitError(
                    f"{path.name}: output {name} has shape {g.shape}, PyTorch gives {r.shape}"
                )
            if name in ("start_logits", "end_logits"):  # (B, L): argmax over real positions
                r_top = np.where(keep, r, -np.inf).argmax(-1)
                g_top = np.where(keep, g, -np.inf).argmax(-1)
            if name in _PER_TOKEN or (name == "logits" and r.ndim == 3):
                r, g = r[keep], g[keep]  # (N_real, ...): padded positions carry no meaning
            # A NaN difference compares False with every tolerance, so it would pass unseen.
            if not np.isfinite(r).all():
                raise DistilkitError(
                    f"PyTorch gives non-finite values in output {name} on the parity inputs; "
                    f"nothing was written to {cfg.out}"
                )
            if not np.isfinite(g).all():
                raise DistilkitError(
                    f"parity check failed for {path.name}: output {name} has non-finite values "
                    f"(NaN or inf) where PyTorch's are finite; nothing was written to {cfg.out}"
                )
            if name == "logits":  # (B, C) classes or (N_real, V) vocabulary
                r_top, g_top = r.argmax(-1), g.argmax(-1)
            if name != "last_hidden_state":
                agree += int((r_top == g_top).sum())
                total += r_top.size
            diff = np.abs(g.astype(np.float64) - r)
            max_diff = max(max_diff, float(diff.max()))
            max_ref = max(max_ref, float(np.abs(r).max()))
            sum_diff += float(diff.sum())
            count += diff.size
    result: dict[str, Any] = {
        "max_abs_diff": max_diff,
        "mean_abs_diff": sum_diff / max(count, 1),
        "max_abs_reference": max_ref,
        "relative_max_diff": max_diff / max(max_ref, 1e-12),
        "argmax_agreement": agree / total if total else None,
    }
    if precision == "fp32":
        result["tolerance"] = {"atol": cfg.atol}
        ok = max_diff <= cfg.atol
        limit = f"atol {cfg.atol:g}"
    else:
        result["tolerance"] = {"rtol": cfg.int8_rtol}
        ok = result["relative_max_diff"] <= cfg.int8_rtol
        limit = f"int8_rtol {cfg.int8_rtol:g} x max|torch| {max_ref:.3g}"
    log.info(
        "parity %s: max |diff| %.3g (%.3g of max|torch|), mean %.3g",
        path.name,
        max_diff,
        result["relative_max_diff"],
        result["mean_abs_diff"],
    )
    if not ok:
        raise DistilkitError(
            f"parity check failed for {path.name}: max |onnx - torch| = {max_diff:.4g} exceeds "
            f"{limit}; nothing was written to {cfg.out}"
        )
    return result


def _onnx_logits(session: OnnxModel, tokenizer, examples, max_length: int) -> np.ndarray:
    """``finetune.predict`` for an ONNX session: same tokenisation, same length-sorted batches
    (int8 activation scales are computed per batch, so the batching must match too)."""
    from distilkit.finetune import tokenize

    order = sorted(
        range(len(examples)), key=lambda i: len(examples[i].text_a) + len(examples[i].text_b or "")
    )
    out = []
    for start in range(0, len(order), _EVAL_BATCH):
        chunk = [examples[i] for i in order[start : start + _EVAL_BATCH]]
        batch = tokenize(tokenizer, chunk, max_length, torch.device("cpu"))
        out.append(session(**batch)["logits"])  # (B, C)
    logits = np.concatenate(out)
    restored = np.empty_like(logits)
    restored[np.asarray(order)] = logits
    return restored


def _check_metric(model, tokenizer, folder: Path, files: list[str], cfg: ExportConfig) -> dict:
    """Dev-set metric of PyTorch and of each ONNX file; fail if a file loses too much."""
    from distilkit.finetune import predict
    from distilkit.metrics import compute_metrics
    from distilkit.tasks import get_task, read_task

    if tokenizer is None:
        raise DistilkitError("the dev-set metric check needs the model's tokenizer")
    spec = get_task(cfg.task)
    split = spec.dev_splits[0]
    examples = read_task(spec.name, split, cfg.data_dir)
    if cfg.max_eval_examples:
        examples = examples[: cfg.max_eval_examples]
    gold = np.array([e.label for e in examples])
    if model.config.num_labels != spec.num_labels:
        raise DistilkitError(
            f"model has {model.config.num_labels} labels, task {spec.name} has {spec.num_labels}"
        )

    ref_logits = predict(
        model, tokenizer, examples, cfg.max_length, _EVAL_BATCH, torch.device("cpu")
    )  # (N, C)
    scores = {"pytorch": compute_metrics(spec.name, ref_logits, gold)}
    agreement: dict[str, float] = {}
    for name in files:
        session = OnnxModel(folder / name, threads=cfg.threads)
        logits = _onnx_logits(session, tokenizer, examples, cfg.max_length)
        scores[name] = compute_metrics(spec.name, logits, gold)
        if spec.kind == "classification":
            # Net metric change hides flips that cancel out; the flip rate does not.
            same = logits.argmax(-1) == ref_logits.argmax(-1)
            agreement[name] = float(same.mean())
    result: dict[str, Any] = {
        "task": spec.name,
        "split": split,
        "n_examples": len(examples),
        "scores": scores,
        "max_drop_points": cfg.max_metric_drop,
        "drop_points": {},
        "prediction_agreement": agreement or None,
    }
    base = scores["pytorch"]["score"]
    for name in files:
        drop = 100.0 * (base - scores[name]["score"])
        result["drop_points"][name] = drop
        log.info(
            "%s %s: pytorch %.4f, %s %.4f (drop %.2f points)",
            spec.title,
            split,
            base,
            name,
            scores[name]["score"],
            drop,
        )
        if drop > cfg.max_metric_drop:
            raise DistilkitError(
                f"metric check failed for {name}: {spec.title} {split} score "
                f"{scores[name]['score']:.4f} vs PyTorch {base:.4f} (drop {drop:.2f} points > "
                f"{cfg.max_metric_drop:g}); nothing was written to {cfg.out}"
            )
    return result


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": ".".join(map(str, sys.version_info[:3])),
    }
