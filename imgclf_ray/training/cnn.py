"""CNN training: a torchvision architecture from scratch, or a torchvision / timm network
fine-tuned from an artifact; on Ray Train workers, or (``cnn.workers: 0``, small data) in this
process, by the same loop.

The images arrive conditioned exactly as at inference (the LoadStage of the pipeline); training adds
augmentation (flips, rotation, random resized crop, brightness / contrast, blur: ``training.augment``,
a whole batch at once on the worker's device), AdamW
with cosine decay (fp16 mixed precision on a GPU), validation loss for early stopping, and a checkpoint (a plain state_dict, saved
and read back with ``weights_only=True``) per improvement. The best one becomes a safetensors
artifact.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

import numpy as np

from imgclf_ray.spec import CnnSpec

CHECKPOINT_FILE = "state_dict.pt"
HISTORY_FILE = "history.json"  # the epochs up to this checkpoint


def fit_loop(config: dict[str, Any], data: tuple, device, rank: int, world: int, wrap, report) -> None:
    """The training loop: ``wrap(net)`` prepares the network (DDP on Ray Train), ``report(metrics,
    state)`` records each epoch (``state``: the network's state_dict when the score improved)."""
    import torch

    from imgclf_ray.models.torch_classifier import build_network, normalise

    x_tr, y_tr, x_va, y_va = data
    torch.manual_seed(config["seed"])
    net = build_network(config["architecture"], config["outputs"], config["library"], config["network_config"])
    if config["init_state"] is not None:
        own = net.state_dict()
        fitting = {k: v for k, v in config["init_state"].items() if k in own and own[k].shape == v.shape}
        net.load_state_dict(fitting, strict=False)  # a head of another size stays freshly initialised
    net = wrap(net)
    multilabel = config["multilabel"]
    loss_fn = torch.nn.BCEWithLogitsLoss() if multilabel else torch.nn.CrossEntropyLoss()
    mean = std = None  # None: per-image standardisation
    if config["mean"] is not None:
        mean = torch.tensor(config["mean"], device=device).view(1, -1, 1, 1)
        std = torch.tensor(config["std"], device=device).view(1, -1, 1, 1)
    from imgclf_ray.training.augment import BatchAugment

    cfg = config["augment"]
    augment = BatchAugment(cfg, x_tr.shape[-1], config["seed"] + rank) if any(
        cfg.get(k) for k in ("hflip", "vflip", "rotation", "crop_scale", "brightness", "contrast", "blur")) else None
    batch = config["batch_size"]
    # Every worker takes the same number of rows, so the same number of steps: DDP's all-reduces
    # pair up step by step, and one step more on one worker would wait forever. The rows left over
    # (fewer than the workers) change with each epoch's permutation.
    per = max(1, len(x_tr) // world)
    # A last batch of one row is joined to the one before: batch norm cannot train on one row.
    bounds = [(start, min(start + batch, per)) for start in range(0, per, batch)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], per)]
    steps = config["epochs"] * len(bounds)
    opt = torch.optim.AdamW(net.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    rng = np.random.default_rng(config["seed"])
    # Mixed precision on a GPU (fp16 autocast, the loss scaled against underflow); fp32 on a CPU.
    amp = torch.device(device).type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def prepare(x: np.ndarray, train: bool) -> "torch.Tensor":
        t = torch.from_numpy(x).to(device)
        if train and augment is not None:  # the whole batch at once, on the device (training.augment)
            t = augment(t)
        return normalise(t, mean, std)

    def target(y: np.ndarray) -> "torch.Tensor":
        t = torch.from_numpy(y).to(device)
        return t.float() if multilabel else t.long()

    best, bad = float("inf"), 0
    for epoch in range(config["epochs"]):
        net.train()
        order = np.resize(rng.permutation(len(x_tr)), per * world)[rank * per:(rank + 1) * per]
        total, count = 0.0, 0
        for start, stop in bounds:
            idx = np.sort(order[start:stop])
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                loss = loss_fn(net(prepare(x_tr[idx], True)).float(), target(y_tr[idx]))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scale = scaler.get_scale()
            scaler.update()
            if scaler.get_scale() >= scale:  # the step was taken (fp16: not skipped for inf/NaN gradients)
                sched.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        metrics = {"epoch": epoch, "train_loss": total / max(count, 1)}
        if len(x_va):
            net.eval()
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                logits = torch.cat([net(prepare(x_va[i:i + 256], False)).float() for i in range(0, len(x_va), 256)])
                metrics["val_loss"] = float(loss_fn(logits, target(y_va)))
                if not multilabel:
                    metrics["val_accuracy"] = float((logits.argmax(1).cpu().numpy() == y_va).mean())
        score = metrics.get("val_loss", metrics["train_loss"])
        improved = score < best - 1e-6
        best, bad = (score, 0) if improved else (best, bad + 1)
        module = net.module if hasattr(net, "module") else net
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()} if improved and rank == 0 else None
        report({**metrics, "score": score}, state)
        if _agreed(bool(config["patience"] and len(x_va) and bad >= config["patience"]), world, device):
            break


