"""``train.trackers``: every metric of ``run.log`` also goes to the experiment trackers Accelerate
supports, with the run document as the hyper-parameters, local files inside the run directory.

Checked against the real libraries, read back with their own readers: MLflow (a SQLite store,
``<run>/mlflow.db``, read with ``MlflowClient``) and W&B offline (``<run>/wandb/offline-run-*``,
its ``.wandb`` history records read with wandb's protobuf classes). A tiny 2-D run of four
iterations each; the numbers must equal those of ``diagnostics.csv``. Each test is skipped
cleanly when its library is not installed (both are in ebmkit-core's ``test`` group).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import ebmkit
import pytest

TOY = dict(energy={"name": "mlp", "hidden": 16, "layers": 2}, data="gmm2d",
           sampler={"name": "langevin", "steps": 5, "grad_coef": 0.01, "noise_std": 0.05},
           iterations=4, batch_size=16, plots=False, tensorboard="off", checkpoint_every=0)


def _probe():
    """A callback that logs a metric group of its own each iteration (``probe/x`` = 10·step)."""
    return ebmkit.LambdaCallback(on_step_end=lambda run, out: run.log({"probe/x": 10.0 * run.step}))


def _diagnostics(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "diagnostics.csv", newline="") as f:
        return {int(r["iter"]): float(r["d_t"]) for r in csv.DictReader(f)}


@pytest.fixture
def workdir(tmp_path, monkeypatch, one_thread):
    """An empty working directory (nothing may be written there) and no tracker settings of
    the machine's."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS",
                "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    return cwd


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None
                    or importlib.util.find_spec("sqlalchemy") is None,
                    reason="mlflow not installed (pip install 'ebmkit-core[mlflow]')")
def test_mlflow_gets_every_metric_and_the_run_document(tmp_path, workdir):
    import mlflow

    run_dir = tmp_path / "run"
    ebmkit.fit(**TOY, trackers=["mlflow"], out_dir=run_dir, callbacks=[_probe()])
    assert (run_dir / "mlflow.db").is_file() and not any(workdir.iterdir())

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ebmkit")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    d_t = client.get_metric_history(run.info.run_id, "d_t")
    assert {m.step: m.value for m in d_t} == pytest.approx(_diagnostics(run_dir), rel=1e-5)
    probe = client.get_metric_history(run.info.run_id, "probe/x")
    assert sorted((m.step, m.value) for m in probe) == [(1, 10.0), (2, 20.0), (3, 30.0), (4, 40.0)]
    params = run.data.params
    assert params["train.iterations"] == "4" and params["energy.name"] == "mlp"
    assert params["sampler.steps"] == "5"


# ---------------------------------------------------------------------------------------------
# Weights & Biases, offline
# ---------------------------------------------------------------------------------------------
def _wandb_records(path: Path) -> list[bytes]:
    """The records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then
    LevelDB-log blocks of 32 KiB, each record chunk ``crc32 (4) | length (2, LE) | type (1)``
    (1 full, 2 first, 3 middle, 4 last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file (header {data[:7]!r})"
    block, pos, out, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's trailer is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        if kind == 0:  # zero-filled padding
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(buf)
            buf = b""
    return out


def _wandb_history(run_dir: Path) -> tuple[list[dict], dict]:
    """The offline run's history rows and its config, from its ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows, config = [], {}
    for raw in _wandb_records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in rec.history.item})
        elif kind == "config":
            for item in rec.config.update:
                config[item.key] = json.loads(item.value_json)
    return rows, config


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb not installed (pip install 'ebmkit-core[wandb]')")
def test_wandb_offline_run_in_the_run_directory(tmp_path, workdir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    run_dir = tmp_path / "run"
    ebmkit.fit(**TOY, trackers=["wandb"], out_dir=run_dir, callbacks=[_probe()])
    assert not any(workdir.iterdir())

    rows, config = _wandb_history(run_dir)
    d_t = {r["_step"]: r["d_t"] for r in rows if "d_t" in r}
    assert d_t == pytest.approx(_diagnostics(run_dir), rel=1e-5)
    assert sorted((r["_step"], r["probe/x"]) for r in rows if "probe/x" in r) == [
        (1, 10.0), (2, 20.0), (3, 30.0), (4, 40.0)]
    value = config["train.iterations"]
    assert (value.get("value") if isinstance(value, dict) else value) == 4


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_unknown_tracker_is_one_line_with_did_you_mean(workdir):
    with pytest.raises(ebmkit.ConfigError, match="unknown tracker 'mlfow'. Did you mean 'mlflow'") as e:
        ebmkit.fit(**TOY, trackers=["mlfow"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("tracker, module", [("mlflow", "mlflow"), ("wandb", "wandb"),
                                             ("mlflow", "sqlalchemy")])
def test_missing_library_is_one_line_with_the_install_command(tmp_path, workdir, monkeypatch,
                                                              tracker, module):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(ebmkit.MissingDependencyError) as e:
        ebmkit.fit(**TOY, trackers=[tracker], out_dir=tmp_path / "run")
    msg = str(e.value)
    assert "\n" not in msg and f"train.trackers {tracker}" in msg
    assert f"pip install 'ebmkit-core[{tracker}]'" in msg
