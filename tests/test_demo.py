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


def _earlier_demo(root):
    import json

    from distilkit.demo import DEMO_MARKER

    (root / "student").mkdir(parents=True)
    (root / "student" / "model.safetensors").write_bytes(b"weights")
    (root / DEMO_MARKER).write_text(json.dumps({"made_by": "distilkit demo"}) + "\n")


@pytest.mark.parametrize("marker", ["not json", "[1, 2]", '{"made_by": "someone else"}'])
def test_overwrite_refuses_a_folder_whose_marker_is_not_a_demos(tmp_path, marker):
    from distilkit.demo import DEMO_MARKER
    from distilkit.errors import DistilkitError

    root = tmp_path / "mine"
    (root / "important").mkdir(parents=True)
    (root / "important" / "thesis.tex").write_text("years of work")
    (root / DEMO_MARKER).write_text(marker)
    with pytest.raises(DistilkitError, match="did not make"):
        run_demo(DemoConfig(out_dir=str(root), overwrite=True))
    assert (root / "important" / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"max_length": 5}, "max_length must be at least 32"),
        ({"distill_steps": 0}, "distill_steps must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"student_layers": 6}, "student_layers must be 1-5"),
        ({"glue_dir": "/nonexistent/glue"}, "no STS-B dev file"),
    ],
)
def test_bad_settings_stop_before_an_earlier_demo_is_deleted(tmp_path, change, message):
    from distilkit.errors import DistilkitError

    root = tmp_path / "d"
    _earlier_demo(root)
    with pytest.raises(DistilkitError, match=message):
        run_demo(DemoConfig(out_dir=str(root), overwrite=True, **change))
    assert (root / "student" / "model.safetensors").read_bytes() == b"weights"


def test_unusable_out_paths_are_one_line(tmp_path):
    from distilkit.errors import DistilkitError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(DistilkitError, match="cannot use demo folder .*Not a directory"):
        run_demo(DemoConfig(out_dir=str(tmp_path / "afile" / "sub")))
    _earlier_demo(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(DistilkitError, match="symbolic link"):
        run_demo(DemoConfig(out_dir=str(tmp_path / "link"), overwrite=True))
    assert (tmp_path / "real" / "student" / "model.safetensors").is_file()


def test_overwrite_replaces_an_earlier_demo_and_leaves_no_trash(tmp_path):
    import os

    from distilkit.demo import DEMO_MARKER, _claim_folder

    root = tmp_path / "d"
    _earlier_demo(root)
    fd = _claim_folder(root, overwrite=True)
    try:
        assert [p.name for p in root.iterdir()] == [DEMO_MARKER]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # the old folder is gone
    finally:
        os.close(fd)


def test_a_marker_replaced_between_open_and_lock_is_not_taken(tmp_path, monkeypatch):
    # Another demo moved the folder away after this one opened the marker: the lock it then
    # gets is on a file that is no longer the folder's marker, so it must not go on.
    import fcntl

    from distilkit import demo
    from distilkit.errors import DistilkitError

    root = tmp_path / "d"
    _earlier_demo(root)
    real_flock = fcntl.flock

    def flock_after_a_swap(fd, op):
        marker = root / demo.DEMO_MARKER
        marker.rename(root / "moved.json")
        marker.write_text('{"made_by": "distilkit demo"}')
        return real_flock(fd, op)

    monkeypatch.setattr(demo.fcntl, "flock", flock_after_a_swap)
    with pytest.raises(DistilkitError, match="in use by another distilkit demo"):
        demo._claim_folder(root, overwrite=True)
    assert (root / "student" / "model.safetensors").read_bytes() == b"weights"
