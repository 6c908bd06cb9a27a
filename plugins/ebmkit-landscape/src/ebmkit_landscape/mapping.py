"""ADELM: attraction–diffusion energy-landscape mapping (Hill, Nijkamp & Zhu 2019; anatomy §4.4).

``map_landscape(ebm)`` finds many low-temperature minima, groups them into basins by AD trials
in a magnetized landscape (at one or several magnet strengths α), estimates the barriers between
the basins' representatives and merges them into a disconnectivity graph. Everything is a
:class:`LandscapeMap` (JSON with :meth:`LandscapeMap.to_dict`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ebmkit import EBM, ConfigError, Sampler
from torch import Tensor

from .ad import ad_trials, find_minima
from .tree import Merge, Tree, single_linkage

FORMAT = "ebmkit.landscape/1"


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
@dataclass
class Basin:
    id: int
    representative: int  # index of the basin's lowest minimum (into LandscapeMap.minima)
    members: list[int]  # minima indices, lowest energy first
    min_energy: float
    join_barriers: list[float]  # per member: the AD barrier it joined with (rep/first: its energy)

    @property
    def size(self) -> int:
        return len(self.members)

    def to_dict(self) -> dict:
        return {"id": self.id, "representative": self.representative, "size": self.size,
                "min_energy": self.min_energy, "members": self.members,
                "join_barriers": self.join_barriers}


@dataclass
class Level:
    """The map at one magnet strength α."""

    alpha: float
    basins: list[Basin]  # ordered by minimum energy
    barriers: list[list[float]]  # [K][K]; diagonal: basin minimum; inf: no successful AD
    tree: Tree
    barrier_alpha: float
    trials: int = 0
    successes: int = 0
    capped: int = 0  # minima put into the nearest basin because max_basins was reached

    @property
    def assignment(self) -> list[int]:
        out = [-1] * sum(b.size for b in self.basins)
        for b in self.basins:
            for m in b.members:
                out[m] = b.id
        return out

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "n_basins": len(self.basins),
                "basins": [b.to_dict() for b in self.basins],
                "barriers": [[_finite(v) for v in row] for row in self.barriers],
                "barrier_alpha": self.barrier_alpha, "tree": self.tree.to_dict(),
                "assignment": self.assignment, "trials": self.trials,
                "successes": self.successes, "capped": self.capped}


@dataclass
class LandscapeMap:
    """Minima, and per α their basins, barrier matrix and disconnectivity graph.

    ``levels`` are in ascending α (finest partition first); ``basins`` / ``barriers`` / ``tree``
    are those of the first level (``primary``). Energies are ``U`` (not divided by T).
    """

    minima: Tensor  # [N, *shape]
    energies: Tensor  # [N]
    levels: list[Level]
    params: dict[str, Any]
    bracket: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def primary(self) -> Level:
        return self.levels[0]

    @property
    def basins(self) -> list[Basin]:
        return self.primary.basins

    @property
    def barriers(self) -> list[list[float]]:
        return self.primary.barriers

    @property
    def tree(self) -> Tree:
        return self.primary.tree

    @property
    def n_basins(self) -> list[int]:
        return [len(lv.basins) for lv in self.levels]

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "params": self.params, "bracket": self.bracket,
             "n_minima": int(self.energies.numel()),
             "minima_energies": [float(v) for v in self.energies.tolist()],
             "levels": [lv.to_dict() for lv in self.levels], "timings": self.timings}
        if self.minima[0].numel() <= 16:
            d["minima"] = self.minima.reshape(self.minima.shape[0], -1).tolist()
        return d

    def save(self, out_dir: str | Path) -> Path:
        """Write ``landscape.json`` and ``minima.safetensors`` (the minima states) to ``out_dir``."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"minima": self.minima.detach().cpu().contiguous(),
                   "energies": self.energies.detach().cpu().contiguous()},
                  str(out / "minima.safetensors"))
        path = out / "landscape.json"
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        return path


    @classmethod
    def load(cls, out_dir: str | Path) -> LandscapeMap:
        """A map written by :meth:`save` (``landscape.json`` + ``minima.safetensors``)."""
        from ebmkit import CheckpointError
        from safetensors.torch import load_file

        out = Path(out_dir)
        try:
            doc = json.loads((out / "landscape.json").read_text())
            tensors = load_file(str(out / "minima.safetensors"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{out}: not a landscape map directory ({exc})") from None
        if doc.get("format") != FORMAT:
            raise CheckpointError(f"{out}/landscape.json is not a {FORMAT} document")
        levels = []
        for lv in doc["levels"]:
            basins = [Basin(b["id"], b["representative"], b["members"], b["min_energy"],
                            b["join_barriers"]) for b in lv["basins"]]
            bars = [[math.inf if v is None else v for v in row] for row in lv["barriers"]]
            t = lv["tree"]
            tree = Tree(t["n_leaves"], [b.min_energy for b in basins],
                        [Merge(m["node"], tuple(m["children"]), m["barrier"])
                         for m in t["merges"]])
            levels.append(Level(lv["alpha"], basins, bars, tree, lv["barrier_alpha"],
                                lv["trials"], lv["successes"], lv["capped"]))
        return cls(tensors["minima"], tensors["energies"], levels, doc["params"],
                   doc.get("bracket"), doc.get("timings", {}))


def _finite(v: float) -> float | None:
    """JSON has no infinity: an unknown barrier is written as null."""
    return float(v) if math.isfinite(v) else None


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------
class Progress:
    """What :func:`map_landscape` reports: ``stage(name, total)`` opens a stage, ``advance(n)``
    moves it. The default does nothing; the CLI's draws rich progress bars."""

    def stage(self, name: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


# --------------------------------------------------------------------------------------------
# the mapping
# --------------------------------------------------------------------------------------------
def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check(name: str, value: float, *, low: float = 0.0, strict: bool = True,
           hint: str = "") -> None:
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        rel = ">" if strict else ">="
        raise ConfigError(f"{name} must be a finite number {rel} {low:g}, got {value!r}{hint}")


def load_model(model: EBM | str | Path, device: str | None = None) -> tuple[EBM, dict]:
    """An EBM and, for a checkpoint path, ``{"checkpoint": path, "sha256": ...}`` (the hash
    of the model file the map was made from)."""
    import ebmkit

    info: dict[str, Any] = {}
    if isinstance(model, (str, Path)):
        p = Path(model)
        f = p / "model.safetensors" if p.is_dir() else p
        ebm = ebmkit.load(p, device=device or "cpu")
        info = {"checkpoint": str(p), "sha256": sha256(f) if f.is_file() else None}
    elif isinstance(model, EBM):
        ebm = model
        if device is not None:
            ebm.to(device)
    else:
        raise ConfigError(f"map_landscape needs an ebmkit.EBM or a checkpoint path, not "
                          f"{type(model).__name__}")
    return ebm, info


def _sampler(ebm: EBM, sampler: str | Mapping[str, Any] | Sampler | None,
             temperature: float) -> Sampler:
    """The landscape's sampler: MALA by default, with the model's own step size ε scaled by √T
    (on ``U/T`` that step has the training chain's drift and √T times its noise)."""
    if isinstance(sampler, Sampler):
        return sampler
    eps = getattr(getattr(ebm.sampler, "config", None), "step_size", None)
    step = float(eps) * math.sqrt(temperature) if eps else 0.01 * math.sqrt(temperature)
    if sampler is None:
        sampler = "mala"
    table = {"name": sampler} if isinstance(sampler, str) else dict(sampler)
    name = table.pop("name", None)
    if not name:
        raise ConfigError("sampler: a dict needs a 'name'")
    cls = ebm.component("sampler", name).__class__
    fields = getattr(cls.Config, "__dataclass_fields__", {})
    if "step_size" in fields and "step_size" not in table and "grad_coef" not in table:
        table["step_size"] = step
    return ebm.component("sampler", name, table)


def _starts(ebm: EBM, starts: str | Tensor, n: int, gen: torch.Generator) -> Tensor:
    if isinstance(starts, Tensor):
        if starts.shape[1:] != torch.Size(ebm.shape) or starts.shape[0] < n:
            raise ConfigError(f"starts must be [>= {n}, {', '.join(map(str, ebm.shape))}], got "
                              f"{list(starts.shape)}")
        return starts[:n].to(ebm.device)
    if starts == "model":  # the model's own chain starts (a persistent buffer when it has one)
        return ebm.starts(n, generator=gen)
    if starts == "noise":
        return ebm.prior.sample(n, generator=gen, device=ebm.device)
    if starts == "data":
        if ebm.config is None or ebm.config.name("data") == "custom":
            raise ConfigError("starts='data' needs a model trained on a registered dataset")
        ds = ebm.config.data_source().open(split="train")
        idx = torch.randperm(len(ds), generator=gen)[:n].tolist()
        items = [ds[i] for i in idx]
        x = torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])
        return x.to(ebm.device)
    raise ConfigError(f"starts must be 'model', 'noise', 'data' or a tensor, not {starts!r}")


def _pairwise_line_barriers(energy, x: Tensor, u: Tensor, points: int, batch: int) -> Tensor:
    """``[N, N]``: the highest ``U`` on the ``points``-point straight line between minima."""
    n = x.shape[0]
    out = torch.diag(u.clone()).to(torch.float64)
    iu = torch.triu_indices(n, n, offset=1)
    ts = torch.linspace(0, 1, points, dtype=x.dtype, device=x.device)[1:-1]
    if n < 2 or ts.numel() == 0:
        m = torch.maximum(u[:, None], u[None, :]).to(torch.float64)
        return m
    flat = x.reshape(n, -1)
    tops = []
    per = max(1, batch // ts.numel())
    with torch.no_grad():
        for s in range(0, iu.shape[1], per):
            a, b = iu[0, s:s + per], iu[1, s:s + per]
            pts = flat[a, None, :] + ts[None, :, None] * (flat[b] - flat[a])[:, None, :]
            e = energy(pts.reshape(-1, *x.shape[1:])).reshape(a.numel(), ts.numel())
            tops.append(e.max(dim=1).values)
    top = torch.cat(tops).to(torch.float64)
    top = torch.maximum(top, torch.maximum(u[iu[0]], u[iu[1]]).to(torch.float64))
    out[iu[0], iu[1]] = top
    out[iu[1], iu[0]] = top
    return out


class _UnionFind:
    def __init__(self, n: int):
        self.p = list(range(n))

    def find(self, v: int) -> int:
        while self.p[v] != v:
            self.p[v] = self.p[self.p[v]]
            v = self.p[v]
        return v

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)

    def count(self) -> int:
        return len({self.find(v) for v in range(len(self.p))})


@dataclass
class _Run:
    """Everything the stages share."""

    energy: Any
    sampler: Sampler
    minima: Tensor
    u: Tensor
    rank: Tensor  # [N, N] lower = try first
    temperature: float
    delta: float
    ad_steps: int
    ad_patience: int
    gen: torch.Generator
    batch_size: int
    progress: Progress
    trials: int = 0
    accept: list = field(default_factory=list)  # (acceptance, chain steps) per batch

    def trials_batch(self, jobs: list[tuple[int, int, float]], tick=None):
        """AD trials ``(source, target, alpha)`` between minima, one batched call."""
        if not jobs:
            return torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.float64)
        src = torch.tensor([j[0] for j in jobs], device=self.minima.device)
        tgt = torch.tensor([j[1] for j in jobs], device=self.minima.device)
        alpha = torch.tensor([j[2] for j in jobs], dtype=self.minima.dtype)
        res = ad_trials(self.energy, self.sampler, self.minima[src], self.minima[tgt], alpha,
                        temperature=self.temperature, delta=self.delta,
                        u_sources=self.u[src], u_targets=self.u[tgt], max_steps=self.ad_steps,
                        patience=self.ad_patience, generator=self.gen,
                        batch_size=self.batch_size, tick=tick)
        self.trials += len(jobs)
        if res.accept_rate is not None:
            self.accept.append((res.accept_rate, float(res.steps.sum())))
        return res.success.cpu(), res.barrier.double().cpu()

    def accept_rate(self) -> float | None:
        w = sum(n for _, n in self.accept)
        return sum(a * n for a, n in self.accept) / w if w else None


