"""Training: the plain PyTorch step, and Ray Train runs on real Fashion-MNIST subsets."""

import shutil

import pytest
import torch
from torch import nn

from pipelines.config import DataConfig, TrainConfig
from pipelines.data import fashion_mnist_arrays, load_images
from pipelines.model import Autoencoder, ModelSpec, load_model, save_model, scale_images
from pipelines.errors import ResourceError
from pipelines.rundir import read_metrics
from pipelines.train import (
    FolderStream,
    augment_images,
    batch_loss,
    build_optimizer,
    epoch_rows,
    evaluate,
    initial_model,
    plan_resources,
    train,
    train_epoch,
    training_network,
)


def real_batches(n: int, batch_size: int = 32) -> list[dict]:
    images, labels = fashion_mnist_arrays("train")
    return [
        {"image": torch.from_numpy(images[i : i + batch_size].copy()), "label": torch.from_numpy(labels[i : i + batch_size])}
        for i in range(0, n, batch_size)
    ]


@pytest.mark.parametrize("mode", ["autoencoder", "classifier"])
def test_plain_training_step_lowers_the_loss_without_ray(mode):
    torch.manual_seed(0)
    model = Autoencoder()
    network = training_network(model, mode)
    optimizer, _ = build_optimizer(network, TrainConfig(mode=mode, classifier_lr=1e-3))
    batches = real_batches(512)
    before, _, seen = evaluate(network, batches, mode)
    for _ in range(3):
        train_epoch(network, batches, optimizer, mode)
    after, correct, _ = evaluate(network, batches, mode)
    assert after < 0.7 * before
    if mode == "classifier":
        assert correct / seen > 0.5


def lr_after(steps: int, config: TrainConfig, steps_per_epoch: int) -> float:
    optimizer, scheduler = build_optimizer(nn.Linear(2, 1), config, steps_per_epoch)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


def test_the_step_schedule_is_the_seeds_steplr_counted_in_steps():
    config = TrainConfig(lr=1e-3, lr_step=2, lr_gamma=0.1, epochs=6)
    assert [lr_after(steps, config, 5) for steps in (0, 9, 10, 20)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])


def test_the_cosine_schedule_halves_the_rate_half_way_and_ends_at_zero():
    config = TrainConfig(lr=2e-3, lr_schedule="cosine", epochs=2)
    assert [lr_after(steps, config, 10) for steps in (0, 10, 20, 25)] == pytest.approx([2e-3, 1e-3, 0, 0], abs=1e-12)


