"""Kill tests: a run killed at any moment can be resumed and finishes bit-identical.

A training run is started as a subprocess (the CLI, as a user runs it) and killed:

* with SIGKILL at an exact point of a checkpoint save, through the test-only hook
  ``EBMKIT_TEST_KILL_AT=POINT@N`` (``ebmkit.checkpoint.KILL_POINTS``: temporary directory
  created, each file written, the directory renamed, the ``LATEST`` pointer's temporary file and
  its rename, the top-level model link's temporary file and its rename, old checkpoints rotated);
* with SIGKILL at random moments while it trains (slow session only);
* with SIGINT / SIGTERM (a clean stop: checkpoint, one line, exit 130 / 143), and with a second
  SIGINT during the first one's save.

After each kill: every file present is readable (temporaries of the interrupted save aside), the
run resumes from the newest committed checkpoint (losing at most one checkpoint interval), and
the finished run equals an uninterrupted one bit for bit (weights, optimizer, persistent chains,
RNG states). The default run has the short version; ``nox -s slow`` runs every point at every
save plus random kills (well over 20 trials).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import ebmkit
import pytest
import torch
from ebmkit import checkpoint as ckpt
from safetensors import safe_open
from safetensors.torch import load_file

EVERY = 2  # checkpoint interval (iterations)
ITERS = 10
ARGS = ["--energy", "mlp", "--data", "gmm2d", "--sampler", "langevin", "--init", "persistent",
        "--set", "init.buffer_size=64", "--set", "train.batch_size=16",
        "--set", "train.sample_every=0", "--set", "train.plots=false",
        "--set", "train.tensorboard=off", "--set", "train.lr=1e-3", "--no-progress"]


def _args(iters: int = ITERS, every: int = EVERY, steps: int = 5) -> list[str]:
    return [*ARGS, "--set", f"sampler.steps={steps}", "--set", f"train.steps_max={steps + 3}",
            "--set", f"train.iterations={iters}",
            "--set", f"train.checkpoint_every={every}", "--keep", "2"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EBMKIT_TEST_KILL_AT"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", **extra)
    return env


def _start(out: Path, args: list[str], **env: str) -> subprocess.Popen:
    code = ("import torch, sys; torch.set_num_threads(1); from ebmkit.cli.main import main; "
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.Popen(
        [sys.executable, "-c", code, "run", *args, "--out", str(out)],
        env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a child of a non-interactive shell may inherit SIGINT ignored: give it the default back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (a subprocess too, so both sides run the same way)."""
    out = tmp_path_factory.mktemp("kill") / "reference"
    p = _start(out, _args())
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return out


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    latest = run / ckpt.CHECKPOINTS / ckpt.read_latest(run)
    tensors = {f"model.{k}": v for k, v in load_file(str(latest / ckpt.MODEL)).items()}
    tensors.update({f"state.{k}": v for k, v in load_file(str(latest / "rank0.safetensors")).items()})
    return tensors


def _assert_same(a: Path, b: Path) -> None:
    ta, tb = _final_state(a), _final_state(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{k} differs from the uninterrupted run"
    ma, mb = load_file(str(a / ckpt.MODEL)), load_file(str(b / ckpt.MODEL))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)  # the shared top-level file too


def _assert_readable(run: Path) -> None:
    """Every file a reader may meet is whole: safetensors open, JSON parses, LATEST names a
    directory. Temporaries of the interrupted save (``.tmp-*``, ``.*.tmp``) are exempt: resume
    removes them."""
    for p in run.rglob("*"):
        rel = p.relative_to(run)
        if any(part.startswith(".tmp-") or part.endswith(".tmp") for part in rel.parts):
            continue
        if p.suffix == ".safetensors":
            with safe_open(str(p), framework="pt") as f:
                for k in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    f.get_tensor(k)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.name == ckpt.LATEST:
            assert (p.parent / p.read_text().strip()).is_dir(), f"{rel} points nowhere"


def _iterations_done(run: Path) -> int:
    csv = run / "diagnostics.csv"
    if not csv.is_file():
        return 0
    rows = [r for r in csv.read_text().splitlines()[1:] if r.strip()]
    return int(rows[-1].split(",")[0]) if rows else 0


def _resume_and_check(run: Path, reference: Path, registry, *, expect_from: int | None = None,
                      done: int | None = None) -> None:
    _assert_readable(run)
    found = ckpt.find_checkpoint(run)
    resumed_from = found[1]["step"] if found else 0
    if expect_from is not None:
        assert resumed_from == expect_from
    if done is not None:  # lose at most one checkpoint interval (plus the iteration in flight)
        assert done - resumed_from <= EVERY
    torch.set_num_threads(1)
    ebm = ebmkit.fit(out_dir=run, resume=True, registry=registry)
    assert ebm.completed and ebm.step == ITERS
    assert not list(run.rglob(".tmp-*")) and not list(run.rglob(".*.tmp"))
    _assert_readable(run)
    _assert_same(run, reference)
    assert len(ckpt.list_checkpoints(run)) == 2  # --keep 2


def _kill_at(tmp_path: Path, point: str, nth: int) -> Path:
    run = tmp_path / f"{point}-{nth}"
    p = _start(run, _args(), EBMKIT_TEST_KILL_AT=f"{point}@{nth}")
    _, err = p.communicate(timeout=600)
    assert p.returncode == -signal.SIGKILL, f"the kill point {point}@{nth} was not reached: {err}"
    return run