def _components(run: _Run, nodes: list[int], alpha: float) -> int:
    jobs = [(a, b, alpha) for a in nodes for b in nodes if a != b]
    run.progress.stage(f"bracket α={alpha:.3g}", len(jobs))
    ok, _ = run.trials_batch(jobs, tick=run.progress.advance)
    uf = _UnionFind(len(nodes))
    pos = {v: i for i, v in enumerate(nodes)}
    for (a, b, _), s in zip(jobs, ok.tolist(), strict=True):
        if s:
            uf.union(pos[a], pos[b])
    return uf.count()


def bracket_alpha(run: _Run, probe: list[int], alpha0: float, *, max_doublings: int = 12) -> dict:
    """α_max: the smallest α of the ladder ``alpha0·2^j`` at which AD joins all ``probe`` minima
    into one basin; α_min: the largest at which every probe minimum stays its own basin — or,
    when some never separate (two minima of one well join at any α), the largest α of the
    finest partition (no further split over two more halvings)."""
    m = len(probe)
    ladder: dict[float, int] = {}

    def k(a: float) -> int:
        if a not in ladder:
            ladder[a] = _components(run, probe, a)
        return ladder[a]

    a = alpha0
    for _ in range(max_doublings):  # up: until all probe minima join
        if k(a) == 1:
            break
        a *= 2
    alpha_max = a if k(a) == 1 else None
    a = alpha0 if k(alpha0) > 1 else alpha0 / 2
    for _ in range(max_doublings):  # down: until each is its own basin, or nothing splits any more
        c = k(a)
        if c == m or (c > 1 and ladder.get(2 * a) == c and ladder.get(4 * a) == c):
            break
        a /= 2
    finest = max(ladder.values())
    alpha_min = max(x for x, c in ladder.items() if c == finest)
    return {"alpha_min": alpha_min, "alpha_max": alpha_max, "probe": probe,
            "finest": finest, "ladder": [[x, ladder[x]] for x in sorted(ladder)]}