def _agreed(stop: bool, world: int, device) -> bool:
    """The first worker's decision to stop, on every worker: each evaluates with its own batch-norm
    statistics, and a worker that stopped alone would leave the others waiting in an all-reduce."""
    if world <= 1:
        return stop
    import torch
    import torch.distributed as dist

    flag = torch.tensor([int(stop)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def train_loop(config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker: the loop, each improvement saved as a checkpoint."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    ctx = ray.train.get_context()
    history: list[dict[str, float]] = []

    def report(metrics: dict[str, float], state: Optional[dict]) -> None:
        history.append(metrics)
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, os.path.join(folder, CHECKPOINT_FILE))
            with open(os.path.join(folder, HISTORY_FILE), "w") as fh:
                json.dump(history, fh)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    data = tuple(ray.get(r) for r in config["data"])
    fit_loop(config, data, ray.train.torch.get_device(), ctx.get_world_rank(), ctx.get_world_size(),
             ray.train.torch.prepare_model, report)


def fit_cnn(cnn: CnnSpec, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray,
            outputs: int, multilabel: bool, mean: Optional[list[float]], std: Optional[list[float]], seed: int,
            init_state: Optional[dict] = None, storage_path: Optional[str] = None,
            network: Optional[dict[str, Any]] = None) -> tuple[dict, list[dict]]:
    """Train on Ray Train, or in this process when ``cnn.workers`` is 0; returns (best state_dict,
    per-epoch metrics up to the best epoch). ``mean`` None: inputs are standardised per image
    (``normalize: per_image``)."""
    config = {
        "architecture": cnn.architecture, "library": "torchvision", "network_config": {},
        **{k: v for k, v in (network or {}).items() if k != "architecture"},
        "outputs": outputs, "multilabel": multilabel,
        "init_state": init_state, "mean": mean, "std": std, "seed": seed,
        "augment": cnn.augment.model_dump(), "batch_size": cnn.batch_size, "epochs": cnn.epochs,
        "lr": cnn.lr, "weight_decay": cnn.weight_decay, "patience": cnn.patience,
    }
    if cnn.workers == 0:
        return _fit_here(cnn, config, (x_tr, y_tr, x_va, y_va))
    import ray
    import torch
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = (ray.cluster_resources().get("GPU", 0) > 0) if cnn.use_gpu == "auto" else bool(cnn.use_gpu)
    config["data"] = [ray.put(a) for a in (x_tr, y_tr, x_va, y_va)]
    storage_path = storage_path or tempfile.mkdtemp(prefix="imgclf-train-")
    trainer = TorchTrainer(
        train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=cnn.workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=storage_path, name="cnn", checkpoint_config=CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="score", checkpoint_score_order="min")),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training produced no checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
        with open(os.path.join(folder, HISTORY_FILE)) as fh:
            history = json.load(fh)
    return state, history


def _fit_here(cnn: CnnSpec, config: dict[str, Any], data: tuple) -> tuple[dict, list[dict]]:
    """The small-data path: the same loop in this process (no worker group to start); the best
    state is kept in memory instead of a checkpoint."""
    import torch

    gpu = torch.cuda.is_available() if cnn.use_gpu == "auto" else bool(cnn.use_gpu)
    device = torch.device("cuda" if gpu else "cpu")
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {}

    from imgclf_ray.progress import Progress

    with Progress("training", config["epochs"], unit="epoch") as shown:
        def report(metrics: dict[str, float], state: Optional[dict]) -> None:
            history.append(metrics)
            shown.update()
            if state is not None:
                best.update(state=state, history=list(history))

        fit_loop(config, data, device, 0, 1, lambda net: net.to(device), report)
    if not best:
        raise RuntimeError("training produced no checkpoint")
    return best["state"], best["history"]
