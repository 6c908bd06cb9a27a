"""One rank of the 2-process test (launched by tests/test_distributed.py through torchrun).

Trains a tiny ConvNet from shards with the real trainer and dumps, per rank, what the test
checks: the world size the trainer saw, a checksum of the parameters afterwards, and the keys of
every example the rank's data stream yielded, by epoch.

    python -m torch.distributed.run --nproc_per_node 2 ddp_worker.py PATTERN OUT_DIR DUMP_DIR ITERS
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch


def digest(params) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(pattern: str, out_dir: str, dump_dir: str, iterations: int) -> None:
    torch.set_num_threads(1)
    from ebmkit import api as train_mod
    from ebmkit.plugins import build_registry
    from ebmkit.runconfig import build_document, resolve
    from ebmkit.shards import ShardDataset

    seen: dict[int, list[str]] = {}
    original = ShardDataset.__iter__

    def spy(self):  # record every example the rank's stream hands to the DataLoader
        keys = seen.setdefault(self.epoch, [])
        for x, key in original(self):
            keys.append(key)
            yield x, key

    ShardDataset.__iter__ = spy
    world_seen = {}
    from accelerate import Accelerator

    real_init = Accelerator.__init__

    def record_init(self, *a, **k):
        real_init(self, *a, **k)
        world_seen["world"], world_seen["rank"] = self.num_processes, self.process_index

    Accelerator.__init__ = record_init

    doc = build_document(names={"energy": "convnet32", "sampler": "langevin", "init": "noise", "data": "shards"},
                         overrides=[f"data.path={pattern}", "energy.nf=4", "sampler.steps=2",
                                    "train.batch_size=16", f"train.iterations={iterations}",
                                    "train.device=cpu", "train.sample_every=0", "train.checkpoint_every=0",
                                    "train.plots=false", "train.lr=1e-3"])
    spec = resolve(doc, build_registry())
    captured: list[torch.nn.Parameter] = []
    real_make = train_mod.make_optimizer

    def capture(cfg, parameters):  # the energy's own Parameter objects (DDP shares them)
        captured.extend(parameters)
        world_seen["init"] = digest(captured)
        return real_make(cfg, captured)

    train_mod.make_optimizer = capture
    result = train_mod.fit(config=spec, out_dir=Path(out_dir), registry=spec.registry)
    rank = world_seen["rank"]
    dump = {"rank": rank, "world": world_seen["world"], "step": result.step,
            "seen": {str(e): k for e, k in seen.items()}, "params": digest(captured),
            "params_init": world_seen["init"]}
    Path(dump_dir, f"rank{rank}.json").write_text(json.dumps(dump))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