@dataclass
class _LevelState:
    alpha: float
    reps: list[int] = field(default_factory=list)  # per basin: representative (lowest member)
    members: list[list[int]] = field(default_factory=list)
    joins: list[list[float]] = field(default_factory=list)
    trials: int = 0
    successes: int = 0
    capped: int = 0


def _map_levels(run: _Run, alphas: list[float], *, n_targets: int, rounds: int,
                max_basins: int) -> list[_LevelState]:
    """The sequential ADELM grouping, for every α in lockstep (one batch of trials per round)."""
    order = torch.argsort(run.u, stable=True).tolist()
    levels = [_LevelState(a) for a in alphas]
    run.progress.stage("mapping", len(order))
    for i in order:
        pending: dict[int, list[int]] = {}  # level -> candidate basins
        for li, lv in enumerate(levels):
            if not lv.reps:
                lv.reps.append(i)
                lv.members.append([i])
                lv.joins.append([float(run.u[i])])
                continue
            reps = torch.tensor(lv.reps)
            best = torch.argsort(run.rank[i, reps], stable=True)[:n_targets].tolist()
            pending[li] = best
        found: dict[int, tuple[float, int]] = {}
        for _ in range(rounds):
            jobs, owners = [], []
            for li, cands in pending.items():
                if li in found:
                    continue
                lv = levels[li]
                for c in cands:
                    r = lv.reps[c]
                    jobs += [(i, r, lv.alpha), (r, i, lv.alpha)]
                    owners += [(li, c), (li, c)]
            if not jobs:
                break
            ok, bar = run.trials_batch(jobs)
            for (li, c), s, b in zip(owners, ok.tolist(), bar.tolist(), strict=True):
                levels[li].trials += 1
                if s:
                    levels[li].successes += 1
                    if li not in found or b < found[li][0]:
                        found[li] = (b, c)
        for li in pending:
            lv = levels[li]
            if li in found:
                b, c = found[li]
            elif len(lv.reps) >= max_basins:  # the cap: the basin first in the ranking
                b, c = math.inf, pending[li][0]
                lv.capped += 1
            else:
                lv.reps.append(i)
                lv.members.append([i])
                lv.joins.append([float(run.u[i])])
                continue
            lv.members[c].append(i)
            lv.joins[c].append(b)
            if run.u[i] < run.u[lv.reps[c]]:
                lv.reps[c] = i
        run.progress.advance(1)
    return levels


