"""Token states are written through the shared chunk writer: chunking never changes the bytes, and a
killed run resumes after its last complete chunk."""

from __future__ import annotations

from pathlib import Path

import pytest

from densekd.index.token_states import encode_token_states


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _encode(model, corpus, out: Path, **kw):
    return encode_token_states(model, corpus, out, batch_size=3, dtype="float32", fingerprint="tiny",
                               show_progress=False, **kw)


def test_token_states_do_not_depend_on_the_chunking(ernie_model, toy_train, tmp_path):
    _encode(ernie_model, toy_train.corpus, tmp_path / "one")            # one chunk
    _encode(ernie_model, toy_train.corpus, tmp_path / "many", chunk_size=1)  # one batch per chunk
    assert _files(tmp_path / "one") == _files(tmp_path / "many")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many", "one"]  # work folders are gone


def test_token_states_resume_after_a_crash(ernie_model, toy_train, tmp_path, monkeypatch):
    _encode(ernie_model, toy_train.corpus, tmp_path / "clean")
    tower, calls = ernie_model.passage_model, []
    forward = tower.forward

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a killed run
        return forward(*args, **kwargs)

    monkeypatch.setattr(tower, "forward", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _encode(ernie_model, toy_train.corpus, tmp_path / "out", chunk_size=3)
    assert not (tmp_path / "out").exists()  # nothing published
    assert (tmp_path / ".out.parts" / "ids_00000.npy").is_file()  # the first chunk survived

    calls.clear()
    monkeypatch.setattr(tower, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    _encode(ernie_model, toy_train.corpus, tmp_path / "out", chunk_size=3)
    assert len(calls) == 2  # 8 passages in 3 batches: the first was reused
    assert _files(tmp_path / "out") == _files(tmp_path / "clean")
    assert not (tmp_path / ".out.parts").exists()
