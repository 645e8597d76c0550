"""The fast paths of a sweep give the numbers of the slow ones: the vectorized launcher (seeds as one
batched model) and the joblib launcher (parallel processes) against Hydra's basic launcher."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, Quiet, Rows, make_cfg, run_cfg, sweep_here, sweep_printed

import backprop_lab.vectorized.members as members_module
from backprop_lab.components.optimizers import build_optimizer
from backprop_lab.components.regularizers import Regularization
from backprop_lab.data.datasets import load_arrays
from backprop_lab.engine.loop import StageSettings, fit
from backprop_lab.errors import RefusedError
from backprop_lab.groups import GROUPS
from backprop_lab.lab.compare import compare, find_runs
from backprop_lab.run.pretrain import plan
from backprop_lab.run.training import Job, run_members
from backprop_lab.vectorized.members import (
    SPLIT_MACS,
    MemberLinear,
    Members,
    clip_grad_norm_per_member_,
    member_matmul,
    stacked_dropout,
    why_not_batched,
)

CLI = [sys.executable, "-m", "backprop_lab", "train"]


def sweep(tmp_path: Path, name: str, *args: str) -> tuple[Path, str]:
    folder = tmp_path / name
    done = subprocess.run(
        [*CLI, "-m", *args, *FAST, f"hydra.sweep.dir={folder}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, done.stdout


def sweep_logged(capfd: pytest.CaptureFixture[str], folder: Path, *args: str) -> str:
    """What `sweep` runs, in this process: what it printed."""
    status, printed = sweep_printed(capfd, folder, *args, *FAST)
    assert status == 0, printed[-3000:]
    return printed


def members_of(folder: Path, job: str) -> int:
    """How many members the batched model that trained this job had (1: it ran on its own)."""
    return json.loads((folder / job / "summary.json").read_text()).get("vectorized", {}).get("members", 1)


def separate_runs(folder: Path, fixed: list[str], *axes: list[str]) -> Path:
    """Each job of the sweep `fixed` x `axes` (one list of overrides per swept key, in Hydra's job order)
    as its own run in this process, into folder/N: the reference the batched members are held to."""
    for i, job in enumerate(itertools.product(*axes)):
        run_cfg(folder / str(i), *FAST, *fixed, *job)
    return folder


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def assert_same_rows(a: list[dict], b: list[dict], rtol: float) -> None:
    assert [(r["split"], r["step"]) for r in a] == [(r["split"], r["step"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert set(ra) == set(rb)
        for key, va in ra.items():
            if isinstance(va, float) and key not in ("elapsed_s", "target/seconds"):
                assert math.isclose(va, rb[key], rel_tol=rtol, abs_tol=1e-6), (key, ra["step"], va, rb[key])


def test_vectorized_members_match_separate_runs(tmp_path):
    """Each member's metrics equal its own run's under the basic launcher, from the first step on."""
    vec, out = sweep(tmp_path, "vec", "hydra/launcher=vectorized", "seed=0,1,2")
    basic = separate_runs(tmp_path / "basic", [], ["seed=0", "seed=1", "seed=2"])  # what the basic launcher runs
    assert "one batched model: #0 #1 #2" in out
    for job in ("0", "1", "2"):
        a, b = rows(vec / job), rows(basic / job)
        assert abs(a[0]["loss"] - b[0]["loss"]) < 1e-6  # the first step: same init, same batch
        assert_same_rows(a, b, rtol=1e-4)
        summary = json.loads((vec / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["vectorized"]["members"] == 3
        assert (vec / job / ".hydra" / "config.yaml").is_file() and (vec / job / "weights" / "best.pt").is_file()
        state = torch.load(vec / job / "weights" / "best.pt", weights_only=True)
        assert set(state) == set(torch.load(basic / job / "weights" / "best.pt", weights_only=True))
    pooled = compare(find_runs([vec]), ["test/acc"])[1]  # the seeds pooled into one setting
    assert len(pooled) == 1 and pooled[0].stats["test/acc"].n == 3 and pooled[0].statuses == {"completed": 3}
    alone = [json.loads((basic / job / "summary.json").read_text())["metrics"]["test/acc"] for job in "012"]
    assert math.isclose(pooled[0].stats["test/acc"].mean, sum(alone) / 3, rel_tol=1e-4)


def test_a_learning_rate_grid_trains_as_one_batched_model_with_each_runs_numbers(tmp_path, capfd):
    """optimizer.lr x seed, under a warmup-cosine schedule and decoupled weight decay: one group of 4
    whose members end where separate runs with their values end."""
    grid = ["optimizer.lr=0.003,0.02", "seed=0,1", "scheduler=warmup_cosine", "scheduler.warmup_steps=2",
            "scheduler.min_lr=0", "regularizer.l2=0.01", "regularizer.l2_mode=decoupled"]  # fmt: skip
    vec = tmp_path / "vec"
    out = sweep_logged(capfd, vec, "hydra/launcher=vectorized", *grid)
    rates = ["optimizer.lr=0.003", "optimizer.lr=0.02"]
    basic = separate_runs(tmp_path / "basic", grid[2:], rates, ["seed=0", "seed=1"])
    assert "one batched model: #0 #1 #2 #3" in out and "optimizer.lr=[0.003, 0.003, 0.02, 0.02]" in out
    for job in ("0", "1", "2", "3"):
        assert_same_rows(rows(vec / job), rows(basic / job), rtol=1e-4)
        summary = json.loads((vec / job / "summary.json").read_text())
        assert summary["vectorized"]["differing"] == {"optimizer.lr": [0.003, 0.003, 0.02, 0.02]}
    lrs = [r["lr"] for r in rows(vec / "2") if r["split"] == "train"]
    assert max(lrs) == pytest.approx(0.02, rel=1e-6)  # its own rate, as its own run logs it
    floor = sweep_here(tmp_path / "cosine_floor", *FAST, "hydra/launcher=vectorized", "optimizer.lr=0.003,0.02",
                       "scheduler=cosine", "scheduler.min_lr=0.001")  # fmt: skip
    # a floor not proportional to the rate: still one batched model, each member with its own optimizer
    assert members_of(floor, "0") == members_of(floor, "1") == 2


def test_penalty_grids_train_as_one_batched_model_with_each_runs_numbers(tmp_path, capfd):
    """regularizer.l1 x regularizer.l2 (penalty) x seed, and l2 in decoupled mode: one group each, every
    member with its own coefficients, ending where its own run ends."""
    grid = ["regularizer.l1=0,0.003", "regularizer.l2=0,0.05", "seed=0"]
    vec = tmp_path / "vec"
    out = sweep_logged(capfd, vec, "hydra/launcher=vectorized", *grid)
    l1s, l2s = ["regularizer.l1=0", "regularizer.l1=0.003"], ["regularizer.l2=0", "regularizer.l2=0.05"]
    basic = separate_runs(tmp_path / "basic", ["seed=0"], l1s, l2s)
    assert "one batched model: #0 #1 #2 #3" in out and "regularizer.l1=[0, 0, 0.003, 0.003]" in out
    for job in ("0", "1", "2", "3"):
        assert_same_rows(rows(vec / job), rows(basic / job), rtol=1e-4)
    summaries = [json.loads((vec / job / "summary.json").read_text()) for job in "03"]
    assert [s["regularizers_active"] for s in summaries] == [["none"], ["elastic_net"]]
    grid = ["regularizer.l2=0.01,0.2", "regularizer.l2_mode=decoupled", "optimizer=sgd"]
    vec = sweep_here(tmp_path / "vec_decay", *FAST, "hydra/launcher=vectorized", *grid)
    basic = separate_runs(tmp_path / "basic_decay", grid[1:], ["regularizer.l2=0.01", "regularizer.l2=0.2"])
    for job in ("0", "1"):
        assert members_of(vec, job) == 2
        assert_same_rows(rows(vec / job), rows(basic / job), rtol=1e-4)


def test_init_schemes_train_as_one_batched_model_with_each_runs_numbers(tmp_path, capfd):
    """model.init x seed (the activations study's grid): one group, each member built with its own init,
    ending where its own run ends."""
    grid = ["act=tanh", "model.init=null,torch", "seed=0,1"]
    vec = tmp_path / "vec"
    out = sweep_logged(capfd, vec, "hydra/launcher=vectorized", *grid)
    basic = separate_runs(tmp_path / "basic", grid[:1], ["model.init=null", "model.init=torch"], ["seed=0", "seed=1"])
    assert "one batched model: #0 #1 #2 #3" in out and "model.init=[None, None, 'torch', 'torch']" in out
    for job in ("0", "1", "2", "3"):
        assert_same_rows(rows(vec / job), rows(basic / job), rtol=1e-4)
    first_steps = [rows(vec / job)[0]["loss"] for job in "0123"]
    assert len(set(first_steps)) == 4  # four inits


def test_a_member_checkpoint_holds_the_rates_of_its_own_run():
    """A member trained at rate factor f(t) is saved with its own rates: the optimizer's and the
    schedule's state equal those of an optimizer and schedule built at its rate."""
    from backprop_lab.components.optimizers import build_scheduler
    from backprop_lab.vectorized.member_optimizers import member_optimizer_state, scaled_rates

    states = []
    for lr in (1.0, 0.02):
        param = torch.nn.Parameter(torch.ones(2, 3))  # two members of 3 weights
        opt = torch.optim.Adam([param], lr=lr)
        sched = build_scheduler(opt, make_cfg("scheduler=warmup_cosine", "scheduler.min_lr=0").scheduler, 10)
        for _ in range(3):
            param.grad = torch.ones_like(param)
            opt.step(), sched.step()
        states.append((opt.state_dict(), sched.state_dict()))
    (opt_1, sched_1), (opt_k, sched_k) = states
    member = member_optimizer_state(opt_1, 1, rate=0.02)
    for key in ("lr", "initial_lr"):
        assert member["param_groups"][0][key] == pytest.approx(opt_k["param_groups"][0][key], rel=1e-12)
    scaled = scaled_rates(sched_1, 0.02)
    assert scaled["base_lrs"] == pytest.approx(sched_k["base_lrs"]) and scaled["_last_lr"] == pytest.approx(
        sched_k["_last_lr"]
    )


def test_vectorized_groups_by_setting_and_says_what_runs_one_by_one(tmp_path, capfd):
    # jobs in Hydra's order: relu x dropout 0, 0.2, 0.5 (#0-#2), then tanh (#3-#5)
    folder = tmp_path / "groups"
    out = sweep_logged(capfd, folder, "hydra/launcher=vectorized", "act=relu,tanh", "regularizer=dropout",
                       "regularizer.dropout=0,0.2,0.5")  # fmt: skip
    assert out.count("one batched model: #") == 2  # relu and tanh, each with its two dropout rates
    assert "one batched model: #1 #2 :" in out and "one batched model: #4 #5 :" in out
    assert "regularizer.dropout=[0.2, 0.5]" in out
    assert out.count("one by one (no other job differs from it only in seed, optimizer") == 2  # no dropout layers
    assert len(list(folder.glob("*/summary.json"))) == 6
    assert why_not_batched(make_cfg("pretrain=autoencoder", "pretrain.finetune=gradual")).startswith(
        "pretrain.finetune=gradual unfreezes"
    )
    assert why_not_batched(make_cfg("pretrain=autoencoder")) is None  # (each pretrains alone, then all fine-tune)


def test_joblib_sweep_matches_basic_and_shares_out_the_cores(tmp_path):
    par, _ = sweep(tmp_path, "joblib", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1")
    basic = separate_runs(tmp_path / "basic", [], ["seed=0", "seed=1"])
    for job in ("0", "1"):
        assert_same_rows(rows(par / job), rows(basic / job), rtol=1e-4)
        summary = json.loads((par / job / "summary.json").read_text())
        assert summary["torch_threads"] == max(1, (os.cpu_count() or 1) // 2)


def _jobs(tmp_path: Path, *overrides: str, seeds=(0, 1)) -> list[Job]:
    jobs = []
    for s in seeds:
        cfg = make_cfg(*FAST, *overrides, f"seed={s}")
        jobs.append(Job(cfg, tmp_path / f"member{s}", {g: str(cfg[g].get("name", "")) for g in GROUPS if g in cfg}, []))
    return jobs


def test_each_members_own_optimizer_steps_as_a_separate_one():
    """member_optimizers against torch on separate models: the same gradients, the same updates and the
    same optimizer states. Members 0-1 (momentum 0.5 with weight decay, two rates) step as one family at
    rate 1 with their updates scaled, member 2 (momentum 0.9) alone, members 3-4 (Adam with betas of its
    own, one rate) as a family at that rate."""
    from backprop_lab.vectorized.member_optimizers import MemberOptimizers, families, needs_own_optimizers

    cfgs = [
        make_cfg(*FAST, "optimizer=momentum", "optimizer.momentum=0.5", "optimizer.weight_decay=0.01"),
        make_cfg(
            *FAST, "optimizer=momentum", "optimizer.momentum=0.5", "optimizer.weight_decay=0.01", "optimizer.lr=0.03"
        ),
        make_cfg(*FAST, "optimizer=momentum", "optimizer.momentum=0.9"),
        make_cfg(*FAST, "optimizer=adam", "optimizer.betas=[0.8,0.99]"),
        make_cfg(*FAST, "optimizer=adam", "optimizer.betas=[0.8,0.99]"),
    ]
    optimizers, schedulers = [c.optimizer for c in cfgs], [c.scheduler for c in cfgs]
    assert needs_own_optimizers(optimizers, schedulers)
    assert not needs_own_optimizers([cfgs[0].optimizer] * 2, [cfgs[0].scheduler] * 2)
    assert families(optimizers, schedulers) == [range(0, 2), range(2, 3), range(3, 5)]
    arrays = load_arrays(cfgs[0].data)
    models = []
    for k, cfg in enumerate(cfgs):
        torch.manual_seed(k)
        models.append(plan(cfg, arrays, torch.device("cpu")).model)
    members = Members(models)  # (stacks copies: `models` stay as they were)
    together = MemberOptimizers(members, optimizers, schedulers, decay_all=False)
    alone = [build_optimizer(m, c.optimizer, False) for m, c in zip(models, cfgs, strict=True)]
    for step in range(3):
        torch.manual_seed(100 + step)
        grads = [torch.randn_like(p) for p in members.stacked]
        together.zero_grad()
        for p, g in zip(members.stacked, grads, strict=True):
            p.grad = g.clone()
        together.step()
        for k, (model, opt) in enumerate(zip(models, alone, strict=True)):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g[k].clone()
            opt.step()
    for k, (model, opt) in enumerate(zip(models, alone, strict=True)):
        for name, value in model.state_dict().items():
            torch.testing.assert_close(members.member_state(k)[name], value, rtol=1e-6, atol=1e-7)
        mine, theirs = together.member_state(k), opt.state_dict()
        assert mine["param_groups"] == theirs["param_groups"]
        for i, state in theirs["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(mine["state"][i][key], value, rtol=1e-6, atol=1e-7)


def test_members_with_their_own_optimizers_and_schedules_end_where_their_own_runs_end(tmp_path):
    """One group whose members differ in momentum, betas, weight decay, the optimizer itself (Muon and
    Prodigy are not elementwise; schedule-free AdamW switches its weights for evaluation) and the schedule
    (a plateau reads each member's own score): each ends as its own run;
    so do the last two, a family (one Adam at two rates, under one cosine schedule)."""
    members = [
        ("optimizer=momentum", "optimizer.momentum=0.5", "seed=0"),
        ("optimizer=momentum", "optimizer.weight_decay=0.01", "scheduler=cosine", "seed=1"),
        ("optimizer=adam", "optimizer.betas=[0.8,0.99]", "scheduler=plateau", "scheduler.patience=0", "seed=0"),
        ("optimizer=muon", "seed=0"),
        ("optimizer=prodigy", "seed=1"),  # (its step size is estimated from all of a member's parameters)
        ("optimizer=schedulefree_adamw", "seed=0"),  # (evaluated and kept at its averaged weights)
        ("optimizer=adam", "optimizer.lr=0.01", "scheduler=cosine", "seed=0"),
        ("optimizer=adam", "optimizer.lr=0.003", "scheduler=cosine", "seed=1"),
    ]
    jobs = []
    for k, overrides in enumerate(members):
        cfg = make_cfg(*FAST, *overrides)
        choices = {g: str(cfg[g].get("name", "")) for g in GROUPS if g in cfg}
        jobs.append(Job(cfg, tmp_path / f"member{k}", choices, list(overrides)))
    summaries = run_members(jobs)
    assert summaries[1]["vectorized"]["differing"]["optimizer.weight_decay"] == [0.0, 0.01, *[0.0] * 6]
    for k, overrides in enumerate(members):
        run_cfg(tmp_path / f"alone{k}", *FAST, *overrides)
        assert_same_rows(rows(tmp_path / f"member{k}"), rows(tmp_path / f"alone{k}"), rtol=1e-4)
        together = torch.load(tmp_path / f"member{k}" / "weights" / "last.pt", weights_only=True)
        alone = torch.load(tmp_path / f"alone{k}" / "weights" / "last.pt", weights_only=True)
        for key in alone:
            torch.testing.assert_close(together[key], alone[key], rtol=1e-4, atol=1e-5)


def test_batch_norm_statistics_and_weights_are_each_members_own(tmp_path):
    # SGD: the bias before batch norm has a gradient of ~0 that is float noise, which Adam would
    # normalise into full-size steps, different between any two summation orders
    overrides = ("regularizer=[batchnorm,l2]", "regularizer.l2=0.01", "trainer.grad_clip=0.5", "optimizer=momentum")
    run_members(_jobs(tmp_path, *overrides))
    for s in (0, 1):
        run_cfg(tmp_path / f"alone{s}", *FAST, *overrides, f"seed={s}")
        together = torch.load(tmp_path / f"member{s}" / "weights" / "last.pt", weights_only=True)
        alone = torch.load(tmp_path / f"alone{s}" / "weights" / "last.pt", weights_only=True)
        assert "blocks.0.1.running_mean" in together
        for key in alone:
            torch.testing.assert_close(together[key], alone[key], rtol=1e-4, atol=1e-5)


def test_members_drop_out_at_their_own_rates():
    """Dropout layers whose rate differs between members keep each element with probability 1 - rate
    and scale it by 1 / (1 - rate); the rates are not part of a member's weights."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 8)
    models = [torch.nn.Sequential(copy.deepcopy(linear), torch.nn.Dropout(p)) for p in (0.2, 0.5)]
    members = Members(models)
    x = torch.randn(4000, 8)
    clean = linear(x).detach()
    out = members.train()(x, shared=True).detach()
    for k, p in enumerate((0.2, 0.5)):
        kept = out[k] != 0
        assert abs(1 - kept.float().mean().item() - p) < 0.01  # 32000 draws: 4 standard deviations
        torch.testing.assert_close(out[k][kept], clean[kept] / (1 - p))
    torch.testing.assert_close(members.eval()(x, shared=True)[1], clean)
    assert set(members.member_state(1)) == set(models[1].state_dict())


def test_stacked_dropout_keeps_each_element_at_its_members_rate_and_is_unbiased():
    """The stacked MLP's dropout (15-bit masks): member k keeps an element with probability
    q = 1 - round(rate * 2^15) / 2^15 and scales it by 1 / q; masks are independent between members."""
    torch.manual_seed(0)
    rates = (0.0, 0.2, 0.5, 0.5)
    x = torch.randn(len(rates), 200, 200)  # 40000 draws a member
    out = stacked_dropout(x, torch.tensor(rates).view(-1, 1, 1), training=True)
    for k, p in enumerate(rates):
        q = 1 - round(p * 2**15) / 2**15
        kept = out[k] != 0
        assert abs(kept.float().mean().item() - q) < 4 * math.sqrt(q * (1 - q) / 40000) + 1e-9
        torch.testing.assert_close(out[k][kept], x[k][kept] / q)
    assert 0.45 < ((out[2] != 0) == (out[3] != 0)).float().mean().item() < 0.55  # same rate, own masks
    assert stacked_dropout(x, torch.tensor(rates).view(-1, 1, 1), training=False) is x


def test_dropout_masks_differ_between_members():
    cfg = make_cfg(*FAST, "regularizer=dropout", "regularizer.dropout=0.5")
    torch.manual_seed(0)
    model = plan(cfg, load_arrays(cfg.data), torch.device("cpu")).model
    twins = Members([model, model])  # the same weights twice
    x = torch.randn(2, 16, *model.input_view)
    same = torch.stack([x[0], x[0]])
    out = twins.train()(same)
    assert not torch.allclose(out[0], out[1])  # different masks
    out = twins.eval()(same)
    torch.testing.assert_close(out[0], out[1])


def test_a_diverging_member_stops_alone(tmp_path):
    cfg = make_cfg(*FAST)
    arrays = load_arrays(cfg.data)
    models = []
    for s in (0, 1):
        torch.manual_seed(s)
        models.append(plan(cfg, arrays, torch.device("cpu")).model)
    split = plan(cfg, arrays, torch.device("cpu")).target
    alone = run_cfg(tmp_path / "alone", *FAST, "seed=0")
    members = Members(models)
    with torch.no_grad():
        members.stacked[0][1].fill_(float("inf"))  # member 1's first weight matrix
    logs = [Rows(), Rows()]
    settings = StageSettings(
        stage="train",
        optimizer=build_optimizer(members, cfg.optimizer, False),
        scheduler=None,
        regularization=Regularization(members, cfg.regularizer),
        trainer=cfg.trainer,
        max_steps=cfg.trainer.max_steps,
        logs=logs,
        progress=Quiet(),
        act_name="relu",
    )
    results = fit(members, split, [0, 1], settings)
    assert results[1].status == "diverged" and results[1].steps == 1
    assert [r["split"] for r in logs[1].rows] == ["train"]
    assert results[0].status == "completed" and results[0].steps == cfg.trainer.max_steps
    assert math.isclose(results[0].test["acc"], alone["metrics"]["test/acc"], rel_tol=1e-5)


def test_per_member_clipping_is_torchs_clipping_of_each_member():
    grads = [torch.randn(3, 4, 5), torch.randn(3, 5)]
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    clip_grad_norm_per_member_(params, 1.0)
    for k in range(3):
        alone = [g[k].clone().requires_grad_() for g in grads]
        for a, g in zip(alone, grads, strict=True):
            a.grad = g[k].clone()
        torch.nn.utils.clip_grad_norm_(alone, 1.0)
        for a, p in zip(alone, params, strict=True):
            torch.testing.assert_close(p.grad[k], a.grad)


@pytest.fixture
def two_threads():
    """torch at 2 threads, this machine's cores. At more, torch's gemm for one small nn.Linear may split
    its sums where a batched one does not: the same to float rounding, not bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "overrides",
    [
        ("regularizer=dropout", "regularizer.dropout=0.3"),
        ("act=tanh", "model.residual=true", "model.depth=3"),
        ("model=cnn1d",),
        ("act=prelu",),
        ("regularizer=batchnorm",),
    ],
)
def test_an_mlp_runs_without_vmap_and_computes_what_each_members_own_model_computes(
    overrides, two_threads, monkeypatch
):
    """StackedMLP (linear layers as batched matmuls, no vmap): each member's outputs are its own model's bit
    for bit (at 2 threads), its gradients its own model's to float rounding; with dropout, its own model's
    under the masks the stacked dropout drew; batch norm moves its running statistics as under vmap, for
    members' own batches and a shared one; other nets stay with vmap."""
    masks = []

    def recorded(x, rate, training):  # the stacked dropout, its scaled masks kept for the check below
        keep = stacked_dropout(torch.ones_like(x), rate, training)
        masks.append(keep)
        return x * keep

    monkeypatch.setattr("backprop_lab.vectorized.members.stacked_dropout", recorded)
    cfg = make_cfg(*FAST, *overrides)
    arrays = load_arrays(cfg.data)
    models = []
    for s in range(3):
        torch.manual_seed(s)
        models.append(plan(cfg, arrays, torch.device("cpu")).model)
    if "regularizer=dropout" in overrides:  # members with rates of their own (MemberDropout)
        for model, rate in zip(models, (0.2, 0.5, 0.5), strict=True):
            model.blocks[0][2].p = rate
    members = Members(models)
    assert (members._mlp is not None) == (overrides[0] not in ("model=cnn1d", "act=prelu"))
    x = torch.randn(3, 16, *arrays.x.shape[1:])
    stacked_mlp = members._mlp
    for shared, training in itertools.product((False, True), (True, False)):
        members.train(training)
        outputs, grads = [], []
        statistics = [b.clone() for b in members.buffers()]  # (batch norm's, which a training forward moves)
        moved = []
        masks.clear()
        for path in (stacked_mlp, None):  # (None: vmap)
            members._mlp = path
            for b, start in zip(members.buffers(), statistics, strict=True):
                b.copy_(start)
            torch.manual_seed(5)
            out = members(x[0] if shared else x, shared=shared)
            outputs.append(out)
            grads.append(torch.autograd.grad(out.square().sum(), list(members.stacked)))
            moved.append([b.clone() for b in members.buffers()])
        for a, b in zip(*moved, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        members._mlp = stacked_mlp
        assert outputs[0].shape == (3, 16, 4)  # (synthetic data: 4 classes)
        dropping = training and "regularizer=dropout" in overrides
        if not dropping:  # (vmap draws its masks otherwise)
            torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
            for a, b in zip(*grads, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        if "regularizer=batchnorm" in overrides:
            continue  # (running statistics that every training forward above moved)
        for k, model in enumerate(models):  # each member against its own model
            model.train(training)
            hooks = []
            if dropping:  # its dropout layers apply member k's masks from the stacked forward
                layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
                assert len(layers) == len(masks) > 0
                for layer, mask in zip(layers, masks, strict=True):
                    layer.eval()
                    hooks.append(layer.register_forward_hook(lambda m, i, o, mask=mask[k]: o * mask))
            own = model(x[0] if shared else x[k])
            for hook in hooks:
                hook.remove()
            own_grads = torch.autograd.grad(own.square().sum(), list(model.parameters()))
            if members._mlp is not None:
                assert torch.equal(outputs[0][k], own)
            for stacked, mine in zip(grads[0], own_grads, strict=True):
                torch.testing.assert_close(stacked[k], mine, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("count", "width"), [(3, 256), (5, 256), (5, 40)])
def test_member_matmul_gives_each_member_its_own_linear_layer_at_any_thread_count(count, width, two_threads):
    """Members past the last full round of threads run as one gemm each (products of SPLIT_MACS or more
    per member; width 40 stays below). The forward is each member's nn.Linear bit for bit at 1 and 2
    threads and to float rounding at 4 (see two_threads); both backward products are each member's own
    to float rounding."""
    torch.manual_seed(0)
    h, weight, bias = torch.randn(count, 64, width), torch.randn(count, width, width), torch.randn(count, width)
    grad = torch.randn(count, 64, width)
    assert (64 * width * width >= SPLIT_MACS) == (width == 256)
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        out = member_matmul(h, weight.transpose(1, 2), bias.unsqueeze(1))
        grad_h, grad_weight = member_matmul(grad, weight), member_matmul(grad.transpose(1, 2), h)
        for k in range(count):
            own = torch.nn.functional.linear(h[k], weight[k], bias[k])
            if threads <= 2:
                assert torch.equal(out[k], own)
            else:
                torch.testing.assert_close(out[k], own)
            torch.testing.assert_close(grad_h[k], grad[k] @ weight[k])
            torch.testing.assert_close(grad_weight[k], grad[k].T @ h[k])


@pytest.mark.parametrize("backend", ["mkl", "onednn"])
def test_member_linear_on_either_gemm_library_gives_each_member_its_own_layer(backend, monkeypatch):
    """MemberLinear's three products through oneDNN (ONEDNN_MACS or more each) or MKL, against each
    member's own nn.Linear and its autograd: the same to float rounding; bit for bit on MKL at 2 threads."""
    if backend == "onednn" and not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        pytest.skip("this torch build has no oneDNN matmul")
    monkeypatch.setattr(members_module, "_backend", backend)
    torch.manual_seed(0)
    h = torch.randn(3, 64, 256, requires_grad=True)
    weight, bias = torch.randn(3, 256, 256, requires_grad=True), torch.randn(3, 256, requires_grad=True)
    assert members_module.use_onednn(h, 64 * 256 * 256) == (backend == "onednn")  # = ONEDNN_MACS
    grad = torch.randn(3, 64, 256)
    across = h.detach().transpose(0, 1).contiguous().transpose(0, 1)  # h's values, laid out as batch norm leaves
    torch.testing.assert_close(MemberLinear.apply(across, weight, bias), MemberLinear.apply(h, weight, bias))
    out = MemberLinear.apply(h, weight, bias)
    grads = torch.autograd.grad(out, (h, weight, bias), grad)
    for k in range(3):
        hk, wk, bk = (t[k].detach().clone().requires_grad_(True) for t in (h, weight, bias))
        own = torch.nn.functional.linear(hk, wk, bk)
        own_grads = torch.autograd.grad(own, (hk, wk, bk), grad[k])
        if backend == "mkl" and torch.get_num_threads() <= 2:
            assert torch.equal(out[k], own)
        torch.testing.assert_close(out[k], own, rtol=1e-5, atol=1e-4)  # (sums of 256 products ~16 in size)
        for mine, theirs in zip(grads, own_grads, strict=True):
            torch.testing.assert_close(mine[k], theirs, rtol=1e-5, atol=1e-4)


def test_members_whose_products_run_on_onednn_end_where_their_own_runs_end(tmp_path, capfd, monkeypatch):
    """A 256-wide MLP at batch 64: its middle layer's forward and input gradient go to oneDNN (64 x 256 x
    256 = ONEDNN_MACS), the separate runs' nn.Linear to MKL; each member's metrics equal its own run's."""
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        pytest.skip("this torch build has no oneDNN matmul")
    monkeypatch.setattr(members_module, "_backend", "onednn")
    wide = ["model.width=256", "trainer.batch_size=64"]
    out = sweep_logged(capfd, tmp_path / "vec", "hydra/launcher=vectorized", "seed=0,1", *wide)
    assert "one batched model: #0 #1" in out
    basic = separate_runs(tmp_path / "basic", wide, ["seed=0", "seed=1"])
    for job in ("0", "1"):
        assert json.loads((tmp_path / "vec" / job / "summary.json").read_text())["member_gemm"] == "onednn"
        assert_same_rows(rows(tmp_path / "vec" / job), rows(basic / job), rtol=1e-4)


def test_the_gemm_library_is_the_users_to_choose(monkeypatch):
    monkeypatch.setattr(members_module, "_backend", None)
    monkeypatch.setenv("BACKPROP_LAB_GEMM", "mkl")
    assert members_module.gemm_backend() == "mkl"
    monkeypatch.setattr(members_module, "_backend", None)
    monkeypatch.setenv("BACKPROP_LAB_GEMM", "openblas")
    with pytest.raises(RefusedError, match="BACKPROP_LAB_GEMM=openblas is not valid: choose auto, mkl, onednn"):
        members_module.gemm_backend()


def test_a_vectorized_sweep_composes_each_jobs_config_once(tmp_path, monkeypatch):
    """Hydra's sweeper composes every job to check it, then the launcher asks again: the vectorized
    launcher takes the checked config (a compose costs 0.2 s), and each job still gets its own."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from backprop_lab.cli import train_main

    composed: list[list[str]] = []
    compose = ConfigLoaderImpl.load_sweep_config

    def counted(self, master_config, sweep_overrides):
        composed.append(list(sweep_overrides))
        return compose(self, master_config, sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counted)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=vectorized", "seed=0,1,2", *FAST, f"hydra.sweep.dir={folder}"]
    assert train_main(args) == 0
    assert sorted(o for c in composed for o in c if o.startswith("seed=")) == ["seed=0", "seed=1", "seed=2"]
    for job in range(3):
        summary = json.loads((folder / str(job) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == job
        hydra_cfg = (folder / str(job) / ".hydra" / "hydra.yaml").read_text()
        assert f"num: {job}\n" in hydra_cfg and f"- seed={job}\n" in hydra_cfg


@pytest.mark.parametrize("strategy", ["supervised", "autoencoder"])
def test_fine_tunes_train_as_one_batched_model_after_each_members_own_pretraining(tmp_path, capfd, strategy):
    """pretrain.finetune=freeze,full x seed: each job pretrains alone (from where its own run would start),
    then each fine-tune mode trains as one batched model whose members end where their own runs end;
    frozen blocks stay as pretraining left them."""
    grid = [f"pretrain={strategy}", "data.source_classes=[0,1]", "data.target_classes=[2,3]", "data.n_train=40",
            *(["pretrain.noise=0.1"] if strategy == "autoencoder" else []), "pretrain.finetune=freeze,full",
            "seed=0,1"]  # fmt: skip
    vec = tmp_path / "vec"
    out = sweep_logged(capfd, vec, "hydra/launcher=vectorized", *grid)
    fixed = [*grid[:-2], "pretrain.reuse=false"]  # (each pretrains itself, not from what this process kept)
    basic = separate_runs(tmp_path / "basic", fixed, ["pretrain.finetune=freeze", "pretrain.finetune=full"],
                          ["seed=0", "seed=1"])  # fmt: skip
    assert out.count("one batched model: #") == 2  # freeze, full
    for job in ("0", "1", "2", "3"):
        assert_same_rows(rows(vec / job), rows(basic / job), rtol=1e-4)
        summary = json.loads((vec / job / "summary.json").read_text())
        assert [s["stage"] for s in summary["stages"]] == ["pretrain", "finetune"] and members_of(vec, job) == 2
    for job in ("0", "1"):  # frozen: the fine-tune changed the head only
        pre, last = (torch.load(vec / job / "weights" / w, weights_only=True) for w in ("pretrain.pt", "last.pt"))
        assert all(torch.equal(last[k], v) for k, v in pre.items() if k.startswith("blocks."))