def _barrier_matrix(run: _Run, levels: list[_LevelState], barrier_alphas: list[float],
                    n_neighbors: int) -> list[list[list[float]]]:
    """Per level: AD in both directions between each representative and its ``n_neighbors``
    nearest (by the ranking) representatives; the lowest successful barrier, inf otherwise."""
    jobs, owners = [], []
    mats = []
    for li, lv in enumerate(levels):
        k = len(lv.reps)
        mats.append([[math.inf] * k for _ in range(k)])
        for a in range(k):
            mats[li][a][a] = float(run.u[lv.reps[a]])
        if k < 2:
            continue
        reps = torch.tensor(lv.reps)
        sub = run.rank[reps][:, reps].clone()
        sub.fill_diagonal_(math.inf)
        pairs = set()
        for a in range(k):
            for b in torch.argsort(sub[a], stable=True)[:n_neighbors].tolist():
                pairs.add((min(a, b), max(a, b)))
        for a, b in sorted(pairs):
            ra, rb = lv.reps[a], lv.reps[b]
            jobs += [(ra, rb, barrier_alphas[li]), (rb, ra, barrier_alphas[li])]
            owners += [(li, a, b), (li, a, b)]
    run.progress.stage("barriers", len(jobs))
    ok, bar = run.trials_batch(jobs, tick=run.progress.advance)
    for (li, a, b), s, h in zip(owners, ok.tolist(), bar.tolist(), strict=True):
        if s and h < mats[li][a][b]:
            mats[li][a][b] = mats[li][b][a] = h
    return mats