def _expected_resume(point: str, nth: int) -> int:
    """The step a run killed at ``point`` of its ``nth`` save resumes from: the new checkpoint
    counts once its directory has been renamed into place (complete and fsynced)."""
    committed = ckpt.KILL_POINTS.index(point) >= ckpt.KILL_POINTS.index("save-renamed")
    return EVERY * (nth if committed else nth - 1)


SHORT = [("save-tmpdir", 1), ("save-model-tmp", 2), ("save-renamed", 2), ("save-latest-tmp", 2),
         ("save-rotated", 3)]


@pytest.mark.parametrize(("point", "nth"), SHORT, ids=[f"{p}@{n}" for p, n in SHORT])
def test_kill_during_a_save_loses_nothing(tmp_path, reference, registry, point, nth):
    run = _kill_at(tmp_path, point, nth)
    _resume_and_check(run, reference, registry, expect_from=_expected_resume(point, nth))


ALL = [(p, n) for p in ckpt.KILL_POINTS for n in (1, 2, 3)]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "nth"), ALL, ids=[f"{p}@{n}" for p, n in ALL])
def test_kill_at_every_point_of_every_save(tmp_path, reference, registry, point, nth):
    run = _kill_at(tmp_path, point, nth)
    _resume_and_check(run, reference, registry, expect_from=_expected_resume(point, nth))


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(12))
def test_kill_at_random_moments(tmp_path, reference, registry, trial):
    """SIGKILL at a random moment after training began (fixed seed per trial)."""
    rng = random.Random(1000 + trial)
    run = tmp_path / f"random-{trial}"
    p = _start(run, _args())
    deadline = time.monotonic() + 300
    while _iterations_done(run) < 1 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.4))
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    _resume_and_check(run, reference, registry, done=_iterations_done(run))


# ---------------------------------------------------------------------------------------------
# clean interrupts: SIGINT / SIGTERM
# ---------------------------------------------------------------------------------------------
def _wait_training(p: subprocess.Popen, run: Path, at_least: int = 2) -> None:
    deadline = time.monotonic() + 300
    while _iterations_done(run) < at_least:
        assert p.poll() is None, p.communicate()[1]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.01)


LONG = 200  # iterations: long enough that the run is still going when the signal arrives


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("kill") / "long-reference"
    p = _start(out, _args(iters=LONG, every=50, steps=10))
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err
    return out


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_finishes_the_iteration_saves_and_exits_non_zero(tmp_path, request, registry,
                                                                 sig, code):
    run = tmp_path / "run"
    p = _start(run, _args(iters=LONG, every=50, steps=10))
    _wait_training(p, run)
    p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    assert p.returncode == code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
    assert f"interrupted by {name} after iteration" in lines[0] and "--resume" in lines[0]
    stopped = int(lines[0].split("after iteration ")[1].split(";")[0])
    assert stopped < LONG
    latest = ckpt.read_latest(run)
    assert latest == ckpt.step_dir_name(stopped)  # a checkpoint of the very iteration it stopped at
    assert ckpt.read_checkpoint(run / ckpt.MODEL)["step"] == stopped
    torch.set_num_threads(1)
    if sig == signal.SIGINT:  # resume to the end: bit for bit the uninterrupted run
        ebm = ebmkit.fit(out_dir=run, resume=True, registry=registry)
        assert ebm.completed and ebm.step == LONG
        _assert_same(run, request.getfixturevalue("long_reference"))
    else:
        ebm = ebmkit.fit(out_dir=run, resume=True, registry=registry, iterations=stopped + 1)
        assert ebm.completed


def test_second_sigint_exits_at_once_and_keeps_the_last_checkpoint(tmp_path, registry):
    run = tmp_path / "run"
    p = _start(run, _args(iters=LONG, every=3, steps=10))
    _wait_training(p, run, at_least=4)  # a checkpoint (step 3) is committed
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err
    assert "Traceback" not in err and len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    _assert_readable(run)
    found = ckpt.find_checkpoint(run)
    assert found is not None and found[1]["step"] >= 3
    ebm = ebmkit.fit(out_dir=run, resume=True, registry=registry, iterations=found[1]["step"] + 2)
    assert ebm.completed


@pytest.fixture
def sigint_default():
    """Python's own SIGINT handler for the test. A process started in the background by a
    non-interactive shell inherits SIGINT ignored, and the trainer rightly leaves an ignored
    signal alone; that would make the test below depend on how pytest was launched."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def test_in_memory_fit_interrupted_keeps_the_model(registry, sigint_default):
    """Library: without a run directory the exception carries the model trained so far."""
    from ebmkit import LambdaCallback, TrainingInterrupted

    def interrupt(run, out):
        if run.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as info:
        ebmkit.fit(energy="mlp", data="gmm2d", sampler={"name": "langevin", "steps": 3},
                   iterations=50, batch_size=8, registry=registry,
                   callbacks=[LambdaCallback(on_step_end=interrupt)])
    assert info.value.exit_code == 130 and info.value.model.step == 3
    assert "nothing was saved" in str(info.value)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
