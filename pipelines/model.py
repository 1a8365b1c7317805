"""The convolutional autoencoder (with an optional classifier head) and its checkpoints.

The family rule, for an input of ``channels`` x H x W:

* stride-2 3x3 convolutions halve the image (rounding up) until both sides are at most 7;
  their widths are 32, 128, then 256 for every further stage;
* a last convolution whose kernel is the remaining H' x W' maps to the code (1x1 spatial; 512-d in
  the seed, ``code_dim`` wide in general);
* the decoder mirrors it with transposed convolutions, each ``output_padding`` chosen so that
  every stage gives back exactly the size the encoder took in; a Sigmoid ends it (pixels in [0, 1]).

At 28x28x1 this is exactly the seed: Conv(1,32,3,s2,p1) SiLU Conv(32,128,3,s2,p1) SiLU
Conv(128,512,7), mirrored. A 64x64 face gets four stride-2 stages (32, 16, 8, 4) and a 4x4 last
kernel; 112x92 gets four (7x6 at the end): more stages rather than one huge last kernel.

Checkpoints are plain dicts of state dicts and JSON-able values, read with
``torch.load(..., weights_only=True)``; a whole pickled model is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from pipelines.rundir import MODEL_FILE
from pipelines.storage import atomic_output

CODE_DIM = 512
MAX_FINAL_SIDE = 7
STAGE_WIDTHS = (32, 128)
DEEP_STAGE_WIDTH = 256


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to rebuild the network: stored in every checkpoint."""

    height: int = 28
    width: int = 28
    channels: int = 1
    num_classes: int = 10
    code_dim: int = CODE_DIM
    dropout: float = 0.5  # the classifier head's (nn.Dropout's default, as in the seed); no weights
    clusters: int = 0  # cluster refinement (IDEC): centroids in the code space; 0: none (the seed)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


def stage_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Spatial sizes from the input down to the last convolution's input, by the family rule."""
    sizes = [(height, width)]
    while max(sizes[-1]) > MAX_FINAL_SIDE or len(sizes) - 1 < len(STAGE_WIDTHS):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def stage_widths(n_stages: int) -> list[int]:
    return [*STAGE_WIDTHS, *[DEEP_STAGE_WIDTH] * (n_stages - len(STAGE_WIDTHS))][:n_stages]


class CodeConv2d(nn.Conv2d):
    """A convolution whose kernel covers its whole input, computed as the matrix product it is.

    Same parameters and result as ``nn.Conv2d``; PyTorch's CPU convolution kernels are about
    30x slower than one GEMM at this shape (see BENCHMARKS.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.kernel_size:
            return super().forward(x)
        return nn.functional.linear(x.flatten(1), self.weight.flatten(1), self.bias)[:, :, None, None]


class CodeConvTranspose2d(nn.ConvTranspose2d):
    """The decoder's first layer (1x1 code to the kernel's size), as a matrix product."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (1, 1):
            return super().forward(x, output_size)
        out = (x.flatten(1) @ self.weight.flatten(1)).view(len(x), self.out_channels, *self.kernel_size)
        return out + self.bias[None, :, None, None]


