"""The same training as plain_loop.py through PyTorch Lightning's Trainer (no logger, no
checkpoints, no progress bar), for engine_speed.py. Needs `pip install lightning`.

    python benchmarks/lightning_loop.py mlp|cnn1d [--steps 6000] [--seed 0]
"""

from __future__ import annotations

import json
import time

import lightning as L
import torch
from mnist1d.data import get_dataset_args, make_dataset
from plain_loop import make_model, parse_args
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Module(L.LightningModule):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def main() -> None:
    args = parse_args()
    data = make_dataset(get_dataset_args())
    x = torch.tensor(data["x"], dtype=torch.float32)
    y = torch.tensor(data["y"], dtype=torch.long)
    torch.manual_seed(args.seed)
    module = Module(make_model(args.model))
    loader = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True, drop_last=True)
    trainer = L.Trainer(
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="auto",
        devices=1,
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        x_test = torch.tensor(data["x_test"], dtype=torch.float32)
        acc = (module.model(x_test).argmax(1) == torch.tensor(data["y_test"])).float().mean().item()
    print(json.dumps({"train_seconds": seconds, "steps_per_s": args.steps / seconds, "test_acc": acc}))


if __name__ == "__main__":
    main()
