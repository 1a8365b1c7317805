"""Training recipes: code width, input corruption, shift consistency, IDEC cluster refinement."""

import pytest
import torch

from pipelines.config import TrainConfig
from pipelines.model import Autoencoder, ModelSpec, count_parameters, fingerprint, load_model, save_model
from pipelines.train import (
    PLAIN,
    Recipe,
    autoencoder_loss,
    batch_loss,
    build_optimizer,
    corrupt_images,
    initial_model,
    patch_mask,
    soft_assignment,
    target_distribution,
    train_epoch,
    training_network,
)


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_code_dim_sets_the_width_of_the_code_and_512_is_the_seed_unchanged():
    narrow = Autoencoder(ModelSpec(code_dim=10))
    assert narrow.encoder(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert narrow(torch.zeros(2, 1, 28, 28))[0].shape == (2, 1, 28, 28)
    torch.manual_seed(0)
    seed = Autoencoder()
    torch.manual_seed(0)
    explicit = Autoencoder(ModelSpec(code_dim=512, clusters=0))
    assert fingerprint(seed) == fingerprint(explicit)
    assert not hasattr(seed, "centroids") and count_parameters(seed.encoder) == 3_249_088
    assert count_parameters(narrow.encoder) == 3_249_088 - (512 - 10) * (128 * 49 + 1)


def test_the_plain_recipe_is_the_seeds_mse():
    network = training_network(Autoencoder(), "autoencoder")
    batch = images()
    inputs = batch[:, None].float() / 255
    expected = torch.nn.functional.mse_loss(network(inputs)[0], inputs)
    assert batch_loss(network, batch, None, "autoencoder").item() == pytest.approx(expected.item())
    assert autoencoder_loss(network, batch, PLAIN).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("share", [0.25, 0.5, 0.75])
def test_masking_zeroes_the_stated_share_in_whole_patches(share):
    torch.manual_seed(1)
    inputs = torch.rand(16, 1, 28, 28) * 0.9 + 0.1  # no zero pixels of its own
    corrupted = corrupt_images(inputs, Recipe(corrupt="mask", level=share, mask_patch=4))
    zeroed = corrupted == 0
    assert (zeroed.flatten(1).float().mean(1) == round(share * 49) / 49).all()  # 7 x 7 patches of 4 x 4
    cells = zeroed.view(16, 7, 4, 7, 4).float().mean((2, 4))
    assert ((cells == 0) | (cells == 1)).all()  # whole patches, nothing in between
    assert torch.equal(corrupted[~zeroed], inputs[~zeroed])
    assert zeroed.view(16, -1).float().std(0).sum() > 0  # different patches per image


def test_the_mask_of_a_side_the_patch_does_not_divide_is_cropped():
    mask = patch_mask((3, 1, 30, 23), 0.5, 4)
    assert mask.shape == (3, 1, 30, 23)


def test_salt_and_gaussian_corrupt_within_0_1():
    torch.manual_seed(2)
    inputs = torch.full((4, 1, 28, 28), 0.5)
    salt = corrupt_images(inputs, Recipe(corrupt="salt", level=0.2))
    changed = salt != 0.5
    assert 0.15 < changed.float().mean() < 0.25 and set(salt[changed].unique().tolist()) <= {0.0, 1.0}
    noisy = corrupt_images(inputs, Recipe(corrupt="gaussian", level=0.2))
    assert noisy.min() >= 0 and noisy.max() <= 1 and 0.15 < (noisy - 0.5).std() < 0.25


def test_the_corrupted_loss_is_against_the_clean_image():
    """A network that returns its input: loss 0 on clean inputs; with the mask, the MSE of the zeroed pixels."""

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x, x.flatten(1), None

    torch.manual_seed(3)
    batch = images(4)
    assert autoencoder_loss(Identity(), batch, PLAIN).item() == 0.0
    torch.manual_seed(4)
    loss = autoencoder_loss(Identity(), batch, Recipe(corrupt="mask", level=0.5, mask_patch=4))
    torch.manual_seed(4)
    clean = batch[:, None].float() / 255
    masked = corrupt_images(clean, Recipe(corrupt="mask", level=0.5, mask_patch=4))
    assert loss.item() == pytest.approx(((masked - clean) ** 2).mean().item())
    assert loss.item() > 0.01


def test_the_consistency_term_is_zero_for_a_shift_invariant_code_and_counts_otherwise():
    class Invariant(torch.nn.Module):
        def forward(self, x):
            return x, x.sum((1, 2, 3))[:, None].clamp_min(1.0).repeat(1, 3), None  # pixel sums: shifts keep them...

    batch = torch.zeros(4, 28, 28, dtype=torch.uint8)
    batch[:, 10:18, 10:18] = 200  # ...while the object stays inside the image
    assert autoencoder_loss(Invariant(), batch, Recipe(consistency=1.0)).item() == pytest.approx(0.0, abs=1e-6)
    network = training_network(Autoencoder(ModelSpec(code_dim=16)), "autoencoder")
    torch.manual_seed(5)
    with_term = autoencoder_loss(network, batch, Recipe(consistency=10.0)).item()
    torch.manual_seed(5)
    assert with_term > autoencoder_loss(network, batch, Recipe(consistency=0.0)).item()


def test_soft_assignment_and_target_distribution_match_their_formulas():
    codes = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    centroids = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    q = soft_assignment(codes, centroids)
    # Student's t, alpha 1: 1 / (1 + d^2); rows normalised
    raw = torch.tensor([[1.0, 1 / 2], [1 / 10, 1 / 5]])
    assert torch.allclose(q, raw / raw.sum(1, keepdim=True))
    f = q.sum(0)
    p = (q**2 / f) / (q**2 / f).sum(1, keepdim=True)
    assert torch.allclose(target_distribution(q), p)
    assert torch.allclose(target_distribution(q).sum(1), torch.ones(2))
    assert (target_distribution(q).max(1).values > q.max(1).values).all()  # sharper


def test_refinement_starts_from_the_trained_autoencoder_with_kmeans_centroids(tmp_path):
    torch.manual_seed(0)
    trained = Autoencoder(ModelSpec(code_dim=8))
    save_model(tmp_path / "model.pt", trained)
    config = TrainConfig(code_dim=8, clusters=3, init_from=str(tmp_path), seed=1)
    batch = images(30)
    model = initial_model(ModelSpec(code_dim=8, clusters=3), config, batch)
    assert torch.equal(model.decoder[1].weight, trained.decoder[1].weight)
    assert torch.equal(model.encoder[0].weight, trained.encoder[0].weight)
    codes = trained.eval().encoder(batch[:, None].float() / 255)
    nearest = torch.cdist(codes, model.centroids).argmin(1)
    means = torch.stack([codes[nearest == j].mean(0) for j in range(3)])
    assert torch.allclose(model.centroids, means, atol=1e-4)  # KMeans's fixed point

    network = training_network(model, "autoencoder")
    assert any(p is model.centroids for p in network.parameters())
    optimizer, _ = build_optimizer(network, config)
    before = model.centroids.detach().clone()
    train_epoch(network, [{"image": batch}], optimizer, "autoencoder", recipe=Recipe.of(config))
    assert not torch.equal(before, model.centroids)  # the centroids train with the network
    save_model(tmp_path / "refined.pt", model)
    assert load_model(tmp_path / "refined.pt")[0].centroids.shape == (3, 8)


def test_recipe_options_are_checked():
    with pytest.raises(ValueError, match="corrupt"):
        TrainConfig(corrupt="blur")
    with pytest.raises(ValueError, match="init_from"):
        TrainConfig(clusters=10)
    with pytest.raises(ValueError, match="autoencoder only"):
        TrainConfig(mode="classifier", corrupt="mask")
    assert TrainConfig(corrupt="mask").corruption_level == 0.5
    assert Recipe.of(TrainConfig(corrupt="gaussian", corrupt_level=0.3)).level == 0.3
    assert Recipe.of(TrainConfig()) == PLAIN


def test_recipes_run_through_ray_train_and_refinement_continues_the_run(ray_session, tmp_path):
    """One Ray Train run of two workers (DDP over the centroids too) with every option at once:
    IDEC refinement of a 16-d autoencoder, masked inputs and the shift-consistency term."""
    from pipelines.config import DataConfig
    from pipelines.train import train

    torch.manual_seed(0)
    save_model(tmp_path / "narrow" / "model.pt", Autoencoder(ModelSpec(code_dim=16)), mode="autoencoder")
    config = TrainConfig(epochs=1, workers=2, code_dim=16, clusters=4, init_from=str(tmp_path / "narrow"),
                         corrupt="mask", consistency=0.5)
    refined = train(DataConfig(limit=256), config, tmp_path / "refined")
    model, _ = load_model(refined.run_dir)
    assert model.spec.code_dim == 16 and model.encoder(torch.zeros(1, 1, 28, 28)).shape == (1, 16)
    assert model.spec.clusters == 4 and model.centroids.shape == (4, 16)
    assert refined.history[0]["train_images"] == 256  # both workers' shards


def test_a_frozen_encoder_takes_no_step_and_the_head_does():
    torch.manual_seed(0)
    model = Autoencoder()
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head = model.classifier[0].weight.detach().clone()
    network = training_network(model, "classifier", freeze_encoder=True)
    optimizer, _ = build_optimizer(network, TrainConfig(mode="classifier", freeze_encoder=True))
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == count_parameters(model.classifier)
    labels = torch.arange(8) % 10
    train_epoch(network, [{"image": images(), "label": labels}] * 2, optimizer, "classifier")
    assert all(torch.equal(encoder[k], v) for k, v in model.encoder.state_dict().items())
    assert not torch.equal(head, model.classifier[0].weight)
    network = training_network(model, "classifier")  # unfrozen: the encoder trains again
    optimizer, _ = build_optimizer(network, TrainConfig(mode="classifier"))
    train_epoch(network, [{"image": images(), "label": labels}], optimizer, "classifier")
    assert not torch.equal(encoder["0.weight"], model.encoder[0].weight)


def test_the_transfer_arms_start_from_the_right_models_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    """At toy size (64 training images of 16 x 16, N = 2, M = 1): the probe keeps the encoder of the
    autoencoder at epoch N; the classifier -> autoencoder arm keeps the head of the classifier at epoch N."""
    from argparse import Namespace

    from benchmarks import recipes

    monkeypatch.setattr(recipes, "OUT", tmp_path)
    labels = torch.arange(64) % 10
    small = torch.nn.functional.interpolate(images(104)[:, None].float(), size=16)[:, 0].to(torch.uint8).numpy()
    data = (small[:64], small[64:], labels[:40].numpy(), 10, labels.numpy())
    args = Namespace(first_epochs=2, then_epochs=1, ae_seed=0, seeds=1)
    rows = {row["arm"]: row for row in recipes.transfer(args, data)}
    assert len(rows) == 8

    def model(arm, epoch):
        return load_model(tmp_path / f"transfer-64-s0-{arm}-e{epoch}.pt")[0]

    ae_n, probe, ae_nm = model("ae", 2), model("probe", 1), model("ae", 3)
    assert fingerprint(probe.encoder) == fingerprint(ae_n.encoder) != fingerprint(ae_nm.encoder)
    assert fingerprint(model("tune", 1).encoder) != fingerprint(ae_n.encoder)
    clf_n = model("clf", 2)
    assert fingerprint(model("clf-ae", 1).classifier) == fingerprint(clf_n.classifier) != fingerprint(model("clf", 3).classifier)
    assert fingerprint(model("clf-ae", 1).encoder) != fingerprint(clf_n.encoder)
    frozen, source = rows["autoencoder 2 → classifier 1, encoder frozen"], rows["autoencoder 2"]
    assert (frozen["acc"], frozen["nmi"]) == (source["acc"], source["nmi"])  # the same codes

    trained = []
    monkeypatch.setattr(recipes, "train_plain", lambda config, *a, **k: trained.append(config))
    assert [row["test_mse"] for row in recipes.transfer(args, data)] == [row["test_mse"] for row in rows.values()]
    assert trained == []
    (tmp_path / "transfer-64-s0-probe-e1.pt").unlink()
    with pytest.raises(FileNotFoundError):  # only the probe retrains (here: not at all, so its model is missing)
        recipes.transfer(args, data)
    assert [config.freeze_encoder for config in trained] == [True]
