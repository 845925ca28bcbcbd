"""The training engine: one loop for a whole model on images or a head on cached features.

Data is an in-memory tensor (uint8 images NHWC, or float features) indexed by the sampler's
indices, so no DataLoader worker ever decodes or collates: the batch is one gather, moved to the
device, transformed there (see ``transforms``).  On CUDA the data set is put on the GPU when it
fits; bf16 autocast and channels_last are used there, and with ``cuda_graph`` each step's forward
and backward are replayed as CUDA graphs (``graph_model``).  No step waits for the GPU: random
draws reach it by asynchronous copies, and the loss is checked once an epoch.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .inference import for_inference
from .metrics import balanced_accuracy
from .params import DEFAULTS
from .transforms import mix_batch


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the run stops and records why."""


def _schema_default(name: str):
    """A TrainConfig field whose default is the run parameter's (``longtail.params.SCHEMA``)."""
    value = DEFAULTS[name]
    return field(default_factory=lambda: copy.deepcopy(value)) if isinstance(value, (list, dict)) else value


@dataclass
class TrainConfig:
    """What the training loop needs of a run's parameters; each default is the parameter's own."""

    epochs: int = _schema_default("epochs")
    batch_size: int = _schema_default("batch_size")
    eval_batch_size: int = _schema_default("eval_batch_size")
    optimizer: str = _schema_default("optimizer")
    lr: float = _schema_default("lr")
    momentum: float = _schema_default("momentum")
    nesterov: bool = _schema_default("nesterov")
    weight_decay: float = _schema_default("weight_decay")
    decay_norm_and_bias: bool = _schema_default("decay_norm_and_bias")
    schedule: str = _schema_default("schedule")
    warmup_epochs: int = _schema_default("warmup_epochs")
    warmup_unit: str = _schema_default("warmup_unit")
    lr_steps: list = _schema_default("lr_steps")
    lr_gamma: float = _schema_default("lr_gamma")
    grad_clip: float | None = _schema_default("grad_clip")
    mixup_alpha: float = _schema_default("mixup_alpha")
    cutmix_alpha: float = _schema_default("cutmix_alpha")
    freeze_bn: str = _schema_default("freeze_bn")
    backbone_lr_scale: float = _schema_default("backbone_lr_scale")
    precision: str = _schema_default("precision")
    device: str = _schema_default("device")
    channels_last: bool = _schema_default("channels_last")
    compile: bool = _schema_default("compile")
    cuda_graph: bool = _schema_default("cuda_graph")
    seed: int = _schema_default("seed")

    @classmethod
    def from_params(cls, p: dict) -> "TrainConfig":
        return cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p})


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} asked for, but CUDA is not available here; use device='auto' or 'cpu'")
    return dev


