"""A small training run used by the tests as a separate process (resume-after-kill, DDP).

python tests/_train_job.py SOURCE_REGION TARGET_REGION OUT_DIR STEPS [--ddp]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from damnet.data import Stream, TileSet  # noqa: E402
from damnet.models import ChangeNet, preset  # noqa: E402
from damnet.train import fit, mode_config  # noqa: E402


def main() -> None:
    source, target, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ddp = "--ddp" in sys.argv
    torch.set_num_threads(1)
    if ddp:
        torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)
    model = ChangeNet(preset("tiny", dims=(16, 32, 64, 128), decoder_dim=16))
    cfg = mode_config("adapt", steps=steps, batch_size=2, crop=64, checkpoint_every=2,
                      adv_ramp=4, lambda_adv=0.01)
    src, tgt = TileSet(source), TileSet(target, labels=None)
    fit(model, cfg, source=Stream(src, 2, 64, 0, "source"), target=Stream(tgt, 2, 64, 0, "target"),
        out_dir=None if ddp else out, progress=False)
    rank = torch.distributed.get_rank() if ddp else 0
    os.makedirs(out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out, f"final-rank{rank}.pt"))
    if ddp:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
