"""Size and speed of encoders, PyTorch and ONNX side by side, on the paper's Table 3 protocol.

``bench(cfg)`` measures, for each model:

- parameters (total, without embeddings) and size on disk (safetensors, ONNX fp32 or int8);
- latency at batch size 1 over the STS-B dev sentence pairs (the paper's Table 3: a full pass,
  one pair at a time): total seconds, per-example median and p90. Pairs are tokenised before the
  clock starts (the paper's on-device figure also excludes tokenisation);
- throughput at batch 32 x sequence 128 (random token ids, no padding);
- peak memory: the process's peak RSS and what the model added to it (CPU), or the peak CUDA
  allocation (PyTorch on GPU);
- quality: zero-shot STS-B Spearman on the same dev pairs (each sentence embedded alone, mean
  pooling, cosine; the ``distilkit zeroshot`` protocol), for every row whose output is the
  encoder's hidden states, PyTorch and ONNX alike. Size and speed alone would hide what int8 or
  a shallower model costs.

Every row names the exact file it timed (``file``). An export folder holding ``model.onnx`` and
``model.int8.onnx`` gives one row per file, labelled ``NAME/model.onnx`` and
``NAME/model.int8.onnx``; name a file to time only that one.

Fairness on a shared machine: each model runs in its own process (``isolate``), so peak memory is
its own and no allocator state leaks between models; full passes and throughput batches are
*interleaved* (pass 1 of every model, then pass 2, ...), so a burst of load from another job hits
every model alike instead of one. Totals are medians over ``repeats`` passes; threads are fixed.

Every ratio compares with the first model: ``speedup`` = its time / this time, ``size_ratio`` =
this size / its size. Outputs: ``bench.json``, ``bench.md`` and ``bench.png`` in ``out``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import multiprocessing as mp
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np

from distilkit.config import ConfigError, to_dict
from distilkit.errors import DistilkitError
from distilkit.runfolder import claim_folder

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    """One benchmark: the models of one table, measured under one protocol."""

    models: list[str] = field(default_factory=list)
    """PyTorch folders ('minilm', hub ids), .onnx files, or export folders (one row per ONNX
    file in them); 'label=MODEL' names a row. The first row is the baseline of every ratio."""
    out: str = ""
    """Folder for bench.json, bench.md and bench.png."""
    overwrite: bool = False
    """Replace what else an earlier distilkit output left in out (earlier bench results alone
    are always replaced)."""
    data_dir: str = ""
    """GLUE root or STS-B folder: the latency pass runs over the STS-B dev pairs."""
    max_examples: int = 0
    """Use the first N dev pairs (0 = all 1,500, the paper's protocol)."""
    repeats: int = 3
    """Full latency passes per model; the total reported is their median."""
    warmup: int = 20
    """Untimed forward passes (dev pairs) before the first timed pass."""
    threads: int = 1
    """CPU threads for torch and onnxruntime (0 = library default)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto': cuda when available, else cpu."""
    head: Literal["encoder", "auto"] = "encoder"
    """PyTorch models: 'encoder' times the bare encoder so every row does the same work (a
    masked-LM head alone costs a 30k-vocabulary projection at every token); ONNX files run the
    head they were exported with."""
    max_length: int = 128
    """Longest input of the latency pass, in tokens; longer pairs are truncated."""
    throughput_batch: int = 32
    """Batch size of the throughput measurement."""
    throughput_seq: int = 128
    """Sequence length of the throughput measurement."""
    throughput_iters: int = 10
    """Timed forward passes of the throughput measurement."""
    isolate: bool = True
    """One process per model (needed for per-model peak memory)."""
    quality: bool = True
    """Zero-shot STS-B Spearman of each encoder row on the same dev pairs (not timed)."""
    quality_batch: int = 64
    """Batch size of the quality pass (int8 activation scales are per batch; the zeroshot
    command's default)."""
    plot: bool = True
    """Also write bench.png."""

    def validate(self) -> None:
        for name in (
            "repeats",
            "throughput_batch",
            "throughput_seq",
            "throughput_iters",
            "quality_batch",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key '{name}' must be at least 1")
        for name in ("max_examples", "warmup", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key '{name}' must be >= 0")
        if self.max_length < 8:
            raise ConfigError("config key 'max_length' must be at least 8")


@dataclass
class BenchResult:
    out_dir: Path
    models: list[dict[str, Any]]
    files: dict[str, Path]


@dataclass
class _Spec:
    label: str
    source: str  # what the user wrote
    kind: Literal["pytorch", "onnx"]
    path: str  # resolved model reference or .onnx file
    folder: str  # where config.json / tokenizer live
    file: str  # the file timed: the .onnx file, or the PyTorch weights (else the reference)


# ----------------------------------------------------------------------------- public entry


def bench(cfg: BenchConfig) -> BenchResult:
    """Measure every model of ``cfg.models`` and write the JSON, markdown table and plot."""
    cfg.validate()
    if not cfg.models:
        raise DistilkitError("bench needs at least one model")
    if not cfg.out:
        raise DistilkitError("bench needs out (a folder for the results)")
    if not cfg.data_dir:
        raise DistilkitError(
            "bench needs data_dir (GLUE root or STS-B folder): the latency "
            "protocol is a pass over the STS-B dev pairs"
        )
    specs = [spec for text in cfg.models for spec in _parse_specs(text)]
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise DistilkitError(f"two models share a label ({labels}); name them with label=MODEL")
    _read_pairs(cfg)  # fail on missing data before starting any worker
    # Claimed before any work: an unwritable, busy or foreign --out fails now, not after the
    # timing passes; a rerun replaces its own earlier results.
    with claim_folder(
        cfg.out,
        "bench",
        overwrite=cfg.overwrite,
        inputs={f"the model {s.label}": s.source for s in specs},
        is_residue=lambda c: all(p.name in _OUTPUT_FILES for p in c.contents()),
    ):
        return _bench(cfg, specs)


_OUTPUT_FILES = {"bench.json", "bench.md", "bench.png"}


def _bench(cfg: BenchConfig, specs: list) -> BenchResult:
    device = _pick_device(cfg.device)
    env_start = _environment(cfg, device)

    runners = [(_Remote if cfg.isolate else _Runner)(spec, cfg, device) for spec in specs]
    try:
        infos = [r.ready() for r in runners]
        for r in runners:
            r.warmup()
        totals: list[list[float]] = [[] for _ in runners]
        per_example: list[list[np.ndarray]] = [[] for _ in runners]
        for rep in range(cfg.repeats):
            for i, r in enumerate(runners):  # interleaved: see the module docstring
                total, times = r.latency_pass()
                totals[i].append(total)
                per_example[i].append(times)
                log.info("pass %d/%d %s: %.2fs", rep + 1, cfg.repeats, specs[i].label, total)
        batch_times: list[list[float]] = [[] for _ in runners]
        for _ in range(cfg.throughput_iters):
            for i, r in enumerate(runners):  # interleaved too
                batch_times[i].append(r.throughput_batch())
        throughputs = [_throughput(cfg, t) for t in batch_times]
        memories = [r.memory() for r in runners]
        # After the memory readings: the quality pass's batches must not set the peaks.
        qualities = [r.quality() if cfg.quality else None for r in runners]
    finally:
        for r in reversed(runners):  # in-process runners restore torch's thread count in turn
            r.close()

    rows = []
    for i, spec in enumerate(specs):
        times = np.concatenate(per_example[i]) * 1e3  # (repeats * N,) ms
        rows.append(
            {
                "label": spec.label,
                "source": spec.source,
                "file": spec.file,
                **infos[i],
                "latency": {
                    "examples": int(len(per_example[i][0])),
                    "total_s": statistics.median(totals[i]),
                    "total_s_runs": totals[i],
                    "per_example_ms_median": float(np.median(times)),
                    "per_example_ms_p90": float(np.percentile(times, 90)),
                    "per_example_ms_mean": float(times.mean()),
                },
                "throughput": throughputs[i],
                "memory": memories[i],
                "quality": qualities[i],
            }
        )
    _add_ratios(rows)
    env = {**env_start, "loadavg_end": _loadavg()}
    result = {
        "protocol": _protocol(cfg, device),
        "environment": env,
        "models": rows,
        "config": to_dict(cfg),
    }

    out = Path(cfg.out)
    files = {"json": out / "bench.json", "markdown": out / "bench.md"}
    files["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    files["markdown"].write_text(_markdown(result), encoding="utf-8")
    if cfg.plot:
        files["png"] = out / "bench.png"
        _plot(rows, files["png"])
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return BenchResult(out, rows, files)


# ----------------------------------------------------------------------------- models


def _throughput(cfg: BenchConfig, times: list[float]) -> dict[str, Any]:
    batch_s = statistics.median(times)
    return {
        "batch": cfg.throughput_batch,
        "seq": cfg.throughput_seq,
        "batch_s_median": batch_s,
        "batch_s_runs": times,
        "sequences_per_s": cfg.throughput_batch / batch_s,
        "tokens_per_s": cfg.throughput_batch * cfg.throughput_seq / batch_s,
    }


def _parse_specs(text: str) -> list[_Spec]:
    """The rows of one ``--model`` argument: one, or one per ONNX file of an export folder."""
    from distilkit.export import FP32_FILE, INT8_FILE, MANIFEST
    from distilkit.modeling import resolve_model

    label = None
    head, sep, rest = text.partition("=")
    if sep and rest and "/" not in head and os.sep not in head:
        label, text = head, rest
    path = Path(text).expanduser()
    if path.suffix == ".onnx":
        if not path.is_file():
            raise DistilkitError(f"ONNX file not found: {path}")
        name = label or f"{path.parent.name}/{path.name}"
        return [_Spec(name, text, "onnx", str(path), str(path.parent), str(path))]
    if path.is_dir() and any((path / f).is_file() for f in (FP32_FILE, INT8_FILE)):
        # An export folder: time every file it holds, each row naming its file, rather than
        # silently picking one (a row labelled int8 once timed the fp32 file).
        names = [FP32_FILE, INT8_FILE]
        if (path / MANIFEST).is_file():
            listed = json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("files", {})
            names = [n for n in listed if n.endswith(".onnx")] or names
        files = [path / n for n in names if (path / n).is_file()]
        base = label or path.name
        if len(files) > 1:
            log.info(
                "%s holds %s: one row each (give the file's path to time only one)",
                path,
                " and ".join(f.name for f in files),
            )
        return [_Spec(f"{base}/{f.name}", text, "onnx", str(f), str(path), str(f)) for f in files]
    ref = resolve_model(text)
    weights = _weight_files(Path(ref))
    file = str(weights[0]) if len(weights) == 1 else ref
    return [_Spec(label or Path(text).name or text, text, "pytorch", ref, ref, file)]


def _read_stsb(cfg: BenchConfig) -> list:
    from distilkit.tasks import read_task

    examples = read_task("stsb", "dev", cfg.data_dir)
    if cfg.max_examples:
        examples = examples[: cfg.max_examples]
    return examples


def _read_pairs(cfg: BenchConfig) -> list[tuple[str, str]]:
    return [(e.text_a, e.text_b or "") for e in _read_stsb(cfg)]


def _pick_device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise DistilkitError("device cuda requested but torch sees no CUDA device")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors (else .bin) weight files of a local model folder; [] for a hub id."""
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))


def _weights_bytes(folder: Path) -> tuple[int | None, str]:
    files = _weight_files(folder)
    if not files:
        return None, "pytorch"
    fmt = "safetensors" if files[0].suffix == ".safetensors" else "pytorch .bin"
    return sum(f.stat().st_size for f in files), fmt


def _onnx_facts(path: Path, folder: Path) -> dict[str, Any]:
    """Size, precision and parameter count of an ONNX file (from export.json when present)."""
    import onnx

    from distilkit.export import MANIFEST

    size = path.stat().st_size
    data = path.with_name(path.name + ".data")
    if data.is_file():
        size += data.stat().st_size
    manifest = {}
    if (folder / MANIFEST).is_file():
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    entry = manifest.get("files", {}).get(path.name)
    graph = onnx.load(str(path), load_external_data=False).graph
    if entry:
        precision = entry["precision"]
    else:
        quant_ops = {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul"}
        precision = "int8" if any(n.op_type in quant_ops for n in graph.node) else "fp32"
    params = manifest.get("parameters")
    if params is None:  # not from distilkit export: count initializer elements
        total = sum(int(np.prod(t.dims)) for t in graph.initializer)
        params = {"total": total, "without_embeddings": None}
    return {
        "size_bytes": size,
        "format": f"onnx {precision}",
        "parameters": params,
        "head": manifest.get("head", "unknown"),
    }


class _Runner:
    """Loads one model and times it; runs in a worker process (isolate) or in-process."""

    def __init__(self, spec: _Spec, cfg: BenchConfig, device: str):
        import torch

        from distilkit.modeling import count_parameters, load_tokenizer

        self.cfg, self.device, self.kind = cfg, device, spec.kind
        self._threads_before = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # Libraries first, so that the memory baseline leaves out code every model row shares
        # and "model RSS" is weights, activations and runtime buffers.
        import onnxruntime  # noqa: F401
        from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: F401

        self.rss_before = _current_rss()
        t0 = time.perf_counter()
        if spec.kind == "pytorch":
            from distilkit.export import load_torch_model

            model, head = load_torch_model(spec.path, cfg.head)
            self.model = model.to(device)
            self.accepts = set(inspect.signature(model.forward).parameters)
            size, fmt = _weights_bytes(Path(spec.folder))
            config = model.config
            self.info = {
                "format": f"{fmt} fp32",
                "runtime": f"pytorch {torch.__version__}",
                "head": head,
                "parameters": count_parameters(model),
                "size_bytes": size,
            }
        else:
            from distilkit.export import OnnxModel

            self.model = OnnxModel(spec.path, threads=cfg.threads, device=device)
            self.info = {
                **_onnx_facts(Path(spec.path), Path(spec.folder)),
                "runtime": "onnxruntime "
                + self.model.providers[0].replace("ExecutionProvider", ""),
            }
            config = _config_of(spec.folder)
        self.info["load_s"] = time.perf_counter() - t0
        self.info["device"] = device
        self.info["threads"] = cfg.threads or None
        tokenizer = load_tokenizer(spec.folder) if spec.kind == "pytorch" else _onnx_tokenizer(spec)
        self.tokenizer = tokenizer

        max_pos = getattr(config, "max_position_embeddings", None) if config else None
        if max_pos is not None and cfg.throughput_seq > max_pos:
            raise DistilkitError(
                f"{spec.source}: throughput_seq {cfg.throughput_seq} exceeds the "
                f"model's {max_pos} positions"
            )
        pairs = _read_pairs(cfg)
        # Tokenised up front: the clock measures the model, not the tokenizer.
        self.feeds = [
            self._feed(
                tokenizer(
                    a,
                    b,
                    truncation=True,
                    max_length=cfg.max_length,
                    return_token_type_ids=True,
                    return_tensors="np",
                )
            )
            for a, b in pairs
        ]
        vocab = int(getattr(config, "vocab_size", None) or len(tokenizer))
        rng = np.random.default_rng(0)
        shape = (cfg.throughput_batch, cfg.throughput_seq)
        ids = rng.integers(low=min(1000, vocab // 2), high=vocab, size=shape, dtype=np.int64)
        self.batch_feed = self._feed(
            {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "token_type_ids": np.zeros_like(ids),
            }
        )
        self.rss_loaded = _current_rss()  # weights and inputs in memory, nothing run yet

    def _feed(self, enc) -> dict[str, Any]:
        if self.kind == "onnx":
            return self.model.feed(dict(enc))
        import torch

        return {
            k: torch.as_tensor(np.asarray(v, dtype=np.int64), device=self.device)
            for k, v in enc.items()
            if k in self.accepts
        }

    def _forward(self, feed: dict[str, Any]) -> None:
        if self.kind == "onnx":
            self.model.run_feed(feed)
            return
        import torch

        with torch.inference_mode():
            self.model(**feed)
        if self.device == "cuda":
            torch.cuda.synchronize()  # the kernels are queued; the clock must wait for them

    # -- the protocol, one call each, so that a parent can interleave models

    def ready(self) -> dict[str, Any]:
        return dict(self.info)

    def warmup(self) -> None:
        for feed in (self.feeds * (1 + self.cfg.warmup // max(len(self.feeds), 1)))[
            : self.cfg.warmup
        ]:
            self._forward(feed)
        self._forward(self.batch_feed)

    def latency_pass(self) -> tuple[float, np.ndarray]:
        times = np.empty(len(self.feeds))
        clock = time.perf_counter
        start = clock()
        for i, feed in enumerate(self.feeds):
            t0 = clock()
            self._forward(feed)
            times[i] = clock() - t0
        return clock() - start, times

    def throughput_batch(self) -> float:
        """Seconds for one batch of throughput_batch x throughput_seq."""
        t0 = time.perf_counter()
        self._forward(self.batch_feed)
        return time.perf_counter() - t0

    def memory(self) -> dict[str, Any]:
        mem: dict[str, Any] = {
            "isolated": self.cfg.isolate,
            "peak_rss_mb": None,
            "model_rss_mb": None,
            "loaded_rss_mb": None,
            "peak_cuda_mb": None,
        }
        if self.cfg.isolate:  # a process-wide peak is only this model's in its own process
            peak = _peak_rss()
            mem["peak_rss_mb"] = peak
            if self.rss_before is not None:
                # peak above the post-import baseline: weights + activations + runtime buffers
                mem["model_rss_mb"] = None if peak is None else peak - self.rss_before
                # after loading, before any forward pass: roughly the weights' footprint
                mem["loaded_rss_mb"] = self.rss_loaded - self.rss_before
        if self.device == "cuda" and self.kind == "pytorch":
            import torch

            mem["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return mem

    def quality(self) -> dict[str, Any]:
        """Zero-shot STS-B on the bench's dev pairs, through ``zeroshot.embed`` for PyTorch and
        ONNX alike (same tokenisation, length-sorted batches and mean pooling)."""
        import torch

        from distilkit.metrics import compute_metrics
        from distilkit.zeroshot import embed

        result: dict[str, Any] = {"task": "stsb-zeroshot", "spearman": None, "pearson": None}
        if self.kind == "onnx":
            if "last_hidden_state" not in self.model.output_names:
                result["skipped"] = f"the ONNX graph outputs {self.model.output_names}"
                return result
            encoder = _OnnxEncoder(self.model)
        else:
            if self.info["head"] != "encoder":
                result["skipped"] = f"timed with head {self.info['head']}, not the encoder"
                return result
            encoder = self.model
        examples = _read_stsb(self.cfg)
        kwargs = dict(
            max_length=self.cfg.max_length,
            batch_size=self.cfg.quality_batch,
            device=torch.device(self.device),
        )
        a = embed(encoder, self.tokenizer, [e.text_a for e in examples], **kwargs)  # (N, H)
        b = embed(encoder, self.tokenizer, [e.text_b or "" for e in examples], **kwargs)
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1).numpy()  # (N,)
        m = compute_metrics("stsb", cosine, np.array([e.label for e in examples]))
        result.update(spearman=m["spearman"], pearson=m["pearson"], pairs=len(examples))
        return result

    def close(self) -> None:
        import torch

        torch.set_num_threads(self._threads_before)
        self.model = None


class _OnnxEncoder:
    """An ONNX encoder session with the calling convention ``zeroshot.embed`` expects of a
    transformers encoder, so that both kinds of rows are scored by the same code."""

    def __init__(self, session):
        self.session = session

    def eval(self) -> _OnnxEncoder:
        return self

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> SimpleNamespace:
        import torch

        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.session(**inputs)["last_hidden_state"]  # (B, L, H)
        # Back where embed's attention mask lives (a CUDA run feeds CUDA tensors).
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden).to(input_ids.device))

    __call__ = forward


class _Remote:
    """A ``_Runner`` in a spawned process, driven over a pipe with the same methods."""

    def __init__(self, spec: _Spec, cfg: BenchConfig, device: str):
        ctx = mp.get_context("spawn")  # fork would inherit this process's threads and memory
        self.label = spec.label
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, spec, cfg, device), daemon=True)
        self.proc.start()
        child.close()

    def _call(self, method: str) -> Any:
        try:
            self.conn.send(method)
            status, payload = self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError) as exc:
            code = self.proc.exitcode
            raise DistilkitError(
                f"benchmark worker for {self.label} died (exit code {code}; out of memory?)"
            ) from exc
        if status == "error":
            raise DistilkitError(f"{self.label}: {payload}")
        return payload

    def ready(self) -> dict[str, Any]:
        return self._call("ready")

    def warmup(self) -> None:
        self._call("warmup")

    def latency_pass(self) -> tuple[float, np.ndarray]:
        return self._call("latency_pass")

    def throughput_batch(self) -> float:
        return self._call("throughput_batch")

    def memory(self) -> dict[str, Any]:
        return self._call("memory")

    def quality(self) -> dict[str, Any]:
        return self._call("quality")

    def close(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError):  # the worker may already be gone
                self.conn.send("stop")
            self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _worker(conn, spec: _Spec, cfg: BenchConfig, device: str) -> None:
    import torch

    # Fixed before any parallel work: inter-op threads would only compete for the same cores.
    torch.set_num_interop_threads(1)
    logging.basicConfig(level=logging.WARNING)
    try:
        runner = _Runner(spec, cfg, device)
    except Exception as exc:  # report to the parent, which owns the user-facing error
        conn.recv()
        conn.send(("error", str(exc) if isinstance(exc, DistilkitError) else repr(exc)))
        return
    while True:
        method = conn.recv()
        if method == "stop":
            break
        try:
            conn.send(("ok", getattr(runner, method)()))
        except Exception as exc:
            conn.send(("error", repr(exc)))
            break
    conn.close()


def _onnx_tokenizer(spec: _Spec):
    from transformers import AutoTokenizer

    folder = Path(spec.folder)
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise DistilkitError(
            f"{spec.source}: no tokenizer next to the ONNX file (export copies "
            f"it; the latency pass tokenises the STS-B pairs)"
        )
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise DistilkitError(
            f"{spec.source}: cannot load the tokenizer in {folder}: {exc}"
        ) from exc


def _config_of(folder: str):
    from transformers import AutoConfig

    if not (Path(folder) / "config.json").is_file():
        return None
    return AutoConfig.from_pretrained(folder)


# ----------------------------------------------------------------------------- memory, machine


def _current_rss() -> float | None:
    """Resident set size now, MiB (Linux)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss() -> float | None:
    """Peak resident set size of this process, MiB.

    Linux: ``VmHWM``, the high-water mark of this address space. Not ``ru_maxrss``: that one
    survives ``execve``, so a spawned worker would report its parent's peak (seen: every model of a
    run showing the same value, the size of the exporting parent).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    if platform.system() != "Darwin":  # ru_maxrss elsewhere may be the parent's, see above
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The CPU features that decide int8 and bf16 speed: VNNI runs int8 dot products in one
# instruction (without it, u8 x s8 products go through 16-bit steps), and without native bf16
# it is emulated. "AMD EPYC" alone names machines with and without them.
_CPU_FEATURES = (
    "avx2",
    "avx512f",
    "avx_vnni",
    "avx512_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
)


def cpu_features() -> list[str]:
    """Which of the int8/bf16-relevant x86 features the CPU has (Linux ``/proc/cpuinfo``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in _CPU_FEATURES if f in flags]
    except OSError:
        pass
    return []


def _environment(cfg: BenchConfig, device: str) -> dict[str, Any]:
    import onnxruntime
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    env = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "loadavg_start": _loadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _protocol(cfg: BenchConfig, device: str) -> dict[str, Any]:
    return {
        "latency": "STS-B dev sentence pairs, batch size 1, one full pass per repeat (paper "
        "Table 3); tokenisation excluded; passes interleaved across models",
        "throughput": f"batch {cfg.throughput_batch} x sequence {cfg.throughput_seq}, median of "
        f"{cfg.throughput_iters} interleaved batches",
        "device": device,
        "threads": cfg.threads or "library default",
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "max_length": cfg.max_length,
        "isolated_processes": cfg.isolate,
    }


# ----------------------------------------------------------------------------- reporting


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    base = rows[0]

    def ratio(num, den):
        return None if num is None or den in (None, 0) else num / den

    for row in rows:
        row["size_mb"] = None if row["size_bytes"] is None else row["size_bytes"] / 1e6
        row["ratios"] = {
            "speedup_latency": ratio(base["latency"]["total_s"], row["latency"]["total_s"]),
            # Medians of per-pair times: a descheduled slice (shared machine) moves a few pairs,
            # not the median, so this ratio is the steadier of the two under load.
            "speedup_latency_median": ratio(
                base["latency"]["per_example_ms_median"], row["latency"]["per_example_ms_median"]
            ),
            "speedup_throughput": ratio(
                row["throughput"]["sequences_per_s"], base["throughput"]["sequences_per_s"]
            ),
            "size_ratio": ratio(row["size_bytes"], base["size_bytes"]),
            "parameters_ratio": ratio(row["parameters"]["total"], base["parameters"]["total"]),
            "quality_points": None
            if _spearman(row) is None or _spearman(base) is None
            else 100 * (_spearman(row) - _spearman(base)),
        }


def _spearman(row: dict[str, Any], scale: float = 1.0) -> float | None:
    value = (row.get("quality") or {}).get("spearman")
    return None if value is None else scale * value


def _quality_note(rows: list[dict[str, Any]]) -> str:
    if all(r["quality"] is None for r in rows):
        return "Quality not measured (quality: false)."
    n = next((r["quality"].get("pairs") for r in rows if r["quality"]), None)
    skipped = [
        f"{r['label']} ({r['quality']['skipped']})" for r in rows if r["quality"].get("skipped")
    ]
    return (
        f"Quality: zero-shot STS-B Spearman of cosine similarities between mean-pooled sentence "
        f"embeddings, on the same {n} dev pairs (each sentence embedded alone, batches of "
        f"sorted lengths: the `distilkit zeroshot` protocol), untimed; Δ in points against the "
        f"first row." + (f" Not measured for {', '.join(skipped)}." if skipped else "")
    )


def _div(value: float | None, by: float) -> float | None:
    return None if value is None else value / by


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _markdown(result: dict[str, Any]) -> str:
    rows, env, proto = result["models"], result["environment"], result["protocol"]
    mb = 1e6
    columns = [
        ("model", lambda r: r["label"]),
        ("file timed", lambda r: f"`{r['file']}`"),
        ("format", lambda r: r["format"]),
        ("runtime", lambda r: r["runtime"]),
        ("head", lambda r: r["head"]),
        ("params", lambda r: _fmt(r["parameters"]["total"] / mb, ".1f", "M")),
        (
            "params w/o emb.",
            lambda r: _fmt(_div(r["parameters"].get("without_embeddings"), mb), ".1f", "M"),
        ),
        ("size (MB)", lambda r: _fmt(r["size_mb"], ".1f")),
        ("size vs first", lambda r: _fmt(_div(r["ratios"]["size_ratio"], 0.01), ".0f", "%")),
        ("STS-B pass (s)", lambda r: f"{r['latency']['total_s']:.2f}"),
        ("per pair median (ms)", lambda r: f"{r['latency']['per_example_ms_median']:.2f}"),
        ("p90 (ms)", lambda r: f"{r['latency']['per_example_ms_p90']:.2f}"),
        ("speed-up (pass)", lambda r: _fmt(r["ratios"]["speedup_latency"], ".2f", "×")),
        ("speed-up (median)", lambda r: _fmt(r["ratios"]["speedup_latency_median"], ".2f", "×")),
        ("throughput (seq/s)", lambda r: f"{r['throughput']['sequences_per_s']:.1f}"),
        ("× throughput", lambda r: _fmt(r["ratios"]["speedup_throughput"], ".2f", "×")),
        ("STS-B 0-shot (Spearman ×100)", lambda r: _fmt(_spearman(r, 100), ".2f")),
        ("Δ vs first (points)", lambda r: _fmt(r["ratios"]["quality_points"], "+.2f")),
        ("peak RSS (MB)", lambda r: _fmt(r["memory"]["peak_rss_mb"], ".0f")),
        ("RSS after load (MB)", lambda r: _fmt(r["memory"]["loaded_rss_mb"], ".0f")),
        ("model RSS peak (MB)", lambda r: _fmt(r["memory"]["model_rss_mb"], ".0f")),
    ]
    if all(r["quality"] is None for r in rows):  # quality: false
        columns = [c for c in columns if not c[0].startswith(("STS-B 0-shot", "Δ vs first"))]
    if any(r["memory"]["peak_cuda_mb"] is not None for r in rows):
        columns.append(("peak CUDA (MB)", lambda r: _fmt(r["memory"]["peak_cuda_mb"], ".0f")))
    lines = [
        "| " + " | ".join(name for name, _ in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(fn(r) for _, fn in columns) + " |" for r in rows),
    ]
    n = rows[0]["latency"]["examples"]
    lines += [
        "",
        f"Latency: {n} STS-B dev pairs, batch size 1, {proto['repeats']} interleaved full passes "
        f"(median total shown), tokenisation excluded. Speed-up (pass): ratio of pass totals; "
        f"speed-up (median): ratio of per-pair medians, the steadier one on a loaded machine. "
        f"Device {proto['device']}, threads {proto['threads']}. Throughput: "
        f"{proto['throughput']}. Ratios against the first row. Memory (own process per model): "
        f"peak RSS of the process; RSS after load and model RSS peak are above the baseline "
        f"after imports (after load: weights and inputs; peak: plus activations and runtime "
        f"buffers at the throughput batch).",
        _quality_note(rows),
        f"Machine: {env['cpu']} ({', '.join(env.get('cpu_features') or ['features unknown'])}), "
        f"{env['cpus_usable']} usable CPUs; load average "
        f"{env['loadavg_start']} at start, {env['loadavg_end']} at end (other jobs may share "
        f"the machine). {env['date']}; torch {env['torch']}, onnxruntime {env['onnxruntime']}.",
        "",
    ]
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rows]
    panels = [
        (
            "STS-B dev pass, batch 1 (s)",
            [r["latency"]["total_s"] for r in rows],
            [r["ratios"]["speedup_latency"] for r in rows],
            "×",
        ),
        (
            f"throughput, batch {rows[0]['throughput']['batch']}×{rows[0]['throughput']['seq']} "
            "(seq/s)",
            [r["throughput"]["sequences_per_s"] for r in rows],
            [r["ratios"]["speedup_throughput"] for r in rows],
            "×",
        ),
        (
            "size on disk (MB)",
            [r["size_mb"] or 0.0 for r in rows],
            [r["ratios"]["size_ratio"] for r in rows],
            "of first",
        ),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.6 * len(rows) + 2.2))
    y = np.arange(len(rows))
    for ax, (title, values, ratios, unit) in zip(axes, panels):
        ax.barh(y, values, color=[f"C{i}" for i in range(len(rows))])
        ax.set_yticks(y, labels if ax is axes[0] else [""] * len(rows))
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        for yi, v, rt in zip(y, values, ratios):
            if rt is not None:
                text = f"{rt:.2f}{unit}" if unit == "×" else f"{100 * rt:.0f}% {unit}"
                ax.text(v, yi, " " + text, va="center", fontsize=8)
        ax.margins(x=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
