"""The limit: FLOPs per image of a training step against the machine's measured GEMM peak.

    python -m benchmarks.flops [--quick] [--threads N] [--batch 64]

Counts the multiply-accumulates of every convolution, transposed convolution and linear layer
of the training network (encoder + decoder) with forward hooks: FLOPs = 2 x MACs; a training
step = 3 x the forward (forward, gradient of the input, gradient of the weights). Then measures,
in the same process and with all cores:

* the GEMM peak: a 1024^3 fp32 matmul (the machine's practical ceiling);
* each layer at the training batch: forward and backward milliseconds and GFLOP/s, so that the
  table shows which layer falls short of the GEMM rate and by how much;
* the rest of a step: element-wise ops, the loss, the optimizer;
* the whole warm training step (the plain loop's ``train_epoch``) in images/s, and from it the
  share of the GEMM peak that training reaches.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import Table, child_argv, cpu_count, log, median, report_result, run_child, spread


def layer_macs(spec=None, mode: str = "autoencoder") -> list[dict]:
    """[{name, kind, shape, macs}] per image for every conv / transposed conv / linear layer."""
    import torch
    from torch import nn

    from pipelines.model import Autoencoder, ModelSpec
    from pipelines.training import training_network

    spec = spec or ModelSpec()
    network = training_network(Autoencoder(spec), mode)
    rows: list[dict] = []

    def hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, nn.ConvTranspose2d):
            # every input pixel scatters in_ch x out_ch x kh x kw products
            macs = x[0].numel() * module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            kind = "conv-transpose"
        elif isinstance(module, nn.Conv2d):
            macs = output[0].numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            kind = "conv"
        else:
            macs = module.in_features * module.out_features
            kind = "linear"
        rows.append({"name": names[module], "kind": kind, "type": type(module).__name__,
                     "in": list(x.shape[1:]), "out": list(output.shape[1:]), "macs": int(macs)})

    # training_network is Sequential(encoder, head): name the layers as the Autoencoder does
    names = {m: n.replace("0.", "encoder.", 1) if n.startswith("0.") else n.replace("1.", "decoder.", 1)
             for n, m in network.named_modules()}
    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.no_grad():
        network(torch.zeros(1, *spec.image_shape))
    for handle in handles:
        handle.remove()
    return rows


def training_flops_per_image(rows: list[dict]) -> float:
    """3 x 2 x MACs (forward, input gradient, weight gradient)."""
    return 6.0 * sum(row["macs"] for row in rows)


def exact_training_flops_per_image(rows: list[dict]) -> float:
    """As above, less the first layer's input gradient, which backward does not compute."""
    return training_flops_per_image(rows) - 2.0 * rows[0]["macs"]


# With one torch thread every op runs in the calling thread, so its CPU time measures the work
# itself, whatever else the machine runs; with more threads only the wall clock is meaningful.
CLOCK = {"clock": time.perf_counter}


def timed(fn, reps: int, inner: int) -> float:
    """Median seconds of one call of ``fn`` over ``reps`` timings of ``inner`` calls each."""
    clock = CLOCK["clock"]
    fn()
    samples = []
    for _ in range(reps):
        started = clock()
        for _ in range(inner):
            fn()
        samples.append((clock() - started) / inner)
    return median(samples)