def test_flip_augmentation_mirrors_about_half_of_the_images_and_nothing_else():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (400, 6, 5, 3), dtype=torch.uint8)
    augmented = augment_images(images, "flip")
    mirrored = (augmented == images.flip(2)).flatten(1).all(1)
    unchanged = (augmented == images).flatten(1).all(1)
    assert (mirrored | unchanged).all() and 150 < mirrored.sum() < 250
    assert augment_images(images, "none") is images


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` moved dy rows down and dx columns right, zeros shifted in (the reference)."""
    out = torch.zeros_like(image)
    height, width = image.shape[:2]
    out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = \
        image[max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)]
    return out


@pytest.mark.parametrize("shape", [(300, 6, 5), (300, 6, 5, 3)])
def test_shift_augmentation_moves_each_image_by_at_most_two_pixels(shape):
    torch.manual_seed(0)
    images = torch.randint(1, 256, shape, dtype=torch.uint8)  # no zeros: a shift is told by the zeros it brings in
    augmented = augment_images(images, "shift")
    moves = []
    for image, result in zip(images, augmented):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(shifted(image, dy, dx), result)]
        assert len(matches) == 1
        moves.append(matches[0])
    assert len(set(moves)) == 25  # every move of the 5 x 5 happens, (0, 0) among them


def test_flip_and_shift_together_is_a_mirror_image_moved():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (200, 6, 5), dtype=torch.uint8)
    augmented = augment_images(images, "flip+shift")
    mirrored = 0
    for image, result in zip(images, augmented):
        plain = any(torch.equal(shifted(image, dy, dx), result) for dy in range(-2, 3) for dx in range(-2, 3))
        flipped = any(torch.equal(shifted(image.flip(1), dy, dx), result) for dy in range(-2, 3) for dx in range(-2, 3))
        assert plain or flipped
        mirrored += flipped and not plain
    assert 60 < mirrored < 140


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
    torch.manual_seed(0)
    network = training_network(Autoencoder(), "classifier")
    images, labels = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8), torch.arange(8) % 10
    network.eval()  # no dropout: the same logits for both losses
    logits = network(scale_images(images))
    targets = torch.full((8, 10), 0.1 / 10).scatter_(1, labels[:, None], 1 - 0.1 + 0.1 / 10)
    expected = -(targets * logits.log_softmax(1)).sum(1).mean()
    assert batch_loss(network, images, labels, "classifier", label_smoothing=0.1).item() == pytest.approx(expected.item())
    assert batch_loss(network, images, labels, "classifier").item() == pytest.approx(
        nn.functional.cross_entropy(logits, labels).item())


def test_resources_leave_a_cpu_for_ray_data():
    cpus, threads = plan_resources(TrainConfig(workers=2), cluster_cpus=2, cluster_gpus=0)
    assert cpus * 2 <= 1.0 and threads == 1
    cpus, threads = plan_resources(TrainConfig(workers=1), cluster_cpus=2, cluster_gpus=0)
    assert cpus <= 1.0 and threads == 2
    # cluster.yaml grown: an 8-CPU head and two 4-CPU GPU nodes; each GPU worker fits a GPU node
    assert plan_resources(TrainConfig(workers=2, gpus_per_worker=1), cluster_cpus=16, cluster_gpus=2) == (1.0, 1)


def test_more_workers_than_the_cluster_holds_is_a_clear_error():
    with pytest.raises(ResourceError, match="the cluster has 2"):
        plan_resources(TrainConfig(workers=4, cpus_per_worker=1), cluster_cpus=2, cluster_gpus=0)
    with pytest.raises(ResourceError, match="GPUs"):
        plan_resources(TrainConfig(workers=1, gpus_per_worker=1), cluster_cpus=2, cluster_gpus=0)


def test_two_worker_ray_train_run_lowers_the_loss_and_writes_its_outputs(tiny_run):
    history = read_metrics(tiny_run)
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[1]["test_loss"] < history[0]["test_loss"]
    assert history[0]["train_images"] == 1024  # both workers' shards counted
    for name in ("model.pt", "metrics.jsonl", "loss_curve.png", "reconstructions.png"):
        assert (tiny_run / name).stat().st_size > 0, name
    assert list(tiny_run.glob("checkpoint_*/state.pt"))
    model, info = load_model(tiny_run)
    assert model.spec == ModelSpec() and info["epochs"] == 2


def test_a_classifier_run_reports_its_test_accuracy(ray_session, tmp_path):
    config = TrainConfig(mode="classifier", epochs=1, workers=1, classifier_lr=1e-3)
    result = train(DataConfig(limit=512), config, tmp_path / "classifier")
    accuracy = result.history[0]["test_accuracy"]
    assert 0.3 < accuracy <= 1.0  # 10 classes: chance is 0.1; one epoch on 512 images reaches ~0.5
    model, info = load_model(result.run_dir)
    assert info["mode"] == "classifier" and model.spec.num_classes == 10


def test_transfer_starts_from_the_classifier_encoder_and_trains_on(tmp_path):
    """The transferred encoder is what every Ray Train worker receives (WorkerPlan.initial_state,
    as for any run): here its training runs in the plain loop."""
    torch.manual_seed(1)
    classifier = Autoencoder()
    save_model(tmp_path / "model.pt", classifier, mode="classifier")
    start = initial_model(ModelSpec(), TrainConfig(mode="autoencoder", init_from=str(tmp_path)))
    for name, tensor in classifier.encoder.state_dict().items():
        assert torch.equal(start.encoder.state_dict()[name], tensor), name
    fresh = initial_model(ModelSpec(), TrainConfig(mode="autoencoder"))
    assert not torch.equal(fresh.encoder[0].weight, classifier.encoder[0].weight)

    network = training_network(start, "autoencoder")
    batches = real_batches(512)
    before = evaluate(network, batches, "autoencoder")
    optimizer, _ = build_optimizer(network, TrainConfig(lr=2e-3))
    train_epoch(network, batches, optimizer, "autoencoder")
    after = evaluate(network, batches, "autoencoder")
    assert after[0] < 0.7 * before[0]


def test_transfer_refuses_an_encoder_of_another_image_size(tmp_path):
    save_model(tmp_path / "model.pt", Autoencoder(ModelSpec(64, 64)))
    with pytest.raises(ValueError, match="takes images"):
        initial_model(ModelSpec(), TrainConfig(init_from=str(tmp_path)))


def test_streamed_epochs_mix_classes_differ_between_epochs_and_repeat(ray_session, faces_dir, tmp_path, file_opens):
    """Above the shard cache an image folder's training files are streamed in an order drawn from
    (seed, epoch): batches mix the people (the folder lists them by class), each epoch has its own
    order, the same epoch again (a resumed run) the same batches; each file decoded once an epoch."""
    faces = shutil.copytree(faces_dir, tmp_path / "faces")
    source = load_images(DataConfig(dataset="images", data_dir=str(faces), image_size="28x28"), "train")
    stream = FolderStream.of(source)

    def epoch(number: int) -> list[dict]:
        return list(stream.batches(["image", "label"], 32, seed=3, epoch=number, rank=0, world=1, device="cpu"))

    with file_opens(faces) as opens:
        first = epoch(1)
    assert sorted(opens.values()) == [1] * source.num_images
    second, again = epoch(2), epoch(1)
    labels = [batch["label"] for batch in first]
    assert sum(len(batch) for batch in labels) == source.num_images
    assert all(len(set(batch.tolist())) >= 12 for batch in labels[:-1])  # 32 of 40 people; in folder order 4
    assert [b.tolist() for b in labels] != [batch["label"].tolist() for batch in second]
    for one, other in zip(first, again, strict=True):
        assert torch.equal(one["image"], other["image"]) and torch.equal(one["label"], other["label"])


def test_each_worker_streams_its_own_equal_share_of_an_epoch():
    shares = [epoch_rows(11, seed=3, epoch=2, rank=rank, world=3) for rank in range(3)]
    assert [len(share) for share in shares] == [3, 3, 3] and len({int(i) for s in shares for i in s}) == 9
    assert epoch_rows(11, 3, 2, 1, 3).tolist() == shares[1].tolist()
