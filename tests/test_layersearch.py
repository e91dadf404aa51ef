from __future__ import annotations

import torch
import torch.nn.functional as F


def _student_fidelity(teacher, student_dir, data) -> float:
    """Mean cosine of mean-pooled embeddings of the saved student vs the teacher, computed
    without layersearch's layer swapping: what the search claims to measure."""
    from transformers import AutoModel

    from distilkit.layersearch import _held_out_sentences
    from distilkit.modeling import load_tokenizer

    ids, mask = _held_out_sentences(data, load_tokenizer(teacher), 512)

    def embed(path):
        model = AutoModel.from_pretrained(path).eval()
        with torch.no_grad():
            h = model(input_ids=ids, attention_mask=mask)[0]  # (S, L, H)
        m = mask.unsqueeze(-1).float()
        return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    return float((embed(student_dir) * embed(teacher)).sum(-1).mean())


def _distinct_teacher(tiny_teacher, folder):
    """The tiny teacher with larger layer weights, so that its layers change the embeddings
    clearly (at initialisation scale every subset keeps cosine 0.9997)."""
    from transformers import AutoTokenizer, BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(tiny_teacher)
    with torch.no_grad():
        for name, p in model.bert.encoder.named_parameters():
            if name.endswith("weight") and "LayerNorm" not in name:
                p.mul_(8.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_teacher).save_pretrained(folder)
    return folder


def test_search_scores_every_subset_and_its_score_is_the_built_students(
    tiny_teacher, tiny_data, tmp_path
):
    from distilkit.layersearch import search_layers
    from distilkit.student import init_student

    tiny_teacher = _distinct_teacher(tiny_teacher, tmp_path / "teacher")
    r = search_layers(tiny_teacher, tiny_data, num_layers=2)
    assert r.method == "exhaustive"
    assert sorted(r.scores) == ["0,1", "0,2", "0,3", "1,2", "1,3", "2,3"]
    assert r.scores[",".join(map(str, r.layers))] == max(r.scores.values())
    assert r.default_layers == [0, 3]
    assert abs(r.default_fidelity - r.scores["0,3"]) < 1e-6
    # The candidates are not all alike, so the choice means something.
    assert max(r.scores.values()) - min(r.scores.values()) > 0.01
    # The score of a subset is the fidelity of the DistilBERT student init-student builds from it.
    for layers in (r.layers, [1, 2]):
        init_student(tiny_teacher, tmp_path / f"s{layers}", layers=layers)
        built = _student_fidelity(tiny_teacher, tmp_path / f"s{layers}", tiny_data)
        assert abs(built - r.scores[",".join(map(str, layers))]) < 1e-4


def test_backward_elimination_when_there_are_too_many_subsets(tiny_teacher, tiny_data):
    from distilkit.layersearch import search_layers

    exhaustive = search_layers(tiny_teacher, tiny_data, num_layers=2)
    greedy = search_layers(tiny_teacher, tiny_data, num_layers=2, max_candidates=1)
    assert greedy.method == "backward elimination"
    assert len(greedy.layers) == 2 and greedy.layers == sorted(greedy.layers)
    # Greedy scores only the subsets on its path (plus the default for comparison), and never
    # beats the exhaustive optimum.
    assert len(greedy.scores) < len(exhaustive.scores)
    assert greedy.fidelity <= exhaustive.fidelity + 1e-9


def test_sentence_encoder_teacher_uses_its_own_pooling(tiny_tok, tiny_data, tmp_path):
    from conftest import make_sentence_encoder
    from distilkit.layersearch import search_layers

    mean = search_layers(make_sentence_encoder(tmp_path / "m", tiny_tok), tiny_data)
    cls = search_layers(make_sentence_encoder(tmp_path / "c", tiny_tok, "cls"), tiny_data)
    assert mean.scores != cls.scores  # same weights (seed 0), different pooling


def test_bad_requests_get_one_line(tiny_teacher, tiny_data, tmp_path):
    import pytest

    from distilkit.errors import DistilkitError
    from distilkit.layersearch import search_layers

    with pytest.raises(DistilkitError, match="need 1 <= k < 4"):
        search_layers(tiny_teacher, tiny_data, num_layers=4)
    with pytest.raises(DistilkitError):
        search_layers(tiny_teacher, tmp_path / "missing")


def test_init_student_cli_searches_layers_and_records_why(
    tiny_teacher, tiny_data, tmp_path, capsys
):
    import json

    from distilkit.cli import main

    out = tmp_path / "student"
    argv = ["init-student", "--teacher", str(tiny_teacher), "--out", str(out)]
    assert main([*argv, "--layers", "search"]) == 2
    assert "--layers search needs --data" in capsys.readouterr().err
    assert not (out / "config.json").exists()
    assert main([*argv, "--layers", "search", "--data", str(tiny_data)]) == 0
    record = json.loads((out / "layer_search.json").read_text())
    built = json.loads((out / "distilkit_student.json").read_text())
    assert built["layers"] == record["layers"]
    assert record["fidelity"] == max(record["scores"].values())
    assert "layer search:" in capsys.readouterr().out
