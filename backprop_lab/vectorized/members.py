"""Several runs trained as one batched model (hydra/launcher=vectorized): runs that differ in their
seed and in the values of members.BATCHED_KEYS (optimizer, schedule, l1, l2, dropout rate, init).

`Members` stacks the K members' parameters along a new first dimension and runs the forward pass
with `torch.func.vmap` over `functional_call`, so a linear layer becomes one batched matmul for all K.
An MLP of linear layers, elementwise activations and dropout runs without vmap (`StackedMLP`): the
same batched matmuls, without vmap's cost per operation, which dominates small networks.
Each member keeps its own init (built under its own seed), its own data order (the engine draws a
permutation per member) and its own dropout masks (vmap's randomness="different"). The loss is the
sum of the members' losses, so every member gets exactly its own gradient. Members that share one
elementwise optimizer (SGD, Adam, RMSprop, ...) step as one optimizer over the stacked tensors, which
steps each member as its own optimizer would; otherwise each member has its own (member_optimizers).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from backprop_lab.components.activations import ACTIVATIONS
from backprop_lab.components.models import Classifier


class Members(nn.Module):
    """K models of one architecture as one: forward maps [K, B, ...] to [K, B, classes]."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.count = len(models)
        params, buffers = stack_module_state(list(models))
        # Parameter names may not contain '.', so the stacked ones are kept in plain dicts by module path.
        self.names = list(params)
        # (a frozen block's weights, which fine-tuning with pretrain.finetune=freeze keeps, stay frozen)
        self.stacked = nn.ParameterList(nn.Parameter(p, requires_grad=p.requires_grad) for p in params.values())
        for p in self.stacked:
            p.member_dim = True  # optimizers.is_decayed looks at the shape of one member
        template = copy.deepcopy(models[0])
        # every dropout layer reads each member's rate from a buffer (rates may differ between members)
        self.rate_names = []
        for path, rates in _dropout_rates(models).items():
            owner, _, leaf = path.rpartition(".")
            template.get_submodule(owner)._modules[leaf] = MemberDropout()
            buffers[f"{path}.rate"] = torch.tensor(rates, device=self.stacked[0].device)
            self.rate_names.append(f"{path}.rate")
        self.buffer_names = list(buffers)
        for i, b in enumerate(buffers.values()):
            self.register_buffer(f"buffer_{i}", b)
        self.template = [template.to("meta")]  # a list hides it from .parameters() and .to()
        self.capture: dict[str, torch.Tensor] | None = None  # set by Diagnostics.arm for one forward pass
        self._forward = vmap(self._one, in_dims=(0, 0, 0), randomness="different")
        self._forward_shared = vmap(self._one, in_dims=(0, 0, None), randomness="different")
        self._mlp = StackedMLP.of(template)

    def params(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.stacked, strict=True))

    def buffers_by_name(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, f"buffer_{i}") for i, n in enumerate(self.buffer_names)}

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
        out = functional_call(self.template[0], (params, buffers), (x,))
        # What forward hooks stored during this call exists only inside vmap: return it to get it out.
        return out if self.capture is None else (out, dict(self.capture))

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """x is [K, B, ...] (each member its own batch), or [B, ...] given to all with shared=True."""
        if self._mlp is not None and self.capture is None:  # (the diagnostics' hooks run under vmap)
            return self._mlp(self.params(), self.buffers_by_name(), x, shared)
        run = self._forward_shared if shared else self._forward
        if self.capture is None:
            return run(self.params(), self.buffers_by_name(), x)
        out, captured = run(self.params(), self.buffers_by_name(), x)
        self.capture.update(captured)  # one value per member
        self.capture = None
        return out

    def train(self, mode: bool = True) -> Members:
        super().train(mode)
        self.template[0].train(mode)  # dropout and batch norm read the template's mode inside vmap
        return self

    def named_members_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """(module path, stacked tensor): the names a single model's named_parameters() would give."""
        return list(zip(self.names, self.stacked, strict=True))

    def state(self) -> dict[str, torch.Tensor]:
        """The stacked state, keyed like a single model's state_dict (the members' dropout rates are not
        state: each member's own model holds its rate in its config)."""
        buffers = {n: b for n, b in self.buffers_by_name().items() if n not in self.rate_names}
        return {**self.params(), **buffers}

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as a single model's state_dict: loads into an ordinary model."""
        return {name: t[k].detach().clone() for name, t in self.state().items()}

    def load_member_states(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Set member k to `states[k]` (ordinary state dicts, as member_state gives)."""
        with torch.no_grad():
            for name, t in self.state().items():
                t.copy_(torch.stack([s[name] for s in states]))


class MemberDropout(nn.Module):
    """nn.Dropout whose rate is a buffer, so that under vmap each member drops with its own rate: each
    element is kept with probability 1 - rate and scaled by 1 / (1 - rate), as torch's dropout does."""

    rate: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("rate", torch.zeros(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return member_dropout(x, self.rate, self.training)


def member_dropout(x: torch.Tensor, rate: torch.Tensor | float, training: bool) -> torch.Tensor:
    """Dropout with masks from torch.rand_like: on the CPU much faster than F.dropout, whose
    bernoulli_ draws slowly (BENCHMARKS.md, dropout masks)."""
    if not training:
        return x
    return x * ((torch.rand_like(x) >= rate) / (1 - rate))  # (in-place ops here have no rule under vmap)


MASK_BITS = 15  # random bits per element of a stacked dropout mask: four elements from each int64 draw


def stacked_dropout(x: torch.Tensor, rate: torch.Tensor, training: bool) -> torch.Tensor:
    """Dropout for the stacked MLP (outside vmap), x [K, B, width], rate [K, 1, 1]: each element is kept
    with probability q = 1 - round(rate * 2^15) / 2^15 (within 2^-16 of 1 - rate) and scaled by 1 / q,
    so each output's expectation is its input exactly. Its masks take 15 random bits per element, four
    elements to one int64 draw of torch's generator, about half the time of member_dropout's one float
    draw per element (BENCHMARKS.md, dropout masks)."""
    if not training:
        return x
    count = x.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=x.device).random_()  # 63 random bits each
    bits = words.view(torch.int16)[:count].view(x.shape).bitwise_and_(2**MASK_BITS - 1)
    dropped = torch.round(rate * 2**MASK_BITS).clamp_(max=2**MASK_BITS - 1)  # (a rate within 2^-16 of 1 keeps 2^-15)
    keep = (bits >= dropped.to(torch.int16)).to(x.dtype).mul_(2**MASK_BITS / (2**MASK_BITS - dropped))
    return x * keep


# Activations that map each element on its own and hold no parameters: they apply to [K, B, width]
# as they do to [B, width]. (PReLU has a weight per member; a user's activation may not be elementwise.)
ELEMENTWISE = tuple(cls for name, cls in ACTIVATIONS.items() if name != "prelu")


class StackedMLP:
    """The forward pass of K stacked MLP Classifiers (models.build_mlp) without vmap:
    each linear layer is one batched matmul over the members' weights [K, out, in], activations and dropout
    apply to [K, B, width] elementwise. Each member's outputs are what its own model computes (the
    linear layers' bit for bit at 1 or 2 threads: MemberLinear); every dropout layer draws its own masks
    for each member (stacked_dropout)."""

    def __init__(self, blocks: list[list[tuple[str, nn.Module]]], residual_from: int | None):
        self.blocks, self.residual_from = blocks, residual_from

    @classmethod
    def of(cls, net: nn.Module) -> StackedMLP | None:
        """The plan for `net`, or None when it is not such an MLP (vmap then runs it)."""
        if type(net) is not Classifier or len(net.input_view) != 1 or not isinstance(net.head, nn.Linear):
            return None
        blocks = []
        for i, block in enumerate(net.blocks):
            if not isinstance(block, nn.Sequential):
                return None
            layers = [(f"blocks.{i}.{name}", layer) for name, layer in block.named_children()]
            if not all(
                isinstance(m, (nn.Linear, MemberDropout, *ELEMENTWISE)) or _stackable_norm(m) for _, m in layers
            ):
                return None
            blocks.append(layers)
        return cls(blocks, net.residual_from)

    def __call__(
        self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor, shared: bool
    ) -> torch.Tensor:
        """x: [K, B, ...], or [B, ...] shared by all members; returns [K, B, classes]."""
        count = len(params["head.weight"])
        h = x.reshape(1, len(x), -1).expand(count, -1, -1) if shared else x.reshape(count, x.shape[1], -1)
        for i, layers in enumerate(self.blocks):
            out = h
            for path, layer in layers:
                if isinstance(layer, nn.Linear):
                    out = _linear(out, params[f"{path}.weight"], params[f"{path}.bias"])
                elif isinstance(layer, MemberDropout):
                    out = stacked_dropout(out, buffers[f"{path}.rate"].view(count, 1, 1), layer.training)
                elif isinstance(layer, nn.BatchNorm1d):
                    out = _batch_norm(out, layer, path, params, buffers)
                else:
                    out = layer(out)
            residual = self.residual_from is not None and i >= self.residual_from
            h = h + out if residual else out
        return _linear(h, params["head.weight"], params["head.bias"])


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Each member's nn.Linear: h [K, B, in], weight [K, out, in], bias [K, out] -> [K, B, out]. Under
    autocast (trainer.precision=bf16) autograd differentiates the product and the bias; otherwise
    MemberLinear does."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.matmul(h, weight.transpose(1, 2)) + bias.unsqueeze(1)
    return MemberLinear.apply(h, weight, bias)


class MemberLinear(torch.autograd.Function):
    """K linear layers as one: the forward is baddbmm, which for each member gives what its own
    nn.Linear (addmm, the bias fused) gives, bit for bit on the CPU at 1 or 2 threads (at more, torch's
    gemm for one small nn.Linear may split its sums: the same to float rounding). Where gemm_backend()
    is onednn, products of ONEDNN_MACS or more (all three) run through oneDNN: the same to float
    rounding. The backward makes the weights' gradient g^T h in their own layout
    [K, out, in], as torch does for one nn.Linear; autograd's bmm backward made it transposed and then
    copied it into place, a third of a 40-512-512-10 MLP's step."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        if use_onednn(h, h.shape[1] * weight.shape[1] * weight.shape[2]):
            return onednn_linear(h, weight, bias)
        return member_matmul(h, weight.transpose(1, 2), bias.unsqueeze(1))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        needs_h, needs_weight, needs_bias = ctx.needs_input_grad
        return (
            _input_grad(grad, weight) if needs_h else None,
            _weight_grad(grad, h) if needs_weight else None,
            grad.sum(1) if needs_bias else None,
        )


def _input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad [K, n, p] @ weight [K, p, m]: each member's gradient for the layer's input."""
    if use_onednn(grad, grad.shape[1] * weight.shape[1] * weight.shape[2]):
        return onednn_linear(grad, weight.transpose(1, 2))
    return member_matmul(grad, weight)


def _weight_grad(grad: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """grad [K, n, p]^T @ h [K, n, m]: each member's weight gradient [K, p, m], in the weights' layout.
    oneDNN takes grad^T as a contiguous copy: with it as a transposed view its time varied between
    processes, and the copy was faster than both that and MKL (BENCHMARKS.md, oneDNN)."""
    if use_onednn(grad, grad.shape[1] * grad.shape[2] * h.shape[2]):
        return onednn_linear(grad.transpose(1, 2).contiguous(), h.transpose(1, 2))
    return member_matmul(grad.transpose(1, 2), h)


GEMM_CHOICES = ("auto", "mkl", "onednn")
ONEDNN_MACS = 2**22  # per member and product; below it oneDNN's per-call cost outweighs its kernel (BENCHMARKS.md)


def gemm_backend() -> str:
    """Which library computes a batched MLP's large forward and input-gradient products on the CPU:
    `onednn` or `mkl`, from BACKPROP_LAB_GEMM (auto | mkl | onednn; auto: onednn on AMD CPUs with
    AVX-512). MKL's sgemm runs its AVX2 kernels on AMD CPUs: on this repo's Zen 5 machine oneDNN's
    AVX-512 kernels compute [100, 512] @ [512, 512] in half MKL's time. Read once a process."""
    global _backend
    if _backend is None:
        import os

        from backprop_lab.errors import RefusedError

        chosen = os.environ.get("BACKPROP_LAB_GEMM", "auto")
        if chosen not in GEMM_CHOICES:
            raise RefusedError(f"BACKPROP_LAB_GEMM={chosen} is not valid: choose {', '.join(GEMM_CHOICES)}")
        available = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        if chosen == "auto":
            chosen = "onednn" if available and _amd_with_avx512() else "mkl"
        _backend = chosen if available else "mkl"
    return _backend


_backend: str | None = None


def _amd_with_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            amd = "AuthenticAMD" in f.read(4096)
    except OSError:  # (not Linux: no /proc)
        return False
    return amd and torch.backends.cpu.get_cpu_capability() == "AVX512"


def use_onednn(x: torch.Tensor, macs: int) -> bool:
    """Whether a product of x's members, `macs` multiply-adds each, goes to oneDNN."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and macs >= ONEDNN_MACS and gemm_backend() == "onednn"


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Each member's x[k] @ weight[k]^T (+ bias[k]) through oneDNN's fp32 matmul (torch's
    mkldnn._linear_pointwise, the op Inductor uses for nn.Linear on the CPU): x [K, n, m], weight
    [K, p, m] (a transposed view is fine) -> [K, n, p]. The same products as bmm to float rounding."""
    linear = torch.ops.mkldnn._linear_pointwise
    x, weight = x.contiguous(), _packed(weight)
    return torch.stack(
        [linear(x[k], weight[k], None if bias is None else bias[k], "none", [], "") for k in range(len(x))]
    )


def _packed(t: torch.Tensor) -> torch.Tensor:
    """t [K, a, b] with each member's matrix packed, row- or column-major (a transposed view), as
    oneDNN's fast kernels take it; anything else is copied. A view across members (batch norm leaves
    its outputs so) sends oneDNN to a reference kernel, about a thousand times slower."""
    rows, cols = t.shape[1:]
    stride = t.stride()[1:]
    return t if stride in ((cols, 1), (1, rows)) else t.contiguous()


SPLIT_MACS = 2**21  # per member; the crossover measured was 1-2 M multiply-adds (BENCHMARKS.md)


def member_matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Each member's a[k] @ b[k] (+ bias[k]): [K, n, m] @ [K, m, p] -> [K, n, p].

    On the CPU, bmm hands each thread whole members, each a one-thread gemm, so 5 members on 2 threads
    take as long as 6. Here the members past the last full round of threads each run as one gemm over
    all threads, which keeps every thread busy (BENCHMARKS.md, member_matmul). The
    forward still gives each member what its own nn.Linear gives (addmm); a gemm over more threads may
    sum in another order, so backward products can differ from bmm's by float rounding. Below SPLIT_MACS
    multiply-adds per member the extra calls cost what the balance gains."""
    count, threads = len(a), torch.get_num_threads()
    balance = a.device.type == "cpu" and count > threads and a.shape[1] * a.shape[2] * b.shape[2] >= SPLIT_MACS
    whole = count - count % threads if balance else count
    if whole == count:
        return torch.bmm(a, b) if bias is None else torch.baddbmm(bias, a, b)
    out = a.new_empty(count, a.shape[1], b.shape[2])
    if bias is None:
        torch.bmm(a[:whole], b[:whole], out=out[:whole])
    else:
        torch.baddbmm(bias[:whole], a[:whole], b[:whole], out=out[:whole])
    for k in range(whole, count):
        if bias is None:
            torch.mm(a[k], b[k], out=out[k])
        else:
            torch.addmm(bias[k], a[k], b[k], out=out[k])
    return out


def _stackable_norm(layer: nn.Module) -> bool:
    """A batch norm that _batch_norm computes: affine, with running statistics and a fixed momentum."""
    return (
        isinstance(layer, nn.BatchNorm1d) and layer.affine and layer.track_running_stats and layer.momentum is not None
    )


def _batch_norm(
    h: torch.Tensor,
    norm: nn.BatchNorm1d,
    path: str,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Each member's nn.BatchNorm1d over h [K, B, width]: the members' features side by side as the
    K * width channels of one F.batch_norm, which normalizes each channel over the batch and updates its
    running statistics (views of the stacked buffers), as under vmap."""
    count, batch, width = h.shape
    assert norm.momentum is not None  # (_stackable_norm)
    if norm.training:
        buffers[f"{path}.num_batches_tracked"].add_(1)
    out = torch.nn.functional.batch_norm(
        h.transpose(0, 1).reshape(batch, count * width),
        buffers[f"{path}.running_mean"].view(-1),
        buffers[f"{path}.running_var"].view(-1),
        params[f"{path}.weight"].view(-1),
        params[f"{path}.bias"].view(-1),
        norm.training,
        norm.momentum,
        norm.eps,
    )
    return out.reshape(batch, count, width).transpose(0, 1)


def _dropout_rates(models: Sequence[nn.Module]) -> dict[str, list[float]]:
    """{module path: each member's rate} for the models' dropout layers."""
    layers = [{n: m.p for n, m in model.named_modules() if isinstance(m, nn.Dropout)} for model in models]
    return {n: [float(each[n]) for each in layers] for n in layers[0]}


@torch.no_grad()
def clip_grad_norm_per_member_(params: Sequence[torch.Tensor], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ for each member on its own (the first dimension is the member)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.linalg.vector_norm(torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in grads]), dim=0)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # torch's formula, per member
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))


