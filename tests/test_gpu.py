"""On a GPU the model computes what it computes on the CPU (``pytest -m gpu`` on a machine with CUDA;
``make test`` leaves these out, and they fail, not skip, where CUDA is missing)."""

from __future__ import annotations

import copy

import pytest
import torch

from pipelines.model import Autoencoder, scale_images
from pipelines.train import batch_loss, training_network

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def strict_fp32():
    """TF32 convolutions and matmuls trade about 3 decimal digits for speed: compare without them."""
    assert torch.cuda.is_available(), "the gpu tests need CUDA; run them where a GPU is present"
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / (b.abs().max() or 1.0))


def test_features_and_reconstruction_errors_equal_the_cpus(fashion_mnist_images):
    torch.manual_seed(0)
    model = Autoencoder().eval()
    inputs = scale_images(torch.from_numpy(fashion_mnist_images[:1024].copy()))
    with torch.no_grad():
        reconstructions, codes = model(inputs)
        on_gpu = copy.deepcopy(model).cuda()
        reconstructions_gpu, codes_gpu = on_gpu(inputs.cuda())
    assert relative_difference(codes_gpu, codes) < 1e-4
    assert relative_difference(reconstructions_gpu, reconstructions) < 1e-4


def test_one_training_step_gives_the_cpus_loss_and_gradients(fashion_mnist_images):
    images = torch.from_numpy(fashion_mnist_images[:64].copy())
    losses, gradients = [], []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        network = training_network(Autoencoder(), "autoencoder").to(device)
        loss = batch_loss(network, images.to(device), None, "autoencoder")
        loss.backward()
        losses.append(loss)
        gradients.append(torch.cat([p.grad.flatten() for p in network.parameters()]))
    assert relative_difference(losses[1], losses[0]) < 1e-4
    assert relative_difference(gradients[1], gradients[0]) < 1e-3
