"""The loop a user would write by hand for the image presets: the baseline of `image_speed.py`.

    python benchmarks/image_plain_loop.py mnist_mlp|cifar10_resnet20 --root DIR [--steps N]

Reads the files with NumPy (MNIST: gzipped IDX in DIR/MNIST/raw; CIFAR-10: DIR/cifar-10-batches-bin),
keeps the images on the device as float32 standardized per channel, batches by index into a per-epoch
permutation; ResNet-20 also pads, crops and flips each example on the device. Adam lr 1e-3 batch 128
(MLP 784-512-512-10), or SGD momentum 0.9 lr 0.1 weight decay 1e-4 batch 128 (ResNet-20 with batch
norm, He et al. 2016). Prints one JSON line: train seconds, steps/s and test accuracy.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def read_mnist(root: Path) -> tuple[np.ndarray, ...]:
    def idx(name: str, offset: int) -> np.ndarray:
        return np.frombuffer(gzip.open(root / "MNIST" / "raw" / f"{name}.gz").read(), np.uint8, offset=offset)

    x, y = idx("train-images-idx3-ubyte", 16).reshape(-1, 1, 28, 28), idx("train-labels-idx1-ubyte", 8)
    xt, yt = idx("t10k-images-idx3-ubyte", 16).reshape(-1, 1, 28, 28), idx("t10k-labels-idx1-ubyte", 8)
    return x, y, xt, yt


def read_cifar(root: Path) -> tuple[np.ndarray, ...]:
    def records(name: str) -> np.ndarray:
        return np.fromfile(root / "cifar-10-batches-bin" / name, np.uint8).reshape(-1, 3073)

    train = np.concatenate([records(f"data_batch_{i}.bin") for i in range(1, 6)])
    test = records("test_batch.bin")
    return train[:, 1:].reshape(-1, 3, 32, 32), train[:, 0], test[:, 1:].reshape(-1, 3, 32, 32), test[:, 0]


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        short = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:
            short = F.pad(short, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(out + short)


def resnet20() -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    c_in = 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(3):
            layers.append(Block(c_in, width, 2 if stage and i == 0 else 1))
            c_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def crop_flip(xb: torch.Tensor, pad: int = 4) -> torch.Tensor:
    n, _, h, w = xb.shape
    flip = torch.rand(n, device=xb.device) < 0.5
    xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
    padded = F.pad(xb, (pad,) * 4)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), device=xb.device)
    rows = (dy[:, None] + torch.arange(h, device=xb.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=xb.device))[:, None, :]
    return padded[torch.arange(n, device=xb.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("preset", choices=["mnist_mlp", "cifar10_resnet20"])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resnet = args.preset == "cifar10_resnet20"
    x, y, xt, yt = read_cifar(args.root) if resnet else read_mnist(args.root)
    mean = (x / 255.0).mean(axis=(0, 2, 3), keepdims=True)
    std = (x / 255.0).std(axis=(0, 2, 3), keepdims=True)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(((a / 255.0 - mean) / std).astype(np.float32), device=device)

    x, xt = tensor(x), tensor(xt)
    y, yt = torch.tensor(y, dtype=torch.long, device=device), torch.tensor(yt, dtype=torch.long, device=device)
    torch.manual_seed(0)
    if resnet:
        model = resnet20().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    else:
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        ).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    start = time.perf_counter()
    step, batch = 0, 128
    while step < args.steps:
        order = torch.randperm(len(x), device=device)
        for b in range(len(x) // batch):
            idx = order[b * batch : (b + 1) * batch]
            xb = crop_flip(x[idx]) if resnet else x[idx]
            loss = F.cross_entropy(model(xb), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == args.steps:
                break
    model.eval()
    with torch.no_grad():
        acc = sum((model(xt[i : i + 1000]).argmax(1) == yt[i : i + 1000]).sum().item() for i in range(0, len(xt), 1000))
    seconds = time.perf_counter() - start
    print(json.dumps({"train_seconds": seconds, "steps_per_s": args.steps / seconds, "test_acc": acc / len(xt)}))


if __name__ == "__main__":
    main()
