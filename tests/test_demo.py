from __future__ import annotations

import pytest

from distilkit.demo import DemoConfig, format_summary, run_demo, write_demo_corpus


def test_embedded_corpus_is_english_prose_from_the_python_installation(tmp_path):
    info = write_demo_corpus(tmp_path / "c.txt")
    text = (tmp_path / "c.txt").read_text()
    assert info["documents"] > 100 and info["bytes"] > 300_000
    docs = text.strip().split("\n\n")
    assert len(docs) == info["documents"]
    # Paragraphs, not code: every line has at least 8 words.
    assert all(len(line.split()) >= 8 for line in text.splitlines() if line)
    assert "the" in text.split()[:2000]


@pytest.mark.slow
def test_demo_end_to_end_with_the_packaged_minilm(tmp_path):
    s = run_demo(DemoConfig(out_dir=str(tmp_path / "d"), distill_steps=2, batch_size=4))
    import json

    search = json.loads((tmp_path / "d" / "layer_search.json").read_text())
    assert s["student"]["layers"] == search["layers"]
    assert search["fidelity"] >= search["default_fidelity"]
    assert "chosen by layer search" in format_summary(s)
    assert s["student"]["params"]["total"] < s["teacher"]["params"]["total"]
    q = s["quality"]
    assert q["teacher"]["similarity_agreement"] > 0.999
    assert all(-1.0 <= q[m]["similarity_agreement"] <= 1.0 for m in ("layer_dropped", "student"))
    assert "similarity agreement" in format_summary(s)
    assert (tmp_path / "d" / "student" / "modules.json").is_file()


def test_demo_overwrite_refuses_a_folder_it_did_not_make(tmp_path):
    from distilkit.errors import DistilkitError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    with pytest.raises(DistilkitError, match="did not make"):
        run_demo(DemoConfig(out_dir=str(mine), overwrite=True))
    assert (mine / "thesis.txt").read_text() == "years of work"


def test_demo_rejects_an_unknown_layer_choice_before_writing(tmp_path):
    from distilkit.errors import DistilkitError

    with pytest.raises(DistilkitError, match="'search' or 'default'"):
        run_demo(DemoConfig(out_dir=str(tmp_path / "d"), layers="best"))
    assert not (tmp_path / "d").exists()


def test_a_second_demo_on_a_running_demos_folder_stops_and_deletes_nothing(tmp_path):
    import fcntl
    import json
    import os

    from distilkit.demo import DEMO_MARKER, _claim_folder
    from distilkit.errors import DistilkitError

    root = tmp_path / "d"
    first = _claim_folder(root, overwrite=False)  # the running demo holds the folder
    (root / "data").mkdir()
    (root / "data" / "shard.bin").write_bytes(b"x")
    for overwrite in (False, True):
        with pytest.raises(
            DistilkitError, match=f"in use by another distilkit demo .*{os.getpid()}"
        ):
            run_demo(DemoConfig(out_dir=str(root), overwrite=overwrite))
        assert (root / "data" / "shard.bin").read_bytes() == b"x"
    assert json.loads((root / DEMO_MARKER).read_text())["pid"] == os.getpid()
    os.close(first)  # the first demo ends: now --overwrite may take the folder
    second = _claim_folder(root, overwrite=True)
    try:
        assert [p.name for p in root.iterdir()] == [DEMO_MARKER]
        fd = os.open(root / DEMO_MARKER, os.O_RDONLY)
        with pytest.raises(BlockingIOError):  # and holds it in turn
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    finally:
        os.close(second)