def gemm_gflops(n: int = 1024, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    seconds = timed(lambda: torch.mm(a, b, out=out), reps, inner=5)
    return 2 * n**3 / seconds / 1e9


def layer_timings(batch: int, reps: int) -> list[dict]:
    """Forward and backward (input and weight gradients) of each layer alone, at the training batch."""
    import torch
    from torch import nn

    from pipelines.model import Autoencoder
    from pipelines.training import training_network

    torch.manual_seed(0)
    network = training_network(Autoencoder(), "autoencoder")
    layers = [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    rows = layer_macs()
    results = []
    for layer, row in zip(layers, rows):
        x = torch.rand(batch, *row["in"], requires_grad=row is not rows[0])
        y = layer(x)
        grad = torch.rand_like(y)
        inputs = [layer.weight, layer.bias] + ([x] if x.requires_grad else [])
        forward = timed(lambda: layer(x), reps, inner=3)
        backward = timed(lambda: torch.autograd.grad(layer(x), inputs, grad), reps, inner=3) - forward
        flops = 2.0 * row["macs"] * batch
        results.append({**row, "forward_ms": forward * 1e3, "backward_ms": backward * 1e3,
                        "forward_gflops": flops / forward / 1e9,
                        "backward_gflops": (2 * flops - (flops if row is rows[0] else 0)) / max(backward, 1e-9) / 1e9})
    return results


def step_timings(batch: int, steps: int, reps: int) -> dict:
    """The warm training step of the plain loop, and its parts: forward, backward, optimizer."""
    import torch

    from pipelines.config import TrainConfig
    from pipelines.data import fashion_mnist_arrays
    from pipelines.model import ModelSpec, scale_images
    from pipelines.training import batch_loss, build_optimizer, initial_model, train_epoch, training_network

    images, _ = fashion_mnist_arrays("train")
    x = torch.from_numpy(images[: batch * steps].copy())
    batches = [{"image": x[i : i + batch]} for i in range(0, len(x), batch)]
    config = TrainConfig(batch_size=batch)
    network = training_network(initial_model(ModelSpec(), config), "autoencoder")
    optimizer, _ = build_optimizer(network, config)
    train_epoch(network, batches[:3], optimizer, "autoencoder")  # warm-up: oneDNN primitives, allocations

    epoch = timed(lambda: train_epoch(network, batches, optimizer, "autoencoder"), reps, inner=1)
    one = batches[0]["image"]
    forward = timed(lambda: batch_loss(network, one, None, "autoencoder"), reps, inner=3)

    def forward_backward():
        optimizer.zero_grad(set_to_none=True)
        batch_loss(network, one, None, "autoencoder").backward()

    both = timed(forward_backward, reps, inner=3)
    optimizer_step = timed(optimizer.step, reps, inner=3)
    scale = timed(lambda: scale_images(one), reps, inner=10)
    return {"images_per_s": len(x) / epoch, "step_ms": epoch / len(batches) * 1e3, "forward_ms": forward * 1e3,
            "backward_ms": (both - forward) * 1e3, "optimizer_ms": optimizer_step * 1e3, "scale_ms": scale * 1e3}


def child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.threads == 1:
        CLOCK["clock"] = time.thread_time
    rows = layer_macs()
    report_result({
        "layers": rows,
        "flops_per_image": training_flops_per_image(rows),
        "exact_flops_per_image": exact_training_flops_per_image(rows),
        "gemm_gflops": gemm_gflops(reps=args.reps),
        "layer_timings": layer_timings(args.batch, args.reps),
        "step": step_timings(args.batch, args.steps, args.reps),
        "gemm_gflops_after": gemm_gflops(reps=args.reps),  # the load may change while this runs
    })


def measure(threads: int, batch: int, quick: bool, repeats: int) -> list[dict]:
    results = []
    for rep in range(repeats):
        log(f"flops: repetition {rep + 1}/{repeats} ({threads} thread{'s' if threads > 1 else ''}, batch {batch})")
        results.append(run_child("benchmarks.flops", ["--threads", str(threads), "--batch", str(batch),
                                                      "--steps", "10" if quick else "20", "--reps", "2" if quick else "3"]))
    return results


def run(quick: bool = False, threads: int | None = None, batch: int = 64, repeats: int | None = None,
        train_images_per_s: list[float] | None = None) -> list[Table]:
    threads = threads or cpu_count()
    repeats = repeats or (1 if quick else 3)
    one = measure(1, batch, quick, repeats)
    every = measure(threads, batch, quick, repeats) if threads > 1 else one
    first = one[0]
    flops = first["flops_per_image"]

    count = Table("Training FLOPs per image (28x28x1 autoencoder, counted by forward hooks)",
                  ["layer", "type", "in -> out (C,H,W)", "forward MACs/image", "training MFLOP/image (6 x MACs)"])
    for row in first["layers"]:
        count.add(row["name"], row["type"], f"{tuple(row['in'])} -> {tuple(row['out'])}", f"{row['macs']:,}",
                  f"{6 * row['macs'] / 1e6:.2f}")
    total = sum(row["macs"] for row in first["layers"])
    count.add("**total**", "", "", f"{total:,}", f"**{flops / 1e6:.1f}**")
    count.notes.append(f"Forward {2 * total / 1e6:.1f} MFLOP/image; a training step 3x that = {flops / 1e6:.1f} MFLOP/image "
                       f"(exactly {first['exact_flops_per_image'] / 1e6:.1f}: the first layer needs no input gradient). "
                       "Element-wise ops (SiLU, Sigmoid, MSE, Adam) are not counted: they are memory-bound, not FLOP-bound.")

    def peak(r: dict) -> float:
        return max(r["gemm_gflops"], r["gemm_gflops_after"])

    layers = Table(f"Each layer alone at batch {batch}, one thread, CPU time (median of {len(one)} runs; "
                   f"GEMM peak {median([peak(r) for r in one]):.1f} GFLOP/s per core)",
                   ["layer", "forward ms", "forward GFLOP/s", "backward ms", "backward GFLOP/s", "share of the step"])
    step = {key: median([r["step"][key] for r in one]) for key in first["step"]}
    for i, row in enumerate(first["layer_timings"]):
        per = [r["layer_timings"][i] for r in one]
        fwd, bwd = median([p["forward_ms"] for p in per]), median([p["backward_ms"] for p in per])
        layers.add(f"{row['name']} {row['type']}", f"{fwd:.2f}", f"{median([p['forward_gflops'] for p in per]):.1f}",
                   f"{bwd:.2f}", f"{median([p['backward_gflops'] for p in per]):.1f}", f"{(fwd + bwd) / step['step_ms']:.0%}")
    in_layers = sum(median([r["layer_timings"][i]["forward_ms"] + r["layer_timings"][i]["backward_ms"] for r in one])
                    for i in range(len(first["layer_timings"])))
    layers.notes.append(
        f"Whole warm step: {step['step_ms']:.1f} ms = forward {step['forward_ms']:.1f} + backward {step['backward_ms']:.1f} "
        f"+ fused Adam {step['optimizer_ms']:.1f} (+ uint8 scaling {step['scale_ms']:.2f}) ms; the conv/linear layers "
        f"alone {in_layers:.1f} ms, the rest (SiLU, Sigmoid, MSE, Adam, autograd) {step['step_ms'] - in_layers:.1f} ms.")

    limit = Table("The limit: share of the machine's GEMM peak that training reaches", ["measure", "one core (CPU time)",
                  f"{threads} cores (wall clock)"])
    rows = {}
    for label, results in (("one", one), ("every", every)):
        peaks = [peak(r) for r in results]
        rates = [r["step"]["images_per_s"] for r in results]
        shares = [rate * flops / 1e9 / p for rate, p in zip(rates, peaks)]
        rows[label] = (peaks, rates, shares)
    limit.add("GEMM peak, 1024^3 fp32 matmul (GFLOP/s)", *(spread(rows[k][0], 1) for k in ("one", "every")))
    limit.add("training FLOPs per image (MFLOP)", f"{flops / 1e6:.1f}", f"{flops / 1e6:.1f}")
    limit.add(f"plain warm training step, batch {batch} (images/s)", *(spread(rows[k][1]) for k in ("one", "every")))
    limit.add("achieved (GFLOP/s)", *(spread([r * flops / 1e9 for r in rows[k][1]], 1) for k in ("one", "every")))
    limit.add("**share of the GEMM peak**", *(f"**{median(rows[k][2]):.0%}** ({min(rows[k][2]):.0%}-{max(rows[k][2]):.0%})"
                                             for k in ("one", "every")))
    limit.add("images/s at 100% of the GEMM peak", *(f"{median(rows[k][0]) * 1e9 / flops:,.0f}" for k in ("one", "every")))
    if train_images_per_s:
        share = median(train_images_per_s) * flops / 1e9 / median(rows["every"][0])
        limit.add("share reached by the training benchmark's plain epoch (cold, shuffled)", "", f"{share:.0%}")
    limit.notes.append("one core: torch.set_num_threads(1), timed in the thread's CPU time, which other processes on a "
                       "shared machine hardly change; all cores: wall clock, which they do (see the load average).")
    return [count, layers, limit]


def main() -> None:
    argv = child_argv()
    if argv is not None:
        return child(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short repetition (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    for table in run(args.quick, args.threads, args.batch, args.repeats):
        print(table.markdown())


if __name__ == "__main__":
    main()
