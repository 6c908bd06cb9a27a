"""Safe exchange and the checkpoint protocol's promises (docs/reliability.md).

* every metadata field of a model file is validated before any tensor is used, and a malformed
  one is one line naming the file and the field (hypothesis fuzzes the reader);
* a full disk during a save keeps the previous checkpoint and resumes;
* files get the user's umask; temporaries of interrupted saves are removed;
* a fresh run never overwrites a directory's own ``run.toml``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import ebmkit
import pytest
import torch
from ebmkit import checkpoint as ckpt
from ebmkit.errors import CheckpointError, ConfigError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

TOY = {"energy": "mlp", "data": "gmm2d", "sampler": {"name": "langevin", "steps": 3},
       "init": {"name": "persistent", "buffer_size": 32}}
TRAIN = {"batch_size": 8, "sample_every": 0, "plots": False, "tensorboard": "off"}


def _good_meta() -> dict[str, str]:
    doc = {"energy": {"name": "mlp", "hidden": 8}, "sampler": {"name": "langevin"},
           "init": {"name": "noise"}, "data": {"name": "gmm2d"}, "train": {"iterations": 3}}
    return {"format": ckpt.FORMAT, "ebmkit_version": "0.1.0", "step": "3", "energy": "mlp",
            "shape": "[2]", "config": json.dumps(doc)}


def _write(path: Path, meta: dict[str, str]) -> Path:
    save_file({"w": torch.zeros(2)}, str(path), metadata=meta)
    return path


def test_a_well_formed_header_reads(tmp_path):
    out = ckpt.read_checkpoint(_write(tmp_path / "m.safetensors", _good_meta()))
    assert out["shape"] == (2,) and out["step"] == 3 and out["energy"] == "mlp"


BAD_FIELDS = [
    ("format", "ebmkit.energy/9", "format"),
    ("format", "torch", "not an ebmkit energy checkpoint"),
    ("step", "-1", "'step'"),
    ("step", "3.5", "'step'"),
    ("step", "１２", "'step'"),  # full-width digits: str.isdigit() is not enough
    ("step", "9" * 40, "'step'"),
    ("energy", "", "'energy'"),
    ("energy", "../../etc/passwd", "'energy'"),
    ("shape", "[]", "'shape'"),
    ("shape", "[0, 2]", "'shape'"),
    ("shape", "[2.5]", "'shape'"),
    ("shape", "[true]", "'shape'"),
    ("shape", '"2"', "'shape'"),
    ("shape", "[2", "'shape'"),
    ("shape", "[1,1,1,1,1,1,1,1,1]", "'shape'"),
    ("config", "[]", "'config'"),
    ("config", "{", "'config'"),
    ("config", '{"energy": 3}', "'config.energy'"),
    ("config", '{"energy": {"name": 3}}', "'config.energy.name'"),
    ("config", "[" * 100000, "'config'"),  # deep nesting: RecursionError inside json
]


@pytest.mark.parametrize(("field", "value", "named"), BAD_FIELDS,
                         ids=[f"{f}={v[:12]!r}" for f, v, _ in BAD_FIELDS])
def test_every_malformed_field_is_one_line_naming_file_and_field(tmp_path, field, value, named):
    meta = _good_meta()
    meta[field] = value
    path = _write(tmp_path / "m.safetensors", meta)
    with pytest.raises(CheckpointError) as info:
        ckpt.read_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and named in msg


@pytest.mark.parametrize("missing", ["energy", "shape", "config"])
def test_a_missing_field_is_named(tmp_path, missing):
    meta = _good_meta()
    del meta[missing]
    with pytest.raises(CheckpointError, match=f"'{missing}' is missing"):
        ckpt.read_checkpoint(_write(tmp_path / "m.safetensors", meta))


_text = st.text(max_size=30)
_json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12)


def _field_values(field: str):
    good = _good_meta()[field]
    return st.one_of(st.just(good), _text, _json_like.map(json.dumps))


_metas = st.fixed_dictionaries(
    {}, optional={f: _field_values(f) for f in ("format", "step", "energy", "shape", "config",
                                                "ebmkit_version")}
).map(lambda m: {**m, "format": m.get("format", ckpt.FORMAT)})


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=_metas)
def test_fuzzed_metadata_is_read_or_refused_in_one_line(tmp_path, meta):
    """Whatever strings a header holds, the reader returns validated values or raises one
    CheckpointError line; never another exception (derandomized: the same 300 cases each run)."""
    path = _write(tmp_path / "fuzz.safetensors", meta)
    try:
        out = ckpt.read_checkpoint(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert isinstance(out["step"], int) and out["step"] >= 0
    assert all(type(s) is int and s > 0 for s in out["shape"])
    assert all(isinstance(t, dict) for t in out["config"].values())


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_fuzzed_bytes_are_refused_in_one_line(tmp_path, data):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        ckpt.read_checkpoint(path)
    assert "\n" not in str(info.value)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(info=_json_like)
def test_fuzzed_state_json_is_validated(tmp_path, info):
    path = tmp_path / "state.json"
    path.write_text(json.dumps(info))
    try:
        out = ckpt.read_state_info(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        return
    assert type(out["step"]) is int and isinstance(out["optimizer"]["param_groups"], list)


# ---------------------------------------------------------------------------------------------
# the protocol's promises
# ---------------------------------------------------------------------------------------------
def test_disk_full_keeps_the_previous_checkpoint_and_resumes(tmp_path, registry, monkeypatch,
                                                             one_thread):
    run = tmp_path / "run"
    real = ckpt.write_tensors
    calls = {"n": 0}

    def full_disk(path, tensors, meta):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, tensors, meta)

    monkeypatch.setattr(ckpt, "write_tensors", full_disk)
    with pytest.raises(CheckpointError) as info:
        ebmkit.fit(**TOY, iterations=6, checkpoint_every=2, out_dir=run, registry=registry, **TRAIN)
    msg = str(info.value)
    assert "No space left on device" in msg and "step-000002 is intact" in msg and "\n" not in msg
    assert ckpt.read_latest(run) == "step-000002" and not list(run.rglob(".tmp-*"))
    monkeypatch.setattr(ckpt, "write_tensors", real)
    ebm = ebmkit.fit(out_dir=run, resume=True, registry=registry)
    assert ebm.completed and ebm.step == 6


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_get_the_users_umask(tmp_path, registry, umask, one_thread):
    old = os.umask(umask)
    try:
        run = tmp_path / "run"
        ebmkit.fit(**TOY, iterations=2, checkpoint_every=1, out_dir=run, registry=registry, **TRAIN)
    finally:
        os.umask(old)
    files = [p for p in run.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p


def test_stale_temporaries_are_removed_on_resume(tmp_path, registry, one_thread):
    run = tmp_path / "run"
    ebmkit.fit(**TOY, iterations=2, checkpoint_every=1, out_dir=run, registry=registry, **TRAIN)
    junk = [run / ".model.safetensors.1a2b3c4d.tmp", run / "checkpoints" / ".LATEST.00ff00ff.tmp"]
    for p in junk:
        p.write_bytes(b"x" * 1000)
    (run / "checkpoints" / ".tmp-step-000003").mkdir()
    (run / "checkpoints" / ".tmp-step-000003" / "model.safetensors").write_bytes(b"partial")
    ebmkit.fit(out_dir=run, resume=True, registry=registry, iterations=3)
    assert not any(p.exists() for p in junk)
    assert not (run / "checkpoints" / ".tmp-step-000003").exists()
    assert ckpt.read_latest(run) == "step-000003"


def test_a_fresh_run_never_overwrites_the_directorys_run_toml(tmp_path, registry):
    run = tmp_path / "run"
    run.mkdir()
    mine = "# my notes\n[train]\niterations = 5\n"
    (run / "run.toml").write_text(mine)
    with pytest.raises(ConfigError, match="already holds a run"):
        ebmkit.fit(**TOY, iterations=1, out_dir=run, registry=registry, **TRAIN)
    assert (run / "run.toml").read_text() == mine


def test_resume_without_any_checkpoint_starts_again_from_zero(tmp_path, registry, one_thread):
    """A run killed before its first checkpoint (only run.toml written) is not a dead end."""
    ref = ebmkit.fit(**TOY, iterations=3, out_dir=tmp_path / "ref", registry=registry, **TRAIN)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.toml").write_text((tmp_path / "ref" / "run.toml").read_text())
    said = []
    ebm = ebmkit.fit(out_dir=run, resume=True, registry=registry, console=_Console(said))
    assert ebm.step == 3 and any("starting again from iteration 0" in s for s in said)
    a, b = ref.energy.state_dict(), ebm.energy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_damaged_newest_checkpoint_falls_back_and_says_which(tmp_path, registry, one_thread):
    run = tmp_path / "run"
    ebmkit.fit(**TOY, iterations=4, checkpoint_every=2, out_dir=run, registry=registry,
               **{**TRAIN, "keep": 3})
    (run / "checkpoints" / "step-000004" / "state.json").write_text("{")  # bit rot
    said = []
    ebm = ebmkit.fit(out_dir=run, resume=True, registry=registry, iterations=4,
                     console=_Console(said))
    assert ebm.step == 4
    assert any("skipped step-000004" in s for s in said)
    assert any("resuming from" in s and "step-000002" in s for s in said)


def test_forced_fresh_run_discards_the_old_checkpoints(tmp_path, registry, one_thread):
    run = tmp_path / "run"
    ebmkit.fit(**TOY, iterations=4, checkpoint_every=2, out_dir=run, registry=registry, **TRAIN)
    ebmkit.fit(**TOY, iterations=1, out_dir=run, force=True, registry=registry, **TRAIN)
    assert [p.name for _, p in ckpt.list_checkpoints(run)] == ["step-000001"]


class _Console:
    def __init__(self, sink):
        self.sink = sink

    def print(self, msg, **kw):
        self.sink.append(str(msg))


def test_a_run_in_the_old_layout_still_resumes(tmp_path, registry, one_thread):
    """Run directories written before checkpoints/ (train_state/ + model.safetensors) resume,
    and the next checkpoint is in the new layout."""
    import shutil

    ref = ebmkit.fit(**TOY, iterations=4, checkpoint_every=2, out_dir=tmp_path / "ref",
                     registry=registry, **TRAIN)
    run = tmp_path / "old"
    ebmkit.fit(**TOY, iterations=4, checkpoint_every=2, out_dir=run, registry=registry,
               stop_after=3, **TRAIN)
    step2 = run / "checkpoints" / "step-000002"
    (run / "train_state").mkdir()
    for name in ("rank0.safetensors", "state.json"):
        shutil.copy(step2 / name, run / "train_state" / name)
    (run / "model.safetensors").unlink()
    shutil.copy(step2 / "model.safetensors", run / "model.safetensors")
    shutil.rmtree(run / "checkpoints")
    ebm = ebmkit.fit(out_dir=run, resume=True, registry=registry)
    assert ebm.step == 4 and ckpt.read_latest(run) == "step-000004"
    a, b = ref.energy.state_dict(), ebm.energy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
