"""A labelled, held-out search task that every Python installation carries: docstring search.

Each function, class or method of a fixed set of standard-library modules whose docstring has a
one-line summary and a body gives one query (the summary) and its one right answer (the body).
A model embeds all queries and all bodies; for each query the bodies are ranked by cosine
similarity. The score is the mean reciprocal rank of the right body (1.0 = always first;
top-1 accuracy is reported beside it). The labels come from the documentation's own structure,
so no annotation and no download is needed, and the licence is Python's own.

Two disjoint sets of modules, both disjoint from the demo's training corpus
(``demo._DOC_MODULES``; no query or body text occurs in it, tested), so a student is judged on
documentation it never saw:

- ``DEV_MODULES``: the split recipe choices may be measured on (the demo's settings were chosen
  on it, docs/results/embedding-distillation.md);
- ``TEST_MODULES``: never used to choose anything; the demo's headline figure.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distilkit.errors import DistilkitError

# Standard-library modules present in CPython 3.10+; none is in demo._DOC_MODULES (tested).
# The development split: sessions that tuned the demo's recipe measured on these.
DEV_MODULES = (
    "ast",
    "base64",
    "bisect",
    "bz2",
    "calendar",
    "cmd",
    "code",
    "codecs",
    "colorsys",
    "compileall",
    "configparser",
    "copy",
    "cProfile",
    "ctypes",
    "dis",
    "doctest",
    "filecmp",
    "fileinput",
    "fnmatch",
    "ftplib",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "hashlib",
    "hmac",
    "html.parser",
    "imaplib",
    "importlib.metadata",
    "importlib.resources",
    "ipaddress",
    "linecache",
    "locale",
    "lzma",
    "mailbox",
    "mimetypes",
    "modulefinder",
    "netrc",
    "numbers",
    "operator",
    "optparse",
    "pdb",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "profile",
    "pstats",
    "pyclbr",
    "pydoc",
    "queue",
    "reprlib",
    "runpy",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "signal",
    "smtplib",
    "socketserver",
    "ssl",
    "stat",
    "struct",
    "symtable",
    "sysconfig",
    "tempfile",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "tracemalloc",
    "types",
    "urllib.request",
    "warnings",
    "wave",
    "weakref",
    "wsgiref.simple_server",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "xml.sax.saxutils",
    "xmlrpc.client",
    "xmlrpc.server",
    "zipapp",
    "zipimport",
)

# The test split: modules no recipe choice was ever measured on (added when DEV_MODULES had
# been used for tuning). Pure-Python modules of CPython 3.10-3.13 that need no optional system
# library (no tkinter), disjoint from DEV_MODULES and from the demo's training corpus.
TEST_MODULES = (
    "bdb",
    "codeop",
    "concurrent.futures.process",
    "copyreg",
    "email._header_value_parser",
    "email._parseaddr",
    "email._policybase",
    "email.charset",
    "email.feedparser",
    "email.generator",
    "email.header",
    "email.headerregistry",
    "email.parser",
    "email.policy",
    "email.quoprimime",
    "getpass",
    "http.cookiejar",
    "http.server",
    "importlib.abc",
    "importlib.util",
    "json.decoder",
    "json.encoder",
    "logging.config",
    "py_compile",
    "quopri",
    "rlcompleter",
    "site",
    "sqlite3.dump",
    "urllib.robotparser",
    "venv",
    "webbrowser",
    "wsgiref.handlers",
    "wsgiref.headers",
    "xml.dom.expatbuilder",
    "xml.dom.pulldom",
    "xml.sax._exceptions",
    "xml.sax.handler",
    "xml.sax.xmlreader",
)

SPLITS = {"dev": DEV_MODULES, "test": TEST_MODULES}


@dataclass(frozen=True)
class DocPair:
    query: str
    """The docstring's first paragraph (its summary)."""
    answer: str
    """The rest of the docstring."""
    source: str
    """Qualified name of the documented object."""