def why_not_batched(cfg: Any) -> str | None:
    """Why runs of `cfg` that differ only in their seed cannot train as one Members model, or None."""
    if cfg.pretrain.name != "none" and cfg.pretrain.finetune == "gradual":
        return "pretrain.finetune=gradual unfreezes each model's blocks as it goes"
    if cfg.model.get("_target_") is not None:
        return f"model {cfg.model['_target_']} is the user's own: not known to stack with torch.func"
    if cfg.regularizer.get("_target_") is not None:
        return f"regularizer {cfg.regularizer['_target_']} takes the model, which is one model per run"
    return None


# What members of one group may each hold their own of, besides the seed: the whole optimizer and
# schedule (each member steps with its own where they differ: member_optimizers), l1 and l2 (each
# member's penalty or decoupled decay with its own coefficient), the dropout rate (MemberDropout; a
# rate of 0 builds no dropout layers, so members with and without dropout form separate groups), and
# the init scheme (each member is built, under its own seed, by its own run's config).
BATCHED_KEYS = ("optimizer", "scheduler", "regularizer.l1", "regularizer.l2", "regularizer.dropout", "model.init")


def batched_keys(cfg: Any) -> tuple[str, ...]:
    """The keys in which jobs of `cfg` may differ and still train as one Members model, besides the seed."""
    return () if why_not_batched(cfg) is not None else BATCHED_KEYS