class Autoencoder(nn.Module):
    """Encoder to a ``code_dim`` vector, mirrored decoder, and a small classifier head on the code."""

    def __init__(self, spec: ModelSpec = ModelSpec()) -> None:
        super().__init__()
        self.spec = spec
        sizes = stage_sizes(spec.height, spec.width)
        widths = stage_widths(len(sizes) - 1)
        final_kernel = sizes[-1]

        encoder: list[nn.Module] = []
        in_ch = spec.channels
        for out_ch in widths:
            encoder += [nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1), nn.SiLU()]
            in_ch = out_ch
        encoder += [CodeConv2d(in_ch, spec.code_dim, final_kernel), nn.Flatten()]
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [
            nn.Unflatten(1, (spec.code_dim, 1, 1)),
            CodeConvTranspose2d(spec.code_dim, widths[-1], final_kernel),
        ]
        out_widths = [*reversed(widths[:-1]), spec.channels]
        # A stride-2 transposed conv gives 2n - 1 + output_padding: pad by one where the
        # encoder's input side was even, so every size comes back exactly.
        for in_ch, out_ch, (h, w) in zip(reversed(widths), out_widths, reversed(sizes[:-1])):
            decoder += [
                nn.SiLU(),
                nn.ConvTranspose2d(
                    in_ch, out_ch, 3, stride=2, padding=1, output_padding=(1 - h % 2, 1 - w % 2)
                ),
            ]
        decoder.append(nn.Sigmoid())
        self.decoder = nn.Sequential(*decoder)

        # Logits: cross-entropy applies its own softmax (the seed's extra sigmoid is not copied).
        self.classifier = nn.Sequential(
            nn.Linear(spec.code_dim, 64), nn.ReLU(), nn.Dropout(spec.dropout), nn.Linear(64, spec.num_classes)
        )
        # Only a refinement model has them: the seed's weights (and fingerprints) are unchanged.
        if spec.clusters:
            self.centroids = nn.Parameter(torch.zeros(spec.clusters, spec.code_dim))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, C, H, W) in [0, 1] -> (reconstructions, codes)."""
        codes = self.encoder(images)
        return self.decoder(codes), codes

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(images))


def scale_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) -> float (N, C, H, W) in [0, 1].

    Images travel as uint8 (4x less to move) and are scaled where the model runs. The result
    has plain NCHW strides: a permuted (N, H, W, 1) view is NCHW and channels-last at once, and
    then the first convolution's weight gradient comes out channels-last, which DDP copies into
    its bucket every step with the warning "Grad strides do not match bucket view strides"."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    else:
        images = images.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)  # uint8: a cheap copy
    return images.float().div_(255.0)


@torch.no_grad()
def encode_batch(model: Autoencoder, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [n, code_dim], reconstruction MSE per image [n]) of uint8 images (n, H, W[, C]) on the
    model's device: what a feature table holds for each image."""
    inputs = scale_images(images)
    reconstructions, codes = model(inputs)
    return codes, (reconstructions - inputs).square().flatten(1).mean(1)


def save_model(path: str | Path, model: Autoencoder, **info: object) -> None:
    """Write the weights and the spec (plus JSON-able ``info``) atomically."""
    payload = {
        "spec": asdict(model.spec),
        "state_dict": model.state_dict(),
        "info": json.dumps(info),
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def resolve_model_path(path: str | Path) -> Path:
    """A run directory (or a training stage directory) or a model file -> the model file."""
    path = Path(path)
    candidates = [path, path / MODEL_FILE, path / "train" / MODEL_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no model at {path}: expected a {MODEL_FILE} file, or a run directory holding one "
        "(train with `python -m jobs.train --run-dir DIR` first)"
    )


def load_model(path: str | Path) -> tuple[Autoencoder, dict]:
    """Rebuild the model from a checkpoint file or run directory; returns (model in eval mode, info)."""
    file = resolve_model_path(path)
    try:
        with warnings.catch_warnings():  # torch warns of pickle protocols it did not write itself
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise ValueError(
            f"{file} is not a featurelens checkpoint (a dict of state dicts readable with "
            f"weights_only=True; anything else is refused, never unpickled): {unpickling_reason(error)}"
        ) from None
    if not isinstance(payload, dict) or not {"spec", "state_dict"} <= payload.keys():
        raise ValueError(f"{file} is not a featurelens checkpoint: expected keys 'spec' and 'state_dict'")
    model = Autoencoder(ModelSpec(**payload["spec"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{file} holds weights of another architecture: {error}") from None
    return model.eval(), json.loads(payload.get("info", "{}"))


def unpickling_reason(error: Exception) -> str:
    """The gist of torch's refusal (its message runs to a paragraph, and advises weights_only=False)."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please use|\n\n|$)", str(error), re.DOTALL)
    return found.group(1).strip() if found else f"{type(error).__name__}: {error}"


def fingerprint(model: nn.Module) -> str:
    """sha256 of the weights (names, shapes, bytes): names the model a feature table came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