def docstring_pairs(
    modules: tuple[str, ...] | str = "test", exclude_text: str = ""
) -> list[DocPair]:
    """(summary, body) pairs of the documented objects of ``modules``, in a fixed order.

    ``modules``: a split name ("dev", "test") or a tuple of module names.
    ``exclude_text``: a training corpus; a pair that shares any run of 8 words with it (case and
    whitespace normalised) is dropped, so the pairs are held out from that corpus by
    construction, not only by module name (pdb's command help, say, is also in pydoc's topics).
    Kept: a summary of at least 4 words and a body of at least 12, prose only (doctest lines
    dropped). An object reachable twice (an alias) counts once; so does a repeated docstring.
    Only an object's own docstring counts: ``inspect.getdoc`` would hand a method without one
    its base class's text (``Thread.run``'s, say), which may sit in the training corpus.
    A summary that several pairs share ("Return a string representation.") has no one right
    answer: all those pairs are dropped. The test split also drops pairs that share 8 words
    with a dev pair, so nothing tuned on dev is met again in test.
    """
    if isinstance(modules, str):
        if modules not in SPLITS:
            raise DistilkitError(f"unknown doc-search split {modules!r}; use one of {list(SPLITS)}")
        if modules == "test":
            dev = docstring_pairs("dev")
            exclude_text += "\n" + "\n".join(f"{p.query}\n{p.answer}" for p in dev)
        modules = SPLITS[modules]
    pairs: list[DocPair] = []
    seen_text: set[str] = set()
    excluded = _shingles(exclude_text)
    seen_objects: set[int] = set()

    def add(obj: object, name: str) -> None:
        own = getattr(obj, "__doc__", None)
        doc = inspect.cleandoc(own) if isinstance(own, str) else ""
        if not doc or id(obj) in seen_objects:
            return
        seen_objects.add(id(obj))
        paras = [" ".join(ln.strip() for ln in block.splitlines()) for block in doc.split("\n\n")]
        paras = [
            p.strip() for p in paras if p.strip() and not p.lstrip().startswith((">>>", "..."))
        ]
        if len(paras) < 2:
            return
        query, answer = paras[0], " ".join(paras[1:])
        if len(query.split()) < 4 or len(answer.split()) < 12 or answer in seen_text:
            return
        if excluded and not excluded.isdisjoint(_shingles(f"{query}\n{answer}")):
            return
        seen_text.add(answer)
        pairs.append(DocPair(query, answer, name))

    for mod_name in modules:
        try:
            with warnings.catch_warnings():  # a few modules warn on import (deprecations)
                warnings.simplefilter("ignore")
                mod = importlib.import_module(mod_name)
        except ImportError:  # a trimmed Python may lack one; the task stays well defined
            continue
        for attr, obj in sorted(vars(mod).items()):
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            add(obj, f"{mod_name}.{attr}")
            if inspect.isclass(obj):
                for meth_name, meth in sorted(vars(obj).items()):
                    # Defined in this class: enum copies Enum's methods into every subclass.
                    if inspect.isfunction(meth) and meth.__qualname__.startswith(
                        f"{obj.__qualname__}."
                    ):
                        add(meth, f"{mod_name}.{attr}.{meth_name}")
    queries = Counter(" ".join(p.query.lower().split()) for p in pairs)
    return [p for p in pairs if queries[" ".join(p.query.lower().split())] == 1]


def _shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    """Every run of ``n`` consecutive words of ``text`` (lower-cased), as a set."""
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@torch.inference_mode()
def search_scores(
    encode: Callable[[list[str]], torch.Tensor],
    pairs: list[DocPair],
) -> dict[str, float]:
    """Mean reciprocal rank and top-1 accuracy of each query's own answer among all answers.

    ``encode(texts) -> (N, H)`` sentence embeddings (pooled as the model is meant to be used).
    """
    if len(pairs) < 2:
        raise DistilkitError("docstring search needs at least 2 query/answer pairs")
    q = F.normalize(encode([p.query for p in pairs]).float(), dim=-1)  # (N, H)
    a = F.normalize(encode([p.answer for p in pairs]).float(), dim=-1)  # (N, H)
    sim = q @ a.T  # (N, N); the right answer of query i is column i
    # Rank = number of wrong answers scored at or above the right one: a tie counts against
    # the model, so a collapsed encoder (every embedding equal) ranks last, never first.
    at_or_above = sim >= sim.diagonal()[:, None]  # (N, N), True on the diagonal itself
    rank = (at_or_above.sum(1) - 1).float()  # (N,)
    return {
        "mrr": float((1.0 / (rank + 1.0)).mean()),
        "top1": float((rank == 0).float().mean()),
        "n_pairs": len(pairs),
    }


def encoder_fn(
    encoder: nn.Module, tokenizer, pool, max_length: int = 128, batch_size: int = 64
) -> Callable[[list[str]], torch.Tensor]:
    """``texts -> (N, H)`` with ``encoder`` (an AutoModel) and ``pool(hidden, mask) -> (B, H)``."""

    def encode(texts: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]
            out.append(pool(hidden, enc["attention_mask"]))  # (B, H)
        return torch.cat(out)

    return encode
