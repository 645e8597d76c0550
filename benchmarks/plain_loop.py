"""The loop a user would write by hand: the baseline that `engine_speed.py` times the engine against.

    python benchmarks/plain_loop.py mlp|cnn1d [--steps 6000] [--seed 0]

MNIST-1D made offline with the mnist1d package, the data on the device, batches by index into a
per-epoch permutation, Adam lr 1e-2, batch 100, no `.item()` in the loop, test accuracy at the end.
It prints one JSON line: train seconds, steps/s and test accuracy.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from mnist1d.data import get_dataset_args, make_dataset
from torch import nn


def make_model(name: str) -> nn.Module:
    if name == "mlp":
        return nn.Sequential(nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    return nn.Sequential(
        nn.Unflatten(1, (1, 40)),
        nn.Conv1d(1, 25, 5, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(125, 10),
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=["mlp", "cnn1d"])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = make_dataset(get_dataset_args())
    x = torch.tensor(data["x"], dtype=torch.float32, device=device)
    y = torch.tensor(data["y"], dtype=torch.long, device=device)
    x_test = torch.tensor(data["x_test"], dtype=torch.float32, device=device)
    y_test = torch.tensor(data["y_test"], dtype=torch.long, device=device)
    torch.manual_seed(args.seed)
    model = make_model(args.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()

    start = time.perf_counter()
    step, batch = 0, 100
    while step < args.steps:
        order = torch.randperm(len(x), device=device)
        for b in range(len(x) // batch):
            idx = order[b * batch : (b + 1) * batch]
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == args.steps:
                break
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()  # also waits for the device
    seconds = time.perf_counter() - start
    print(json.dumps({"train_seconds": seconds, "steps_per_s": args.steps / seconds, "test_acc": acc}))


if __name__ == "__main__":
    main()