def map_landscape(
    model: EBM | str | Path,
    *,
    n_minima: int = 64,
    alpha: float | Sequence[float] | None = None,
    n_alpha: int = 4,
    temperature: float = 0.1,
    delta: float | None = None,
    sampler: str | Mapping[str, Any] | Sampler | None = None,
    starts: str | Tensor = "model",
    minima_steps: int = 5000,
    minima_patience: int = 30,
    ad_steps: int = 5000,
    ad_patience: int = 40,
    n_targets: int = 10,
    rounds: int = 3,
    rank_by: str = "interpolation",
    interp_points: int = 10,
    max_basins: int | None = None,
    barrier_alpha: float | None = None,
    n_neighbors: int = 5,
    probe: int = 12,
    seed: int = 0,
    batch_size: int = 256,
    device: str | None = None,
    progress: Progress | bool | None = None,
) -> LandscapeMap:
    """Map the energy landscape of ``model`` (an :class:`ebmkit.EBM` or a checkpoint path).

    1. **Minima**: ``n_minima`` chains from ``starts`` (``model``: the model's own chain
       starts, ``noise``: its prior, ``data``: training examples, or a tensor) at temperature T
       until ``minima_patience`` steps bring no new lowest energy (at most ``minima_steps``);
       each keeps the lowest state it visited.
    2. **α**: the given value(s); or, with ``alpha=None``, a bracket ``[α_min, α_max]`` (every
       minimum its own basin … all in one) from AD trials among ``probe`` minima on a ladder of
       doublings, and ``n_alpha`` log-spaced values across it.
    3. **Mapping** at each α (lowest minimum first): rank the basin representatives by the
       highest energy on the ``interp_points``-point straight line to them (or by distance),
       try AD in both directions to the best ``n_targets`` for up to ``rounds`` rounds; join
       the basin with the lowest barrier among the successes (the new minimum becomes its
       representative if lower), else open a new basin (at most ``max_basins``).
    4. **Barriers**: AD at ``barrier_alpha`` (default: α_max of the bracket, else 4·α) between
       each representative and its ``n_neighbors`` nearest; single linkage on that matrix gives
       the disconnectivity graph.

    AD trials: the sampler (MALA by default; any registered name, dict or
    :class:`ebmkit.Sampler` at temperature 1) on ``U(x)/T + α‖x − x_b‖₂``; success within
    ``delta`` of the target (default ``0.05·√D``), giving up after ``ad_steps`` steps or
    ``ad_patience`` steps without getting closer. All chains of a stage run as batches of
    ``batch_size``. The same ``seed`` gives the same map.
    """
    t_start = time.perf_counter()
    if n_minima < 1:
        raise ConfigError(f"n_minima must be >= 1 (an empty map has no basins), got {n_minima}")
    _check("temperature", float(temperature))
    for name, v in (("n_targets", n_targets), ("rounds", rounds), ("probe", probe),
                    ("n_alpha", n_alpha), ("interp_points", interp_points),
                    ("batch_size", batch_size), ("n_neighbors", n_neighbors)):
        if int(v) < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    for name, v in (("minima_steps", minima_steps), ("minima_patience", minima_patience),
                    ("ad_steps", ad_steps), ("ad_patience", ad_patience)):
        if int(v) < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    if rank_by not in ("interpolation", "distance"):
        raise ConfigError(f"rank_by must be 'interpolation' or 'distance', not {rank_by!r}")
    alphas: list[float] | None = None
    if alpha is not None:
        alphas = sorted(float(a) for a in ([alpha] if isinstance(alpha, (int, float)) else alpha))
        if not alphas:
            raise ConfigError("alpha: give at least one value, or None to bracket it")
        for a in alphas:
            _check("alpha", a, hint=" (the magnet strength of the AD chains)")
    if barrier_alpha is not None:
        _check("barrier_alpha", float(barrier_alpha))
    hint = " (the distance at which an AD chain has reached its target)"
    if delta is not None:
        _check("delta", float(delta), hint=hint)
    ebm, info = load_model(model, device)
    dim = math.prod(ebm.shape)
    if delta is None:
        delta = 0.05 * math.sqrt(dim)
    _check("delta", float(delta), hint=hint)
    smp = _sampler(ebm, sampler, temperature)
    prog = progress if isinstance(progress, Progress) else Progress()
    if progress is True:
        from .progress import RichProgress

        prog = RichProgress()
    gen = torch.Generator().manual_seed(int(seed))
    energy = ebm.energy
    was_training = energy.training
    energy.eval()
    timings: dict[str, float] = {}
    try:
        with _progress_context(prog):
            t0 = time.perf_counter()
            x0 = _starts(ebm, starts, n_minima, gen)
            prog.stage("minima", n_minima)
            mins = find_minima(energy, smp, x0, temperature=temperature, max_steps=minima_steps,
                               patience=minima_patience, generator=gen, batch_size=batch_size,
                               tick=prog.advance)
            timings["minima_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            if rank_by == "interpolation":
                rank = _pairwise_line_barriers(energy, mins.x, mins.energy, interp_points,
                                               batch_size * 4)
            else:
                flat = mins.x.reshape(n_minima, -1).double()
                rank = torch.cdist(flat, flat)
            rank = rank.cpu()
            timings["ranking_s"] = time.perf_counter() - t0
            run = _Run(energy, smp, mins.x, mins.energy, rank, float(temperature),
                       float(delta), int(ad_steps), int(ad_patience), gen, int(batch_size), prog)
            bracket = None
            if alphas is None:
                t0 = time.perf_counter()
                probes = _probe_set(run, int(probe), gen)
                if len(probes) < 2:
                    raise ConfigError("all minima lie within delta of each other: nothing to "
                                      "bracket; give alpha= or a smaller delta")
                bracket = bracket_alpha(run, probes, _alpha0(run, probes))
                lo = bracket["alpha_min"]
                hi = bracket["alpha_max"] if bracket["alpha_max"] is not None else lo * 8
                n = max(1, int(n_alpha))
                alphas = ([lo] if n == 1 or hi <= lo else
                          [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)])
                timings["bracket_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            cap = int(max_basins) if max_basins is not None else n_minima
            states = _map_levels(run, alphas, n_targets=int(n_targets), rounds=int(rounds),
                                 max_basins=max(1, cap))
            timings["mapping_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            if barrier_alpha is not None:
                b_alphas = [float(barrier_alpha)] * len(states)
            elif bracket is not None and bracket["alpha_max"] is not None:
                b_alphas = [float(bracket["alpha_max"])] * len(states)
            else:
                b_alphas = [4 * a for a in alphas]
            mats = _barrier_matrix(run, states, b_alphas, int(n_neighbors))
            timings["barriers_s"] = time.perf_counter() - t0
    finally:
        energy.train(was_training)
    levels = [_level(run, st, mat, ba) for st, mat, ba in zip(states, mats, b_alphas, strict=True)]
    timings["total_s"] = time.perf_counter() - t_start
    params = {"n_minima": n_minima, "alphas": alphas, "temperature": float(temperature),
              "delta": float(delta), "sampler": {"name": smp.name, **_config(smp)},
              "starts": starts if isinstance(starts, str) else "tensor",
              "minima_steps": minima_steps, "minima_patience": minima_patience,
              "ad_steps": ad_steps, "ad_patience": ad_patience, "n_targets": n_targets,
              "rounds": rounds, "rank_by": rank_by, "interp_points": interp_points,
              "max_basins": max_basins, "barrier_alpha": barrier_alpha,
              "n_neighbors": n_neighbors, "probe": probe, "seed": seed,
              "batch_size": batch_size, "shape": list(ebm.shape), "trials": run.trials,
              "accept_rate_minima": mins.accept_rate, "accept_rate_ad": run.accept_rate(),
              "model": repr(ebm), **info}
    return LandscapeMap(mins.x.detach().cpu(), mins.energy.detach().cpu(), levels, params,
                        bracket, timings)


def _config(smp: Sampler) -> dict:
    cfg = getattr(smp, "config", None)
    if cfg is None or not hasattr(cfg, "__dataclass_fields__"):
        return {}
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if isinstance(v, (int, float, str, bool)) or v is None}


class _progress_context:
    def __init__(self, prog: Progress):
        self.prog = prog

    def __enter__(self):
        enter = getattr(self.prog, "__enter__", None)
        if enter is not None:
            enter()
        return self.prog

    def __exit__(self, *exc):
        ex = getattr(self.prog, "__exit__", None)
        if ex is not None:
            ex(*exc)
        return False


def _probe_set(run: _Run, m: int, gen: torch.Generator) -> list[int]:
    """Up to ``m`` minima for the bracket: one per group of minima within delta of each other,
    lowest first, then a seeded random choice among them."""
    n = run.u.numel()
    flat = run.minima.reshape(n, -1)
    reps: list[int] = []
    for i in torch.argsort(run.u, stable=True).tolist():
        if all(float((flat[i] - flat[r]).norm()) > run.delta for r in reps):
            reps.append(i)
    if len(reps) <= m:
        return reps
    pick = torch.randperm(len(reps), generator=gen)[:m].sort().values.tolist()
    return [reps[p] for p in pick]


def _alpha0(run: _Run, probes: list[int]) -> float:
    """The ladder's first rung: the median over probe pairs of the magnet that balances the mean
    slope of ``U/T`` up the straight-line barrier, ``(B_line − max(U_a, U_b)) / T / (‖a − b‖/2)``."""
    flat = run.minima.reshape(run.minima.shape[0], -1)
    vals = []
    for a in probes:
        for b in probes:
            if a < b:
                rise = float(run.rank[a, b]) - max(float(run.u[a]), float(run.u[b]))
                dist = float((flat[a] - flat[b]).norm())
                if rise > 0 and dist > 0:
                    vals.append(rise / run.temperature / (dist / 2))
    if not vals:
        return 1.0
    vals.sort()
    return vals[len(vals) // 2]


def _level(run: _Run, st: _LevelState, mat: list[list[float]], barrier_alpha: float) -> Level:
    k = len(st.reps)
    order = sorted(range(k), key=lambda c: (float(run.u[st.reps[c]]), c))
    basins = []
    for new, c in enumerate(order):
        pairs = sorted(zip(st.members[c], st.joins[c], strict=True),
                       key=lambda p: (float(run.u[p[0]]), p[0]))
        rep = st.reps[c]
        basins.append(Basin(new, rep, [p[0] for p in pairs], float(run.u[rep]),
                            [float(run.u[p[0]]) if p[0] == rep else p[1] for p in pairs]))
    barriers = [[mat[a][b] for b in order] for a in order]
    tree = single_linkage(barriers, [b.min_energy for b in basins])
    return Level(st.alpha, basins, barriers, tree, barrier_alpha, st.trials, st.successes,
                 st.capped)
