"""NT-Xent and IDEC's target are terms of the whole batch: on two data-parallel workers, each
holding part of it, they must compute what one process computes on the whole batch (two gloo processes,
no Ray: what each Ray Train worker's process group does)."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipelines.runtime import free_loopback_port
from pipelines.train import cluster_loss, contrastive_loss, soft_assignment

IMAGES, FEATURES, CODE, CLUSTERS = 8, 6, 4, 3


def batch(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(*shape, generator=generator) for name, shape in
            [("first", (IMAGES, FEATURES)), ("second", (IMAGES, FEATURES)), ("weight", (FEATURES, CODE)),
             ("centroids", (CLUSTERS, CODE))]}


def loss_and_gradient(data: dict, rows: slice) -> tuple[float, torch.Tensor]:
    """Both terms of a linear encoder over ``rows`` of the batch, and their gradient."""
    weight = data["weight"].clone().requires_grad_()
    first, second = data["first"][rows] @ weight, data["second"][rows] @ weight
    loss = contrastive_loss(first, second) + cluster_loss(soft_assignment(first, data["centroids"]))
    loss.backward()
    return loss.item(), weight.grad


def worker(rank: int, port: int, shares: list, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    data = batch()
    torch.save([loss_and_gradient(data, share[rank]) for share in shares], f"{folder}/{rank}.pt")
    dist.destroy_process_group()


def test_two_workers_compute_the_whole_batchs_terms_and_gradient(tmp_path):
    halves, uneven = [slice(0, 4), slice(4, 8)], [slice(0, 5), slice(5, 8)]
    mp.spawn(worker, args=(free_loopback_port(), [halves, uneven], str(tmp_path)), nprocs=2)
    (half0, uneven0), (half1, uneven1) = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    whole_loss, whole_gradient = loss_and_gradient(batch(), slice(None))

    # DDP averages the workers' gradients: with equal shares, that is the whole batch's
    assert abs((half0[0] + half1[0]) / 2 - whole_loss) < 1e-5
    assert torch.allclose((half0[1] + half1[1]) / 2, whole_gradient, atol=1e-6)
    # shares of 5 and 3 images: each worker's loss is the mean over its own rows of the whole batch's terms
    assert abs((5 * uneven0[0] + 3 * uneven1[0]) / 8 - whole_loss) < 1e-5
    # one worker alone, on its share, computes another loss: the gather is what makes them equal
    assert abs(loss_and_gradient(batch(), halves[0])[0] - half0[0]) > 1e-3
