"""Training the autoencoder or the classifier, data-parallel with Ray Train.

The step and the evaluation are plain PyTorch functions (``train_epoch``, ``evaluate``) that a
test calls without Ray; ``train_loop_per_worker`` only feeds them Ray Data shards, syncs the
counts across workers and reports a checkpoint each epoch; ``train`` is the driver.

Run directory after training::

    RUN/model.pt                  final weights and spec (what feature extraction reads)
    RUN/metrics.jsonl             one line per epoch: losses, accuracy, images/s
    RUN/loss_curve.png            RUN/reconstructions.png
    RUN/checkpoint_*/state.pt     Ray Train's per-epoch checkpoints (model, optimizer, scheduler)
    RUN/skipped_images.csv        --on-bad-image skip: the images left out (path,error)
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines import plots
from pipelines.config import DataConfig, TrainConfig
from pipelines.data import FolderDecode, ImageSource, failing_on_bad_images, load_images
from pipelines.errors import ResourceError
from pipelines.model import Autoencoder, ModelSpec, load_model, save_model, scale_images
from pipelines.rundir import (METRICS_FILE, MODEL_FILE, PRETRAIN_DIR, SKIPPED_IMAGES_FILE, START_CENTROIDS_FILE,
                              STATE_FILE, read_metrics)
from pipelines.storage import atomic_output, write_text_atomic


LOCAL_SHUFFLE_BUFFER = 4096


# --- plain PyTorch: one epoch, one evaluation ------------------------------------------------


class AutoencoderNetwork(nn.Module):
    """Encoder, decoder, (cluster refinement) the centroids and (contrastive term) a projection
    head, in one forward pass: images -> (reconstructions, codes, soft cluster assignments or None,
    projections: the head's output, or the codes themselves without a head).

    The head (SimCLR's: Linear d -> d, ReLU, Linear d -> ``projection``) is training's own: it is
    not part of the Autoencoder, so the saved model and its features (the codes, before the head)
    are the family's; a Ray Train checkpoint keeps its state dict beside the model's."""

    def __init__(self, model: Autoencoder, projection: int = 0) -> None:
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder
        self.centroids = getattr(model, "centroids", None)  # the model's own parameter, when it has one
        width = model.spec.code_dim
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, projection)) if projection else None

    def forward(self, inputs: torch.Tensor):
        codes = self.encoder(inputs)
        assignments = None if self.centroids is None else soft_assignment(codes, self.centroids)
        projections = codes if self.head is None else self.head(codes)
        return self.decoder(codes), codes, assignments, projections


def training_network(model: Autoencoder, mode: str, freeze_encoder: bool = False, projection: int = 0) -> nn.Module:
    """The part of the model a mode trains: encoder+decoder (+centroids, + a fresh projection head
    of ``projection`` outputs for the contrastive term), or encoder+classifier (``freeze_encoder``:
    the encoder's weights take no gradient, so the optimizer leaves them out).

    Data parallelism wraps only this, so that every parameter it holds takes part in the
    forward pass (DDP needs that) and the unused head is left alone."""
    model.encoder.requires_grad_(not freeze_encoder)
    if mode == "autoencoder":
        return AutoencoderNetwork(model, projection)
    return nn.Sequential(model.encoder, model.classifier)


def projection_head(network: nn.Module) -> nn.Module | None:
    """The training network's projection head (inside DDP's wrapper too), or None."""
    return getattr(getattr(network, "module", network), "head", None)


@dataclass(frozen=True)
class Recipe:
    """What the autoencoder's loss adds to plain reconstruction (TrainConfig's recipe options)."""

    corrupt: str = "none"  # see corrupt_images
    level: float = 0.0
    mask_patch: int = 4
    cluster_weight: float = 0.0  # weight of the IDEC term (0 unless the model has centroids)
    contrastive: float = 0.0  # weight of the NT-Xent term (see contrastive_loss)
    temperature: float = 0.5
    projection: int = 0  # outputs of the training network's projection head (0: none)
    view_scale: float = 0.7  # see crop_views
    view_jitter: float = 0.0

    @classmethod
    def of(cls, config: TrainConfig) -> "Recipe":
        return cls(config.corrupt, config.corruption_level, config.mask_patch,
                   config.cluster_weight if config.clusters else 0.0, config.contrastive, config.temperature,
                   config.projection_dim if config.contrastive else 0, config.view_scale, config.view_jitter)


PLAIN = Recipe()


def batch_loss(network: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, mode: str,
               label_smoothing: float = 0.0, recipe: Recipe = PLAIN) -> torch.Tensor:
    """Mean loss of one batch: the autoencoder's (see :func:`autoencoder_loss`), or cross-entropy on
    the logits (against labels smoothed by ``label_smoothing``)."""
    if mode == "autoencoder":
        return autoencoder_loss(network, images, recipe)
    return nn.functional.cross_entropy(network(scale_images(images)), labels, label_smoothing=label_smoothing)


def autoencoder_loss(network: nn.Module, images: torch.Tensor, recipe: Recipe = PLAIN) -> torch.Tensor:
    """Per-pixel MSE of the reconstruction of the (corrupted) inputs against the clean images; with
    ``recipe.contrastive``, the batch is two views of each image instead (:func:`crop_views`, each
    reconstructed), and ``contrastive x NT-Xent`` of their projections is added
    (:func:`contrastive_loss`); with centroids, ``cluster_weight x KL(P || Q)`` (IDEC, :func:`cluster_loss`)."""
    clean = scale_images(images)
    if recipe.contrastive:
        clean = torch.cat([crop_views(clean, recipe.view_scale, recipe.view_jitter) for _ in range(2)])
    reconstructions, _, assignments, projections = network(corrupt_images(clean, recipe))
    loss = nn.functional.mse_loss(reconstructions, clean)
    if recipe.contrastive:
        loss = loss + recipe.contrastive * contrastive_loss(*projections.chunk(2), recipe.temperature)
    if recipe.cluster_weight and assignments is not None:
        loss = loss + recipe.cluster_weight * cluster_loss(assignments)
    return loss


def contrastive_loss(first: torch.Tensor, second: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent (InfoNCE) of two views' vectors (N, d), row i of each the same image: each
    of the 2N vectors, L2-normalised, is scored by cosine / ``temperature`` against the other
    2N - 1; cross-entropy picks its other view among them, the other images' 2N - 2 being the
    negatives (so the codes cannot all collapse to one point). Under data parallelism N is the
    whole batch, every worker's views (:func:`gather_rows`): each worker scores its own rows."""
    pairs, start = gather_rows(torch.stack([first, second], 1))  # (N, 2, d): both views at once
    n = len(pairs)
    z = nn.functional.normalize(torch.cat([pairs[:, 0], pairs[:, 1]]), dim=1)
    own = torch.arange(start, start + len(first), device=z.device)
    rows, other_view = torch.cat([own, own + n]), torch.cat([own + n, own])  # i <-> i + N
    logits = z[rows] @ z.T / temperature
    logits[torch.arange(len(rows), device=z.device), rows] = float("-inf")  # not itself
    return nn.functional.cross_entropy(logits, other_view)


CROP_RATIO = (3 / 4, 4 / 3)  # the crop's aspect ratio, against the image's


def crop_views(images: torch.Tensor, scale: float = 0.7, jitter: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """A random view of each float image (N, C, H, W) in [0, 1], at the same size, on its device:
    a random resized crop (``scale`` to all of the area, uniform; aspect CROP_RATIO; anywhere in
    the image), mirrored left-right with probability 1/2, resampled bilinearly (so still in
    [0, 1]); with ``jitter``, its contrast (about its mean) and then its brightness are each
    multiplied by a factor drawn from [1 - jitter, 1 + jitter], clipped to [0, 1]."""
    n = len(images)
    u = torch.rand(7, n, device=images.device, generator=generator)
    area = scale + (1.0 - scale) * u[0]
    low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(low + (high - low) * u[1])
    width, height = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = torch.where(u[4] < 0.5, -width, width)  # the grid's x runs backwards: a mirror image
    theta[:, 1, 1] = height
    theta[:, 0, 2] = (1 - width) * (2 * u[2] - 1)  # the crop's centre, in [-1, 1] coordinates
    theta[:, 1, 2] = (1 - height) * (2 * u[3] - 1)
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    views = nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if not jitter:
        return views
    contrast, brightness = (1 - jitter + 2 * jitter * u[5:]).view(2, n, 1, 1, 1)
    mean = views.mean((1, 2, 3), keepdim=True)
    return (((views - mean) * contrast + mean) * brightness).clamp(0.0, 1.0)


def corrupt_images(inputs: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """Float images (N, C, H, W) in [0, 1], corrupted: ``gaussian`` adds noise of std ``level``
    (clipped to [0, 1]); ``salt`` sets a ``level`` share of the pixels to 0 or 1 (half each);
    ``mask`` zeroes ``round(level x patches)`` of each image's ``mask_patch``-square patches."""
    if recipe.corrupt == "gaussian":
        return (inputs + recipe.level * torch.randn_like(inputs)).clamp_(0.0, 1.0)
    if recipe.corrupt == "salt":
        hit = torch.rand_like(inputs) < recipe.level
        return torch.where(hit, (torch.rand_like(inputs) < 0.5).to(inputs.dtype), inputs)
    if recipe.corrupt == "mask":
        return inputs.masked_fill(patch_mask(inputs.shape, recipe.level, recipe.mask_patch, inputs.device), 0.0)
    return inputs


def patch_mask(shape, share: float, patch: int, device=None) -> torch.Tensor:
    """Boolean (N, 1, H, W), True where zeroed: per image, ``round(share x patches)`` of the
    ``patch``-square cells of a grid over the image (edge cells cropped), drawn at random."""
    n, _, height, width = shape
    rows, cols = -(-height // patch), -(-width // patch)
    ranks = torch.rand(n, rows * cols, device=device).argsort(1).argsort(1)
    cells = (ranks < round(share * rows * cols)).view(n, rows, cols)
    full = cells.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return full[:, None, :height, :width]


def soft_assignment(codes: torch.Tensor, centroids: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """DEC's Q: q_ij proportional to (1 + |z_i - mu_j|^2 / alpha)^(-(alpha + 1) / 2) (Student's t)."""
    q = (1.0 + torch.cdist(codes, centroids).pow(2) / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC's sharpened target P: p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'), f_j = sum_i q_ij,
    the sum over the whole batch, every worker's rows under data parallelism."""
    weight = q.pow(2) / summed_over_workers(q.sum(0))
    return weight / weight.sum(1, keepdim=True)


def cluster_loss(q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per image, P the batch's own target (held fixed: no gradient through it). IDEC
    refreshes P over the whole data every T steps; here each batch's P is its own (T = 1)."""
    p = target_distribution(q.detach())
    return nn.functional.kl_div(q.clamp_min(1e-12).log(), p, reduction="batchmean")


# --- batch-level terms across data-parallel workers ------------------------------------------
# NT-Xent's negatives and IDEC's cluster sizes are the whole batch's: each worker holds
# batch_size / workers of it, so the terms gather what they need from the others. With DDP's
# mean of the workers' gradients, two workers then compute one process's loss and gradient on
# the whole batch (their data order still differs: RESULTS.md).


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def summed_over_workers(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over every worker (no gradient); ``values`` itself in one process."""
    if not distributed():
        return values
    total = values.detach().clone()
    torch.distributed.all_reduce(total)
    return total


def gather_rows(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every worker's ``rows`` stacked in rank order, the row where this worker's start); the
    workers may hold different numbers of rows. Differentiable: the gradient that reaches each
    worker's rows is the sum of every worker's loss's (so DDP's mean makes the one-process
    gradient). In one process: (rows, 0)."""
    if not distributed():
        return rows, 0
    rank = torch.distributed.get_rank()
    counts = torch.zeros(torch.distributed.get_world_size(), dtype=torch.int64, device=rows.device)
    counts[rank] = len(rows)
    counts = summed_over_workers(counts).tolist()
    start = sum(counts[:rank])
    return GatherRows.apply(rows, counts, start), start


class GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: torch.Tensor, counts: list[int], start: int) -> torch.Tensor:
        padded = rows.new_zeros((max(counts), *rows.shape[1:]))  # all_gather takes equal sizes
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in counts]
        torch.distributed.all_gather(parts, padded)
        ctx.own = slice(start, start + len(rows))
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)  # every worker's loss's gradient, summed
        return grad[ctx.own], None, None


SHIFT_PIXELS = 2


def augment_images(images: torch.Tensor, augment: str) -> torch.Tensor:
    """Random changes to a batch of uint8 images (N, H, W[, C]) that keep their class:
    ``flip`` mirrors each left-right with probability 1/2; ``shift`` moves each by up to
    SHIFT_PIXELS rows and columns (uniform), filling with zeros (the background)."""
    if "flip" in augment:
        mirrored = torch.rand(len(images), device=images.device) < 0.5
        images = torch.where(mirrored.view(-1, *([1] * (images.dim() - 1))), images.flip(2), images)
    if "shift" in augment:
        n, height, width = images.shape[:3]
        s = SHIFT_PIXELS
        padded = nn.functional.pad(images.movedim((1, 2), (-2, -1)), (s, s, s, s)).movedim((-2, -1), (1, 2))
        dy, dx = torch.randint(0, 2 * s + 1, (2, n, 1), device=images.device)
        rows = (dy + torch.arange(height, device=images.device))[:, :, None]
        cols = (dx + torch.arange(width, device=images.device))[:, None, :]
        images = padded[torch.arange(n, device=images.device)[:, None, None], rows, cols]
    return images


def train_epoch(network: nn.Module, batches: Iterable[dict], optimizer: torch.optim.Optimizer, mode: str,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                augment: str = "none", label_smoothing: float = 0.0, recipe: Recipe = PLAIN,
                progress: Callable[[int], None] | None = None) -> tuple[float, int]:
    """One pass over ``batches`` ({"image": uint8, "label": int64}); returns (sum of losses, images).
    ``scheduler`` (see :func:`build_optimizer`) steps after every optimizer step; ``augment``
    (see :func:`augment_images`) applies to the training images only; ``recipe`` to the
    autoencoder's loss (see :func:`autoencoder_loss`); ``progress`` is told the steps done.

    The loss is summed where it is computed and read once at the end: a ``.item()`` per step
    would make a GPU wait for every step before the next one is queued (BENCHMARKS.md)."""
    network.train()
    loss_sum, seen = None, 0
    for step, batch in enumerate(batches, 1):
        images, labels = augment_images(batch["image"], augment), batch.get("label")
        loss = batch_loss(network, images, None if labels is None else labels.long(), mode, label_smoothing, recipe)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        batch_sum = loss.detach().double() * len(images)
        loss_sum = batch_sum if loss_sum is None else loss_sum + batch_sum
        seen += len(images)
        if progress is not None:
            progress(step)
    return (0.0 if loss_sum is None else float(loss_sum)), seen


@torch.no_grad()
def evaluate(network: nn.Module, batches: Iterable[dict], mode: str) -> tuple[float, int, int]:
    """(sum of losses, correct predictions, images) over ``batches``; correct is 0 for the autoencoder."""
    network.eval()
    loss_sum, correct, seen = None, None, 0
    for batch in batches:
        images, labels = batch["image"], batch.get("label")
        labels = None if labels is None else labels.long()
        inputs = scale_images(images)
        outputs = network(inputs)
        if mode == "autoencoder":
            outputs = outputs[0]  # the reconstructions of the clean images
            batch_sum = nn.functional.mse_loss(outputs, inputs, reduction="sum").double() / inputs[0].numel()
        else:
            batch_sum = nn.functional.cross_entropy(outputs, labels, reduction="sum").double()
            hits = (outputs.argmax(1) == labels).sum()
            correct = hits if correct is None else correct + hits
        loss_sum = batch_sum if loss_sum is None else loss_sum + batch_sum
        seen += len(images)
    return (0.0 if loss_sum is None else float(loss_sum)), (0 if correct is None else int(correct)), seen


# --- a worker's shard, kept in memory -------------------------------------------------------


class CachedShard:
    """A worker's shard of a Ray Dataset read once into tensors on the worker's device.

    Every epoch then draws a fresh permutation of the shard and slices its batches where the
    model runs: no Ray Data work per batch, no host-to-device copy per batch on a GPU, and a
    shuffle of the whole shard rather than of a local buffer. Ray Data still does the ingest
    (reading, decoding, splitting the dataset between workers); only its result is kept."""

    READ_BATCH = 8192

    def __init__(self, shard, columns: list[str], device: torch.device) -> None:
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in columns}
        for batch in shard.iter_batches(batch_size=self.READ_BATCH, batch_format="numpy", prefetch_batches=2):
            for name in columns:
                chunks[name].append(np.asarray(batch[name]))
        self.device = device
        self.tensors = {
            name: torch.from_numpy(np.concatenate(parts)).to(device) for name, parts in chunks.items() if parts
        }
        self.rows = len(next(iter(self.tensors.values()))) if self.tensors else 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def batches(self, batch_size: int, seed: int | None = None):
        """Batches of ``batch_size`` rows: shuffled with ``seed``, in order without one."""
        if not self.rows:
            return
        order = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            order = torch.randperm(self.rows, generator=generator, device=self.device)
        for start in range(0, self.rows, batch_size):
            if order is None:
                yield {name: t[start : start + batch_size] for name, t in self.tensors.items()}
            else:
                rows = order[start : start + batch_size]
                yield {name: t[rows] for name, t in self.tensors.items()}


def cache_shards(shard_bytes: int, limit: int, device: torch.device) -> bool:
    """Whether a worker's shards (``shard_bytes`` together) are small enough to keep in memory:
    at most ``limit`` bytes, and a quarter of the GPU's free memory."""
    if device.type == "cuda":
        limit = min(limit, torch.cuda.mem_get_info(device)[0] // 4)
    return 0 < shard_bytes <= limit


def build_optimizer(network: nn.Module, config: TrainConfig, steps_per_epoch: int = 1):
    """Adam and a learning-rate schedule counted in optimizer steps (one ``scheduler.step()`` per
    step): the seed's StepLR (x lr_gamma every lr_step epochs) or a cosine decay to 0 over the run."""
    params = [p for p in network.parameters() if p.requires_grad]
    # fused: one kernel for the whole update, 1.4x faster steps on CPU (BENCHMARKS.md)
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
    total_steps = max(1, config.epochs * steps_per_epoch)
    if config.lr_schedule == "cosine":
        def factor(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    else:
        def factor(step: int) -> float:
            return config.lr_gamma ** (step // (config.lr_step * steps_per_epoch))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_epoch(train_images: int, world: int, per_worker_batch: int) -> int:
    """Optimizer steps of one epoch on every worker (Ray Train splits the rows equally)."""
    return max(1, math.ceil((train_images // world) / per_worker_batch))


# --- Ray Train: the loop each worker runs ----------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a Ray Train worker needs, as plain values: it travels to workers on any node,
    so they start from the same (seeded or transferred) weights without the driver's files."""

    config: TrainConfig
    spec: ModelSpec
    initial_state: dict  # the model's state dict
    threads: int  # torch threads of each worker
    run_dir: str
    train_images: int
    shard_bytes: int  # what the train and test sets hold in the columns training reads
    train_stream: FolderStream | None  # an image folder's training files, streamed in an order per epoch


@dataclass(eq=False)
class Worker:
    """One worker's model, optimizer and place in the world."""

    model: Autoencoder
    network: nn.Module  # the part being trained (DDP-wrapped after prepare_model)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    rank: int
    world: int
    device: torch.device


def train_loop_per_worker(loop: dict) -> None:
    """Runs on every Ray Train worker: restore, then one epoch and one checkpoint at a time."""
    import ray.train.torch

    plan: WorkerPlan = loop["plan"]
    worker = start_worker(plan)
    start_epoch, history = restore(worker, plan.config)
    worker.network = ray.train.torch.prepare_model(worker.network)  # [3] DDP across the workers
    batches = ShardBatches(plan, worker)
    for epoch in range(start_epoch + 1, plan.config.epochs + 1):
        history.append(run_epoch(worker, batches, epoch, plan.config))
        report_epoch(worker, plan, history, batches.sample)


def start_worker(plan: WorkerPlan) -> Worker:
    import ray.train
    import ray.train.torch

    config = plan.config
    torch.set_num_threads(plan.threads)
    context = ray.train.get_context()  # [1] this worker's place in the world
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.seed * 10_000 + rank)  # dropout and augmentation: repeatable runs
    model = Autoencoder(plan.spec)
    model.load_state_dict(plan.initial_state)
    # On the device before the optimizer exists: a resumed optimizer's state then lands there
    # too; loaded onto CPU weights that prepare_model later moved to a GPU, it would stay on the
    # CPU and fused Adam's first step would fail on mixed devices.
    device = ray.train.torch.get_device()
    model.to(device)
    network = training_network(model, config.mode, config.freeze_encoder, Recipe.of(config).projection)
    steps = steps_per_epoch(plan.train_images, world, config.batch_size // world)
    optimizer, scheduler = build_optimizer(network, config, steps)
    return Worker(model, network, optimizer, scheduler, rank, world, device)


def restore(worker: Worker, config: TrainConfig) -> tuple[int, list[dict]]:
    """(last finished epoch, metrics so far) from Ray Train's checkpoint: a rerun of the same run,
    or a restart after a worker failure; (0, []) for a fresh run."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()  # [2] the last reported checkpoint, if any
    if not checkpoint:
        return 0, []
    with checkpoint.as_directory() as folder:
        state = torch_load(Path(folder) / STATE_FILE)
    head = projection_head(worker.network)
    if ("head" in state) != (head is not None):  # the optimizer's parameters differ too: no resume
        raise ValueError(f"the checkpoint was trained {'with' if 'head' in state else 'without'} a projection "
                         f"head (--contrastive, --projection-dim) and this run {'has' if head else 'has none'}; "
                         "train the changed recipe into a new run directory")
    worker.model.load_state_dict(state["model"])
    if head is not None:
        head.load_state_dict(state["head"])
    worker.optimizer.load_state_dict(state["optimizer"])
    worker.scheduler.load_state_dict(state["scheduler"])
    if worker.rank == 0:
        print(f"[train] resuming after epoch {state['epoch']} of {config.epochs}", flush=True)
    return int(state["epoch"]), json.loads(state["history"])


def epoch_rows(rows: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """A worker's rows of an epoch, in the epoch's order: a permutation drawn from (seed, epoch)
    alone, so that a resumed run streams the same files in the same order, dealt out to the
    workers in turn (rows // world each, as data-parallel steps need).

    >>> epoch_rows(6, seed=0, epoch=1, rank=0, world=2).tolist() != epoch_rows(6, 0, 2, 0, 2).tolist()
    True
    """
    order = np.random.default_rng([seed, epoch]).permutation(rows)
    return order[: rows - rows % world][rank::world]


@dataclass(frozen=True)
class FolderStream:
    """An image folder's training split, streamed by each worker itself in the order of
    :func:`epoch_rows`: Ray Train's split of one dataset would stream every epoch in the folder's
    order (sorted by class), which a local shuffle buffer cannot undo."""

    manifest: object  # ObjectRef of the split's manifest (id, label, label_name, path)
    decode: FolderDecode

    @classmethod
    def of(cls, source: ImageSource) -> "FolderStream | None":
        import ray

        return cls(ray.put(source.manifest), source.folder) if source.folder else None

    def batches(self, columns: list[str], batch_size: int, seed: int, epoch: int, rank: int, world: int, device):
        """The epoch's batches of this worker's files, decoded once, in the epoch's order."""
        import ray

        manifest = ray.get(self.manifest)
        dataset = self.decode.dataset(manifest.take(epoch_rows(manifest.num_rows, seed, epoch, rank, world)))
        dataset.context.execution_options.preserve_order = True  # the order drawn, not the decode's finish order
        for batch in dataset.select_columns(columns).iter_torch_batches(batch_size=batch_size, device=device,
                                                                         prefetch_batches=2):
            yield {column: batch[column] for column in columns}


def in_lockstep(batches, device):
    """The batches while every worker still has one: in skip mode a worker's stream leaves out the
    unreadable files of its share, and the data-parallel steps of all workers must pair up."""
    if not distributed():
        yield from batches
        return
    for batch in itertools.chain(batches, [None]):
        more = torch.tensor([batch is not None], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(more, op=torch.distributed.ReduceOp.MIN)
        if not more.item():
            return
        yield batch


class ShardBatches:
    """A worker's batches of its train and test shards: kept in memory after the first read when
    they fit (``TrainConfig.shard_cache_gib``), else streamed: an image folder's training files
    in an order drawn per epoch (FolderStream), other sources' shards through a local shuffle.
    The first test images are kept (``sample``) for the reconstructions figure."""

    def __init__(self, plan: WorkerPlan, worker: Worker) -> None:
        import ray.train

        config = plan.config
        self.shards = {name: ray.train.get_dataset_shard(name) for name in ("train", "test")}  # [4] this worker's rows
        self.columns = ["image"] if config.mode == "autoencoder" else ["image", "label"]
        self.batch_size, self.seed, self.worker = config.batch_size // worker.world, config.seed, worker
        self.cache = cache_shards(plan.shard_bytes // worker.world, int(config.shard_cache_gib * 2**30), worker.device)
        self.cached: dict[str, CachedShard] = {}
        self.stream = plan.train_stream
        self.sample: torch.Tensor | None = None

    def __call__(self, name: str, epoch: int | None):
        """``name``'s batches; shuffled per ``epoch``, in order for None (evaluation)."""
        for batch in self.read(name, epoch):
            if name == "test" and self.sample is None:
                self.sample = batch["image"][:8].cpu()
            yield batch

    def read(self, name: str, epoch: int | None):
        seed = None if epoch is None else self.seed * 10_000 + epoch * 100 + self.worker.rank
        if self.cache:
            if name not in self.cached:  # read once, in the first epoch (its time counts there)
                self.cached[name] = CachedShard(self.shards[name], self.columns, self.worker.device)
            yield from self.cached[name].batches(self.batch_size, seed)
            return
        if name == "train" and self.stream is not None:
            yield from in_lockstep(self.stream.batches(self.columns, self.batch_size, self.seed, epoch,
                                                       self.worker.rank, self.worker.world, self.worker.device),
                                   self.worker.device)
            return
        shuffle = {} if seed is None else dict(local_shuffle_buffer_size=LOCAL_SHUFFLE_BUFFER, local_shuffle_seed=seed)
        for batch in self.shards[name].iter_torch_batches(
            batch_size=self.batch_size, device=self.worker.device, prefetch_batches=2, **shuffle
        ):
            yield {column: batch[column] for column in self.columns}


def run_epoch(worker: Worker, batches: ShardBatches, epoch: int, config: TrainConfig) -> dict:
    """One training epoch and one evaluation; the metrics summed over every worker."""
    started, cpu_started = time.perf_counter(), time.process_time()
    train_loss, train_seen = train_epoch(worker.network, batches("train", epoch), worker.optimizer, config.mode,
                                         worker.scheduler, config.augment, config.label_smoothing,
                                         recipe=Recipe.of(config), progress=epoch_progress(worker, batches, epoch, config))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    test_loss, correct, test_seen = evaluate(worker.network, batches("test", None), config.mode)
    train_loss, train_seen, test_loss, correct, test_seen, cpu_seconds = sum_over_workers(
        [train_loss, train_seen, test_loss, correct, test_seen, cpu_seconds], worker.device
    )
    return {
        "epoch": epoch,
        "train_loss": train_loss / max(train_seen, 1),
        "test_loss": test_loss / max(test_seen, 1),
        "test_accuracy": correct / test_seen if config.mode == "classifier" and test_seen else None,
        "images_per_s": train_seen / seconds,
        "epoch_seconds": seconds,
        # the workers' CPU time in the epoch (all their threads): / epoch_seconds = cores kept busy
        "cpu_seconds": cpu_seconds,
        "lr": worker.optimizer.param_groups[0]["lr"],
        "train_images": int(train_seen),
        "test_images": int(test_seen),
    }


def training_state(worker: Worker, history: list[dict], sample: torch.Tensor | None) -> dict:
    """What a checkpoint holds, and ``restore`` reads back."""
    state = {"model": worker.model.state_dict(), "optimizer": worker.optimizer.state_dict(),
             "scheduler": worker.scheduler.state_dict(), "epoch": history[-1]["epoch"],
             "history": json.dumps(history), "sample": sample}
    head = projection_head(worker.network)
    if head is not None:  # training's own: resumed with the model, never saved in model.pt
        state["head"] = head.state_dict()
    return state


def report_epoch(worker: Worker, plan: WorkerPlan, history: list[dict], sample: torch.Tensor | None) -> None:
    """Rank 0 writes the metrics and reports the checkpoint (with ``sample``, the first test images,
    so that the reconstructions figure decodes none again); the others report the metrics only."""
    import ray.train

    metrics = {name: value for name, value in history[-1].items() if value is not None}
    if worker.rank != 0:
        ray.train.report(metrics, checkpoint=None)  # [5] every worker reports each epoch
        return
    print_progress(history[-1], plan.config)
    write_metrics(Path(plan.run_dir), history)
    with tempfile.TemporaryDirectory() as folder:
        torch.save(training_state(worker, history, sample), Path(folder) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def sum_over_workers(values: list[float], device) -> list[float]:
    return summed_over_workers(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def epoch_progress(worker: Worker, batches: ShardBatches, epoch: int, config: TrainConfig):
    """Rank 0's progress lines inside an epoch (steps of its shard; the total known once cached)."""
    if worker.rank != 0:
        return None
    from pipelines.progress import Progress

    progress = Progress(f"[train] epoch {epoch}/{config.epochs}")

    def update(step: int) -> None:
        shard = batches.cached.get("train")
        progress.update(step, -(-shard.rows // batches.batch_size) if shard else None)

    return update


def print_progress(metrics: dict, config: TrainConfig) -> None:
    accuracy = f"  test acc {metrics['test_accuracy']:.4f}" if metrics["test_accuracy"] is not None else ""
    print(
        f"[train] epoch {metrics['epoch']}/{config.epochs}  train loss {metrics['train_loss']:.5f}  "
        f"test loss {metrics['test_loss']:.5f}{accuracy}  {metrics['images_per_s']:,.0f} images/s",
        flush=True,
    )


def torch_load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """The whole history, rewritten atomically: a resumed run never repeats an epoch's line."""
    write_text_atomic(run_dir / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in history))


def write_skipped_images(path: Path, skipped: list[tuple[str, str]]) -> None:
    """The images --on-bad-image skip left out, as CSV (path,error); a header only when none were."""
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    writer.writerow(["path", "error"])
    writer.writerows(sorted(skipped))
    write_text_atomic(path, lines.getvalue())


# --- the driver --------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    history: list[dict]
    resumed: bool


def plan_resources(config: TrainConfig, cluster_cpus: float, cluster_gpus: float) -> tuple[float, int]:
    """(CPUs each worker reserves, torch threads each worker uses).

    CPU workers leave one CPU of the cluster to Ray Data, which would otherwise wait forever for a
    CPU to feed them on a small machine. A GPU worker takes one CPU (or --cpus-per-worker): sharing
    out the head's CPUs would ask each GPU node for more CPUs than it has (cluster.yaml: 4)."""
    if config.gpus_per_worker > 0 and config.workers * config.gpus_per_worker > cluster_gpus:
        raise ResourceError(
            f"--workers {config.workers} x --gpus-per-worker {config.gpus_per_worker} needs "
            f"{config.workers * config.gpus_per_worker:g} GPUs; the cluster has {cluster_gpus:g}"
        )
    if config.gpus_per_worker > 0:  # a GPU worker needs a CPU to feed it, not the head's spare ones
        cpus = config.cpus_per_worker or 1.0
        return cpus, max(1, int(cpus))
    spare = max(cluster_cpus - 1.0, cluster_cpus / 2)
    cpus = config.cpus_per_worker or max(0.25, spare / config.workers)
    if config.workers * cpus > cluster_cpus:
        raise ResourceError(
            f"--workers {config.workers} x {cpus:g} CPUs each needs {config.workers * cpus:g} CPUs; "
            f"the cluster has {cluster_cpus:g}. Use fewer workers or a smaller --cpus-per-worker "
            "(training would otherwise wait forever for resources)"
        )
    if config.workers * cpus > spare + 1e-9:  # (spare / workers) * workers may round up
        raise ResourceError(
            f"--workers {config.workers} x {cpus:g} CPUs each leaves {cluster_cpus - config.workers * cpus:g} of "
            f"the cluster's {cluster_cpus:g} CPUs to Ray Data, which needs {cluster_cpus - spare:g} to feed the "
            "workers (training would otherwise wait forever for data). Use fewer workers or a smaller --cpus-per-worker"
        )
    threads = max(1, int(round(cluster_cpus / config.workers)) if config.cpus_per_worker is None else int(cpus))
    return cpus, threads


def ingest_options():
    """Ray Data's options for the workers' shards: Ray Train's defaults, in a fixed order.

    Without preserve_order, blocks (decoded by parallel tasks) and batches (formatted in Ray
    Data's thread pool) reach a worker in the order they happen to finish, so two runs with the
    same seed train on the same batches in another order and end with other weights."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def initial_model(spec: ModelSpec, config: TrainConfig, images=None, centroids: np.ndarray | None = None) -> Autoencoder:
    """Fresh weights (seeded), with the encoder of ``init_from`` when transferring; for cluster
    refinement (``config.clusters``) its decoder too, and ``centroids``, or (None) centroids placed
    from the codes of ``images`` (uint8, the training images; see :func:`place_centroids`)."""
    torch.manual_seed(config.seed)
    model = Autoencoder(spec)
    if config.init_from:
        source, _ = load_model(config.init_from)
        if source.spec.image_shape != spec.image_shape:
            raise ValueError(
                f"--init-from {config.init_from}: its encoder takes images {source.spec.image_shape}, "
                f"this data is {spec.image_shape}"
            )
        model.encoder.load_state_dict(source.encoder.state_dict())
        if config.mode == "autoencoder":  # the classifier's head is kept for the way back
            model.classifier.load_state_dict(source.classifier.state_dict())
        if config.clusters:  # refinement continues the autoencoder it starts from
            model.decoder.load_state_dict(source.decoder.state_dict())
    if config.clusters:
        if centroids is None and images is None:
            raise ValueError("cluster refinement needs the training images to place its centroids")
        if centroids is None:
            centroids = place_centroids(model, images, config.seed, config.cluster_init)
        with torch.no_grad():
            model.centroids.copy_(torch.from_numpy(centroids).float())
    return model


@torch.no_grad()
def encode(model: Autoencoder, images, batch_size: int = 1024) -> torch.Tensor:
    """Codes (N, code_dim) of uint8 images (N, H, W[, C]), in eval mode."""
    model.eval()
    chunks = (torch.from_numpy(np.array(images[i : i + batch_size])) for i in range(0, len(images), batch_size))
    return torch.cat([model.encoder(scale_images(chunk)) for chunk in chunks])


def place_centroids(model: Autoencoder, images, seed: int, start: str = "kmeans") -> np.ndarray:
    """IDEC's start: the centroids (k, code_dim) are KMeans's (10 starts) of ``model``'s codes of ``images``;
    ``start`` umap: each cluster's mean code, the clusters KMeans's of the codes' UMAP embedding
    (N2D's: 10 dimensions, min_dist 0, neighbours within a cluster's mean size)."""
    from sklearn.cluster import KMeans

    from pipelines.transforms import fit_transform, umap_neighbors_within

    codes, k = encode(model, images).numpy(), model.spec.clusters
    points = codes if start == "kmeans" else fit_transform(
        codes, ["umap"], umap_neighbors=umap_neighbors_within(len(codes), k), seed=seed)[1]
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(points)
    return np.stack([codes[clusters == j].mean(0) for j in range(k)])  # KMeans's own, for kmeans


def source_images(source: ImageSource) -> np.ndarray:
    """Every image of ``source`` as one uint8 array (for the centroids of cluster refinement)."""
    batches = source.dataset.select_columns(["image"]).iter_batches(batch_size=8192, batch_format="numpy")
    return np.concatenate([np.asarray(batch["image"]) for batch in batches])


def starting_model(spec: ModelSpec, config: TrainConfig, train_source: ImageSource, run_dir: Path) -> Autoencoder:
    """The model the workers start from. Cluster refinement's centroids are placed once per run and
    kept in ``run_dir`` (START_CENTROIDS_FILE): a rerun, which resumes from its checkpoint, does
    not place them again (a UMAP of every training code takes minutes on 60,000 images)."""
    if not config.clusters:
        return initial_model(spec, config)
    kept = run_dir / START_CENTROIDS_FILE
    if kept.exists():
        return initial_model(spec, config, centroids=np.load(kept))
    model = initial_model(spec, config, source_images(train_source))
    with atomic_output(kept) as tmp, open(tmp, "wb") as file:
        np.save(file, model.centroids.detach().numpy())
    return model


def worker_plan(config: TrainConfig, spec: ModelSpec, threads: int, run_dir: Path, train_source: ImageSource,
                test_source: ImageSource) -> WorkerPlan:
    """What every worker is sent: the starting weights, the sizes it plans with, an image folder's stream."""
    return WorkerPlan(
        config=config, spec=spec, threads=threads,
        initial_state=starting_model(spec, config, train_source, run_dir).state_dict(),
        run_dir=str(run_dir), train_images=train_source.num_images,
        shard_bytes=(train_source.num_images + test_source.num_images)
        * (spec.height * spec.width * spec.channels + (8 if config.mode == "classifier" else 0)),
        train_stream=FolderStream.of(train_source),
    )


def train(data: DataConfig, config: TrainConfig, run_dir: str | Path) -> TrainResult:
    """Train into ``run_dir``; a rerun resumes after the last finished epoch (or does nothing).
    With ``pretrain_epochs``, the autoencoder that cluster refinement starts from is trained
    first (:func:`pretrain`)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.runtime import bundles, fit_or_grow, releasing_resources

    run_dir = Path(run_dir).resolve()
    config = pretrain(data, config, run_dir) if config.pretrain_epochs else config
    # A cluster too small now may grow: its autoscaler is asked for the workers and a CPU for Ray Data.
    cpus, threads = fit_or_grow(lambda cluster_cpus, cluster_gpus: plan_resources(config, cluster_cpus, cluster_gpus),
                                [{"CPU": 1.0}, *bundles(config.workers, config.cpus_per_worker or 1.0,
                                                        config.gpus_per_worker)], config.resource_timeout)
    train_source = load_images(data, config.split)
    test_source = load_images(data, "test")
    if config.mode == "classifier" and not train_source.class_names:
        raise ValueError(f"--mode classifier needs labels; {train_source.name} has none (a flat folder)")
    spec = ModelSpec(
        height=train_source.height,
        width=train_source.width,
        channels=train_source.channels,
        num_classes=max(1, train_source.num_classes),
        dropout=config.classifier_dropout, code_dim=config.code_dim, clusters=config.clusters,
    )
    done = read_metrics(run_dir)
    if (run_dir / MODEL_FILE).exists() and done and done[-1]["epoch"] >= config.epochs:
        print(f"[train] {run_dir} already holds {done[-1]['epoch']} epochs; nothing to do")
        return TrainResult(run_dir, run_dir / MODEL_FILE, done, resumed=True)

    run_dir.mkdir(parents=True, exist_ok=True)
    plan = worker_plan(config, spec, threads, run_dir, train_source, test_source)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"plan": plan},
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.gpus_per_worker > 0,
            resources_per_worker={"CPU": cpus, **({"GPU": config.gpus_per_worker} if config.gpus_per_worker else {})},
        ),
        run_config=ray.train.RunConfig(
            name=run_dir.name,
            storage_path=str(run_dir.parent),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={
            "train": train_source.dataset.select_columns(["image", "label"]),
            "test": test_source.dataset.select_columns(["image", "label"]),
        },
        dataset_config=ray.train.DataConfig(execution_options=ingest_options()),
    )
    # After the fit, the autoscaler may take the nodes it added for it away again (releasing_resources).
    with failing_on_bad_images(train_source, test_source), releasing_resources():  # the decode is the workers'
        result = trainer.fit()
    if data.on_bad_image == "skip":
        write_skipped_images(run_dir / SKIPPED_IMAGES_FILE, train_source.skipped + test_source.skipped)
    return finish(run_dir, result.checkpoint, spec, test_source, config)


def pretrain(data: DataConfig, config: TrainConfig, run_dir: Path) -> TrainConfig:
    """Train (or resume) the autoencoder of ``config.pretrain_epochs`` in ``run_dir/pretrain``;
    the refinement's config: from that model, by IDEC's loss alone (no corruption, no contrast)."""
    pretrained = train(data, replace(config, epochs=config.pretrain_epochs, pretrain_epochs=0, clusters=0),
                       run_dir / PRETRAIN_DIR)
    return replace(config, pretrain_epochs=0, init_from=str(pretrained.model_path), corrupt="none", contrastive=0.0)


def finish(run_dir: Path, checkpoint, spec: ModelSpec, test_source: ImageSource, config: TrainConfig) -> TrainResult:
    """From the last checkpoint: the final model file, metrics.jsonl and the figures."""
    with checkpoint.as_directory() as folder:
        state = torch_load(Path(folder) / STATE_FILE)
    history = json.loads(state["history"])
    model = Autoencoder(spec)
    model.load_state_dict(state["model"])
    model.eval()
    save_model(run_dir / MODEL_FILE, model, mode=config.mode, epochs=len(history), dataset=test_source.name)
    write_metrics(run_dir, history)
    plots.loss_curve(history, run_dir / "loss_curve.png", title=f"{config.mode} on {test_source.name}")
    with torch.no_grad():
        inputs = scale_images(state["sample"])
        reconstructions = model(inputs)[0]
    plots.image_grid(
        [inputs.numpy(), reconstructions.numpy()],
        run_dir / "reconstructions.png",
        ["test images", "reconstructions"],
        title=f"epoch {len(history)}",
    )
    last = history[-1]
    print(
        f"[train] done: {len(history)} epochs, test loss {last['test_loss']:.5f}"
        + (f", test accuracy {last['test_accuracy']:.4f}" if last.get("test_accuracy") is not None else "")
        + f"; model in {run_dir / MODEL_FILE}"
    )
    return TrainResult(run_dir, run_dir / MODEL_FILE, history, resumed=False)
