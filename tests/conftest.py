"""Shared fixtures: a tiny word-level vocabulary, tiny random teachers built from config, and a
small corpus prepared with them. Everything is created in temporary folders in seconds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "that",
    "this",
    "it",
    "be",
    "are",
    "were",
    "has",
    "have",
    "had",
    "not",
    "but",
    "or",
    "which",
    "who",
    "their",
    "its",
    "his",
    "her",
    "they",
    "he",
    "she",
    "we",
    "you",
    "i",
    "one",
    "two",
    "three",
    "four",
    "five",
    "river",
    "city",
    "king",
    "war",
    "music",
    "film",
    "school",
    "team",
    "game",
    "year",
    "time",
    "people",
    "world",
    "water",
    "house",
    "light",
    "small",
    "large",
    "old",
    "new",
    "first",
    "last",
    "long",
    "great",
    "good",
    "bad",
    "early",
    "late",
    "north",
    "south",
    "east",
    "west",
    "red",
    "blue",
    "green",
    "black",
    "white",
    "runs",
    "ran",
    "built",
    "made",
    "found",
    "known",
    "called",
    "named",
    "played",
    "wrote",
    "moved",
    "lived",
    "died",
    "began",
    "ended",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tokenizer(folder: Path):
    """A BertTokenizerFast over SPECIALS + WORDS + '.' (vocab of about 110)."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join([*SPECIALS, ".", ",", *WORDS]) + "\n")
    return BertTokenizerFast(vocab=str(vocab), do_lower_case=True)


def make_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + " ." for _ in range(n)]


def write_corpus(path: Path, n_docs: int = 40, seed: int = 0) -> Path:
    """A .txt corpus: documents of 2-6 paragraphs, blank line between documents."""
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        paras = make_sentences(rng.randint(2, 6), seed=seed * 1000 + d)
        docs.append("\n".join(paras))
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def save_tiny_bert(
    folder: Path, tok, layers: int = 4, hidden: int = 32, seed: int = 0, with_head: bool = True
) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForMaskedLM(cfg) if with_head else BertModel(cfg, add_pooling_layer=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tiny_tok) -> Path:
    """A 4-layer, hidden-32 BertForMaskedLM with its tokenizer, dropout off."""
    return save_tiny_bert(tmp_path_factory.mktemp("teacher"), tiny_tok)


@pytest.fixture(scope="session")
def headless_teacher(tmp_path_factory, tiny_tok) -> Path:
    """Like the packaged MiniLM: a BertModel with no masked-LM head."""
    return save_tiny_bert(tmp_path_factory.mktemp("headless"), tiny_tok, with_head=False)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_teacher) -> Path:
    """The tiny corpus prepared with the tiny teacher's tokenizer, max_length 32."""
    from distilkit.data import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("data")
    corpus = write_corpus(root / "corpus.txt", n_docs=60)
    out = root / "prepared"
    prepare(
        PrepareConfig(
            sources=[str(corpus)],
            tokenizer=str(tiny_teacher),
            out_dir=str(out),
            max_length=32,
            validation_fraction=0.15,
            seed=3,
        )
    )
    return out


def make_sentence_encoder(folder: Path, tok, pooling: str = "mean", normalize: bool = True) -> Path:
    """A tiny BertModel in the sentence-transformers layout (like all-MiniLM-L6-v2)."""
    import json

    from distilkit.sentence import write_module_list

    save_tiny_bert(folder, tok, with_head=False)
    write_module_list(folder, normalize)
    pool = {
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pool))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    return folder


@pytest.fixture(scope="session")
def sentence_teacher(tmp_path_factory, tiny_tok) -> Path:
    """A tiny sentence-transformers teacher: BertModel, mean pooling, normalised."""
    return make_sentence_encoder(tmp_path_factory.mktemp("sbert"), tiny_tok)