def autocast(device: torch.device, precision: str = "auto", *, cache_enabled: bool = True):
    """bf16 autocast on CUDA (precision auto) or wherever precision is bf16.  ``cache_enabled=False``
    for CUDA-graph capture and replay, which need the weight casts inside the graph."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16, cache_enabled=cache_enabled)


def graph_model(model: nn.Module, sample: torch.Tensor, precision: str = "auto") -> None:
    """Capture ``model``'s training forward and backward as CUDA graphs (``torch.cuda.make_graphed_callables``):
    afterwards ``model(x)`` in train mode replays them for inputs shaped like ``sample`` (one launch each
    instead of hundreds; ResNet-32's step is launch-bound otherwise).  Eval mode keeps the eager forward.

    The warm-up iterations that capture needs run real forward passes, so BatchNorm statistics and
    every other buffer are restored afterwards: training starts from the same state as eager.
    Raises where capture is impossible (e.g. a module with hooks); the state is restored then too."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        with autocast(sample.device, precision, cache_enabled=False):
            torch.cuda.make_graphed_callables(model, (sample.detach(),), num_warmup_iters=3)
    finally:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(state[k])
        for p in model.parameters():
            p.grad = None


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr at an optimizer step: linear warm-up, then cosine/step/constant.

    Warm-up ``warmup_unit="step"`` raises the lr at every step, (step + 1) / (warmup_epochs * steps
    per epoch); ``"epoch"`` holds it for a whole epoch, (e + 1) / warmup_epochs in epoch e, as Cao et
    al.'s LDAM-DRW code does (0.02, 0.04, ..., 0.1 over 5 epochs)."""
    epoch = step / max(1, steps_per_epoch)
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        if cfg.warmup_unit == "epoch":
            return (step // max(1, steps_per_epoch) + 1) / cfg.warmup_epochs
        return (step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        t = (epoch - cfg.warmup_epochs) / max(1e-9, cfg.epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if cfg.schedule == "step":
        return cfg.lr_gamma ** sum(epoch >= s for s in cfg.lr_steps)
    return 1.0


def batchnorms(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers (timm's BatchNormAct2d among them)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_train_mode(model: nn.Module, freeze_bn: str = "none") -> None:
    """``model.train()``, with ``freeze_bn`` stats or all its BatchNorm layers back in eval mode: they
    normalise with their running statistics and leave them unchanged (the pretrained ones; a batch
    of 64 images of 200 classes is a noisy estimate of them)."""
    model.train()
    if freeze_bn != "none":
        for m in batchnorms(model):
            m.eval()


def trained_parameters(model: nn.Module, cfg: TrainConfig) -> list[nn.Parameter]:
    """The parameters the optimiser updates: those that require a gradient, less BatchNorm's
    gamma and beta under ``freeze_bn`` all."""
    frozen = {id(p) for m in batchnorms(model) for p in m.parameters()} if cfg.freeze_bn == "all" else set()
    return [p for p in model.parameters() if p.requires_grad and id(p) not in frozen]


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    """SGD or AdamW.  ``decay_norm_and_bias=False`` exempts biases and normalisation parameters
    (1-D tensors) from weight decay, the usual practice since Goyal et al. 2017; True decays every
    parameter, as the LDAM-DRW reference code does.  ``nesterov`` applies to SGD with momentum.
    Discriminative rates: each group carries ``lr_scale``, the multiple of the scheduled lr it gets
    (``fit`` sets ``lr`` from it every step): 1 for the classifier (``model.get_classifier()``) and
    for a module without one (a bare head), ``backbone_lr_scale`` for every other parameter.
    SGD on CPU parameters is ``CpuSGD`` (the same update as ``torch.optim.SGD``, without the
    torch._dynamo import that costs each run's kernel about 1 s); elsewhere ``torch.optim``."""
    params = trained_parameters(model, cfg)
    head = {id(p) for p in model.get_classifier().parameters()} if hasattr(model, "get_classifier") else None
    parts = [(params, 1.0)] if head is None or cfg.backbone_lr_scale == 1.0 else \
        [([p for p in params if id(p) in head], 1.0), ([p for p in params if id(p) not in head], cfg.backbone_lr_scale)]
    groups = []
    for part, scale in parts:
        if cfg.decay_norm_and_bias:
            groups.append({"params": part, "weight_decay": cfg.weight_decay, "lr_scale": scale})
        else:
            groups += [{"params": [p for p in part if p.ndim > 1], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                       {"params": [p for p in part if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        sgd = CpuSGD if all(p.device.type == "cpu" for p in params) else torch.optim.SGD
        return sgd(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of sgd, adamw")


class CpuSGD:
    """SGD with momentum μ, Nesterov and L2 weight decay λ (Sutskever et al. 2013), the update of
    ``torch.optim.SGD`` (dampening 0) operation for operation, so the same on CPU bit for bit::

        g ← ∇ + λ·θ;   b ← g (first step), else μ·b + g;   d ← g + μ·b (Nesterov), else b;   θ ← θ − lr·d

    Why not ``torch.optim.SGD``: its first step imports torch._dynamo (as much import time as torch
    itself, paid by every run's fresh kernel), and a linear head's whole training takes about as
    long.  Only what the engine uses: ``param_groups`` (``lr`` set per step), ``zero_grad``, ``step``.
    """

    def __init__(self, groups, *, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        if nesterov and momentum <= 0:
            raise ValueError(f"Nesterov momentum needs momentum > 0, got momentum={momentum}")
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.momentum_buffers: dict[int, torch.Tensor] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            lr, mu, wd = g["lr"], g["momentum"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=wd) if wd != 0 else p.grad
                if mu != 0:
                    buf = self.momentum_buffers.get(id(p))
                    if buf is None:
                        buf = self.momentum_buffers[id(p)] = grad.detach().clone()
                    else:
                        buf.mul_(mu).add_(grad, alpha=1)
                    grad = grad.add(buf, alpha=mu) if g["nesterov"] else buf
                p.add_(grad, alpha=-lr)


def place(x: torch.Tensor, device: torch.device, budget_bytes: float = 0.5) -> torch.Tensor:
    """Move the whole data tensor to an accelerator when it takes under ``budget_bytes`` of its free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if x.numel() * x.element_size() < budget_bytes * free:
            return x.to(device, non_blocking=True)
    return x


#: the largest image batch of a CPU evaluation: with whole batches running in parallel, small ones
#: are fastest (MobileNetV2 at 224 px, 2 cores, ``bench/throughput.py --features``: 153 img/s at 8,
#: 127 at 16, 107 at 32); ``eval_batch_size`` still sets it on a GPU
CPU_IMAGE_BATCH = 8


def predict(model: nn.Module, x: torch.Tensor | np.ndarray, transform=None, *, batch_size: int = 512,
            device: torch.device | str = "cpu", precision: str = "auto", features: bool = False,
            channels_last: bool = True, cpu_workers: int | None = None,
            cpu_batch: int | None = CPU_IMAGE_BATCH) -> np.ndarray:
    """Outputs of ``model`` (or its pooled pre-logit features when ``features``) for every row of x.
    ``x`` may be a numpy array, e.g. the memory-mapped decoded-image cache: it is read batch by batch,
    never copied whole.

    Every evaluation and feature extraction goes through here, on one fast path: inference mode;
    an inference copy of the model with BatchNorm folded into the convolutions, ReLU/ReLU6 fused
    into them and TF "SAME" convolutions without their padded copy (``inference.for_inference``;
    ``model`` itself is not changed); for a conv net on image batches (``channels_last``) the model
    and each batch in the channels_last layout; the evaluation transform crops and normalises in one
    pass (``transforms.center_crop_normalize``).  On a CPU, ``cpu_workers`` image batches (default
    ``torch.get_num_threads()``) run their forward at once, each on one intra-op thread (the thread
    setting is restored afterwards): whole batches in parallel scale better than one batch's
    operators split over the cores, and far better on a shared machine; such batches hold at most
    ``cpu_batch`` images (default ``CPU_IMAGE_BATCH``, the fastest size measured; None: ``batch_size``).  The transform runs in the
    calling thread, batch by batch in order, so a random one draws as it would serially.
    MobileNetV2 at 224 px on a CPU:
    ``bench/throughput.py --features`` (this path against the plain eval-mode one, side by side).
    Outputs equal the plain eval-mode forward's to float rounding."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if cpu_workers is not None and cpu_workers < 1:
        raise ValueError(f"cpu_workers must be at least 1 (or None: torch.get_num_threads()), got {cpu_workers}")
    device = torch.device(device)
    model.eval().to(device)
    image_batches = channels_last and x.ndim == 4 and _has_conv(model)
    if image_batches:  # outside inference mode: the model's parameters stay ordinary tensors
        model.to(memory_format=torch.channels_last)
    net = for_inference(model)
    if device.type == "cpu" and image_batches and cpu_batch:
        batch_size = min(batch_size, cpu_batch)

    def prepare(start: int) -> torch.Tensor:  # in the calling thread, in order: a random transform stays reproducible
        with torch.inference_mode():
            xb = x[start:start + batch_size]
            xb = torch.from_numpy(np.array(xb)) if isinstance(xb, np.ndarray) else xb  # a copy: the map is read-only
            xb = xb.to(device, non_blocking=True)
            xb = transform(xb) if transform is not None else xb
            return xb.contiguous(memory_format=torch.channels_last) if image_batches and xb.dim() == 4 else xb

    def forward(xb: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(device, precision):  # both thread-local: entered where it runs
            out = net.forward_head(net.forward_features(xb), pre_logits=True) if features else net(xb)
        return out.float().cpu()

    starts = range(0, len(x), batch_size)
    workers = min(torch.get_num_threads() if cpu_workers is None else cpu_workers, len(starts))
    if device.type != "cpu" or workers <= 1 or x.ndim != 4:  # features (a head) are no work worth threads
        outs = [forward(prepare(s)) for s in starts]
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        outs, running = [], deque()
        try:
            with ThreadPoolExecutor(workers) as pool:
                for s in starts:  # at most workers + 1 batches prepared ahead, so memory stays bounded
                    running.append(pool.submit(forward, prepare(s)))
                    if len(running) > workers:
                        outs.append(running.popleft().result())
                outs += [f.result() for f in running]
        finally:
            torch.set_num_threads(threads)
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)


@dataclass
class TrainingLoop:
    """What the epochs of one ``fit`` share: the model and how it is run (eagerly, compiled or as a
    captured CUDA graph), the optimiser, the loss, and the step count the schedule follows."""
    model: nn.Module
    loss_fn: nn.Module
    opt: object
    cfg: TrainConfig
    device: torch.device
    steps_per_epoch: int
    log: object = print
    forward: object = None          # the compiled model under ``compile``, else the model
    eager_forward: object = None    # the model's own forward, taken before a graph capture replaces it
    use_graph: bool = False         # capture the training step as a CUDA graph (``cuda_graph``)
    graphed: bool = False           # captured: full batches replay it
    step: int = 0
    mix_gen: torch.Generator = field(default_factory=torch.Generator)

    @classmethod
    def start(cls, model: nn.Module, loss_fn: nn.Module, cfg: TrainConfig, device: torch.device, n: int, log=print):
        """The model on ``device`` (channels_last for conv nets: 1.6-2.9x faster for depthwise nets, on
        the CPU too), its optimiser, and ``n`` samples an epoch in batches of ``cfg.batch_size``."""
        model.to(device)
        if cfg.channels_last and _has_conv(model):
            model.to(memory_format=torch.channels_last)
        loss_fn.to(device)
        return cls(model, loss_fn, make_optimizer(model, cfg), cfg, device, max(1, math.ceil(n / cfg.batch_size)),
                   log, torch.compile(model) if cfg.compile else model,  # state dicts stay those of `model`
                   model.forward, cfg.cuda_graph and device.type == "cuda" and not cfg.compile,
                   mix_gen=torch.Generator().manual_seed(cfg.seed + 1))

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor, on_step=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on a batch (mixup/CutMix, the scheduled lr of each group); returns the
        loss and the outputs, on the device (no synchronisation)."""
        cfg = self.cfg
        xb, ya, yb2, lam = mix_batch(xb, yb, cfg.mixup_alpha, cfg.cutmix_alpha, generator=self.mix_gen)
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(self.step, self.steps_per_epoch, cfg) * g["lr_scale"]
        if self.use_graph and not self.graphed and len(xb) == cfg.batch_size:
            try:
                graph_model(self.model, xb, cfg.precision)
                self.graphed = True
            except Exception as exc:  # noqa: BLE001 - e.g. a model with hooks: train eagerly instead
                self.use_graph = False
                self.log(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); training eagerly")
        with autocast(self.device, cfg.precision, cache_enabled=not self.use_graph):
            # a batch of another size than the captured one runs eagerly
            out = self.forward(xb) if not self.graphed or len(xb) == cfg.batch_size else self.eager_forward(xb)
        out = out.float()
        loss = (self.loss_fn(out, ya) if lam == 1.0
                else lam * self.loss_fn(out, ya) + (1 - lam) * self.loss_fn(out, yb2))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_([q for g in self.opt.param_groups for q in g["params"]], cfg.grad_clip)
        self.opt.step()
        if on_step is not None:
            on_step(self.model)
        self.step += 1
        return loss.detach(), (out.argmax(1) == ya)


def train_one_epoch(loop: TrainingLoop, epoch: int, train_x, train_y, sampler, *, transform=None, drw=None,
                    on_step=None) -> dict:
    """One epoch in the sampler's order; returns its history row (lr, train loss and accuracy, speed).
    Loss and accuracy are summed on the device; a non-finite loss is detected once, at the end."""
    cfg, device = loop.cfg, loop.device
    set_train_mode(loop.model, cfg.freeze_bn)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if drw is not None:
        drw.apply(loop.loss_fn, epoch)
    order = torch.as_tensor(np.fromiter(iter(sampler), dtype=np.int64), device=train_x.device)
    t0, seen = time.perf_counter(), 0
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # first step with a non-finite loss
    for b in range(loop.steps_per_epoch):
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        if len(idx) < 2:  # a last batch of one breaks BatchNorm in train mode
            continue
        xb = train_x[idx].to(device, non_blocking=True)
        yb = train_y[idx.to(train_y.device)]
        loss, hits = loop.train_step(transform(xb) if transform is not None else xb, yb, on_step)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), b, first_bad)
        seen += len(yb)
        loss_sum += loss * len(yb)
        correct += hits.sum()
    if (bad_step := int(first_bad)) >= 0:  # one synchronisation an epoch
        raise NonFiniteLossError(f"training loss became non-finite at epoch {epoch}, step {bad_step} "
                                 f"(lr {loop.opt.param_groups[0]['lr']:.3g}); the run stopped")
    elapsed = time.perf_counter() - t0
    return {"epoch": epoch, "lr": loop.opt.param_groups[0]["lr"], "train_loss": loss_sum.item() / max(1, seen),
            "train_acc": correct.item() / max(1, seen), "epoch_s": elapsed, "images_per_s": seen / max(elapsed, 1e-9),
            "cuda_graph": loop.graphed}


def evaluate(model: nn.Module, x, y, cfg: TrainConfig, device, transform=None) -> dict:
    """The validation row of an epoch: ``val_loss`` (cross-entropy), ``val_acc`` and ``val_balanced_acc``
    (mean per-class recall, the selection score)."""
    logits = torch.from_numpy(predict(model, x, transform, batch_size=cfg.eval_batch_size, device=device,
                                      precision=cfg.precision, channels_last=cfg.channels_last))
    vy = y.cpu()
    return {"val_loss": F.cross_entropy(logits, vy).item(), "val_acc": (logits.argmax(1) == vy).float().mean().item(),
            "val_balanced_acc": balanced_accuracy(logits.numpy(), vy.numpy(), logits.shape[1])}


def monitor_accuracy(model: nn.Module, x, y, cfg: TrainConfig, device, transform=None) -> float:
    """Top-1 on ``x`` (the test monitor: recorded, never selected on)."""
    logits = predict(model, x, transform, batch_size=cfg.eval_batch_size, device=device, precision=cfg.precision,
                     channels_last=cfg.channels_last)
    return float((logits.argmax(1) == np.asarray(y)).mean())


class BestEpoch:
    """Model selection: the epoch with the highest score (ties: the later one), its state kept on the
    CPU.  Without a validation split the score is the epoch itself, the last epoch wins, and its state
    is taken once, at the end (``state``)."""

    def __init__(self, keep_states: bool):
        self.keep_states, self.epoch, self.score, self.best_state = keep_states, -1, -math.inf, None

    def update(self, epoch: int, score: float, model: nn.Module) -> None:
        if score >= self.score:
            self.score, self.epoch = score, epoch
            if self.keep_states:
                self.best_state = _cpu_state(model)

    def state(self, model: nn.Module) -> dict:
        return self.best_state if self.best_state is not None else _cpu_state(model)


def _cpu_state(model: nn.Module) -> dict:
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})


def fit(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, loss_fn: nn.Module, sampler,
        cfg: TrainConfig, *, transform=None, eval_transform=None, val_x=None, val_y=None, drw=None,
        log=print, on_epoch=None, on_step=None, monitor_x=None, monitor_y=None):
    """Train ``model``; returns (history rows, best state dict, best epoch): ``train_one_epoch``,
    ``evaluate`` on the validation split and ``BestEpoch`` each epoch.
    ``on_step(model)`` runs after every optimiser step (e.g. a projection such as MaxNorm).

    Model selection: the epoch with the highest balanced accuracy (mean per-class recall) on the
    validation split, which is carved from training data and long-tailed like it; never the test
    set.  Without a validation split the last epoch is taken.

    ``monitor_x``/``monitor_y`` (e.g. the test set) are evaluated after every epoch and recorded as
    ``monitor_acc`` in the history, only to compare with papers that report their best test epoch;
    they never take part in model selection.

    The loop does not synchronise with the device inside an epoch (loss and accuracy are summed on
    the device), so a GPU is never left waiting for the host; a non-finite loss is detected at the
    end of the epoch in which it appeared.
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    loop = TrainingLoop.start(model, loss_fn, cfg, device, len(sampler) if hasattr(sampler, "__len__") else len(train_y),
                              log)
    train_x, train_y = place(train_x, device), train_y.to(device)
    has_val = val_x is not None and len(val_y) > 0
    best, history = BestEpoch(keep_states=has_val), []
    for epoch in range(cfg.epochs):
        row = train_one_epoch(loop, epoch, train_x, train_y, sampler, transform=transform, drw=drw, on_step=on_step)
        if has_val:
            row.update(evaluate(model, val_x, val_y, cfg, device, eval_transform))
        if monitor_x is not None:
            row["monitor_acc"] = monitor_accuracy(model, monitor_x, monitor_y, cfg, device, eval_transform)
        best.update(epoch, row["val_balanced_acc"] if has_val else epoch, model)
        row["best_epoch"] = best.epoch
        history.append(row)
        log(_epoch_line(row, cfg.epochs))
        if on_epoch is not None:
            on_epoch(epoch, model, row)
    return history, best.state(model), best.epoch


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch'] + 1:>3}/{epochs}", f"lr {row['lr']:.3g}", f"loss {row['train_loss']:.4f}",
             f"acc {row['train_acc']:.3f}"]
    if "val_loss" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_acc {row['val_acc']:.3f}",
                  f"val_bal_acc {row['val_balanced_acc']:.3f}"]
    parts += [f"{row['images_per_s']:.0f} img/s"]
    return " | ".join(parts)