def differing_values(cfgs: Sequence[Any]) -> dict[str, list[Any]]:
    """{key: each member's value} for the batched values in which these members' configs differ."""
    from omegaconf import OmegaConf

    def leaves(cfg: Any) -> dict[str, Any]:
        values = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(values, dict)
        flat = {f"{group}.{k}": v for group in ("optimizer", "scheduler") for k, v in values[group].items()}
        flat.update({f"regularizer.{k}": values["regularizer"][k] for k in ("l1", "l2", "dropout")})
        return {**flat, "model.init": values["model"].get("init")}

    each = [leaves(c) for c in cfgs]
    keys = dict.fromkeys(k for e in each for k in e)  # (in order)
    return {k: [e.get(k) for e in each] for k in keys if len({repr(e.get(k)) for e in each}) > 1}


def lr_batchable(cfg: Any) -> bool:
    """May members of `cfg` that differ only in optimizer.lr share one optimizer over the stacked tensors?
    Yes when the optimizer steps linearly in the rate and the schedule scales every member's rate by the
    same factor (a cosine's min_lr must be 0): the engine then steps with rate factor f(t) and scales
    each member's update by its own rate, which is what each member's own run computes. Otherwise each
    member steps with an optimizer of its own (member_optimizers.needs_own_optimizers)."""
    from backprop_lab.components.optimizers import LR_PROPORTIONAL_SCHEDULES, optim_info

    opt, sched = cfg.optimizer, cfg.scheduler
    info = optim_info(opt)
    if info is None or not info.lr_linear or opt.get("lr_decay", 0):  # (Adagrad's lr_decay: not linear)
        return False
    if sched.get("_target_") is not None or sched.get("name") not in LR_PROPORTIONAL_SCHEDULES:
        return False
    return not sched.get("min_lr", 0)
