"""Training recipes: code width, input corruption, the contrastive term, IDEC cluster refinement."""

import numpy as np
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
    contrastive_loss,
    corrupt_images,
    crop_views,
    initial_model,
    patch_mask,
    projection_head,
    restore,
    soft_assignment,
    target_distribution,
    train_epoch,
    training_network,
    Worker,
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
            return x, x.flatten(1), None, x.flatten(1)

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


def test_nt_xent_is_low_for_matching_views_high_for_swapped_pairs_and_is_simclrs_formula():
    torch.manual_seed(5)
    codes = torch.randn(16, 32)
    views = codes + 0.01 * torch.randn(16, 32)
    swapped = codes.roll(1, 0)  # each view paired with another image's
    assert contrastive_loss(codes, views, 0.1).item() < 0.1
    assert contrastive_loss(codes, swapped, 0.1).item() > 5
    assert contrastive_loss(codes, views).item() < contrastive_loss(codes, swapped).item() - 1  # at 0.5 too
    first, second, tau = torch.randn(3, 4), torch.randn(3, 4), 0.5
    z = torch.nn.functional.normalize(torch.cat([first, second]), dim=1)
    similarity = z @ z.T / tau
    terms = [-similarity[i, (i + 3) % 6] + torch.logsumexp(similarity[i][torch.arange(6) != i], 0) for i in range(6)]
    assert contrastive_loss(first, second, tau).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_nt_xent_pushes_the_codes_of_different_images_apart():
    """Four images whose codes nearly coincide (the start of a collapse): gradient steps on the
    contrastive term spread them, while each image's two views stay together."""
    torch.manual_seed(6)
    codes = (torch.ones(4, 8) + 0.1 * torch.randn(4, 8)).requires_grad_()
    noise = 0.01 * torch.randn(4, 8)
    optimizer = torch.optim.SGD([codes], lr=1.0)

    def mean_cosine_between_images():
        z = torch.nn.functional.normalize(codes.detach(), dim=1)
        return (z @ z.T)[~torch.eye(4, dtype=torch.bool)].mean().item()

    before = mean_cosine_between_images()
    for _ in range(20):
        optimizer.zero_grad()
        contrastive_loss(codes, codes + noise).backward()
        optimizer.step()
    assert mean_cosine_between_images() < before - 0.3
    views = torch.nn.functional.cosine_similarity(codes.detach(), codes.detach() + noise)
    assert (views > 0.99).all()


def test_crop_views_keep_shape_and_range_on_the_device_and_repeat_with_their_seed():
    inputs = images(6)[:, None].float() / 255
    for scale, jitter in [(0.7, 0.0), (0.2, 0.5)]:
        view = crop_views(inputs, scale, jitter, torch.Generator().manual_seed(1))
        assert view.shape == inputs.shape and view.dtype == inputs.dtype and view.device == inputs.device
        assert view.min() >= 0 and view.max() <= 1
        assert torch.equal(view, crop_views(inputs, scale, jitter, torch.Generator().manual_seed(1)))
        assert not torch.equal(view, crop_views(inputs, scale, jitter, torch.Generator().manual_seed(2)))
    faces = torch.rand(3, 1, 64, 64)
    assert crop_views(faces).shape == (3, 1, 64, 64)


def test_a_full_size_crop_is_the_image_or_its_mirror_about_half_of_the_time(monkeypatch):
    from pipelines import train

    monkeypatch.setattr(train, "CROP_RATIO", (1.0, 1.0))
    inputs = torch.rand(64, 1, 28, 28)
    view = crop_views(inputs, 1.0, 0.0, torch.Generator().manual_seed(3))
    same = (view - inputs).abs().flatten(1).amax(1) < 1e-5
    mirrored = (view - inputs.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert (same ^ mirrored).all() and 16 < mirrored.sum() < 48


def test_a_crop_zooms_in_on_part_of_the_image_and_jitter_changes_the_contrast():
    inputs = torch.zeros(64, 1, 28, 28)
    inputs[:, :, 13:15, :] = 1.0  # a horizontal bar across, 2 rows thick: a crop (0.3-1 of the area) makes it thicker
    thickness = crop_views(inputs, 0.3, 0.0, torch.Generator().manual_seed(4)).sum((1, 2, 3)) / inputs.sum((1, 2, 3))
    assert thickness.min() > 0.99 and thickness.mean() > 1.2
    gray = torch.full((64, 1, 28, 28), 0.5)
    gray[:, :, :, :14] = 0.25
    jittered = crop_views(gray, 1.0, 0.4, torch.Generator().manual_seed(5))
    spread = jittered.amax((1, 2, 3)) - jittered.amin((1, 2, 3))  # 0.25 unjittered
    assert spread.min() < 0.2 and spread.max() > 0.3


def test_the_contrastive_option_reaches_the_loss_and_its_head_stays_out_of_the_model(tmp_path):
    config = TrainConfig(contrastive=0.5, temperature=0.2, code_dim=16, projection_dim=8)
    recipe = Recipe.of(config)
    assert (recipe.contrastive, recipe.temperature, recipe.projection) == (0.5, 0.2, 8)
    assert Recipe.of(TrainConfig(projection_dim=8)) == PLAIN  # the head is the contrastive term's only
    torch.manual_seed(0)
    model = Autoencoder(ModelSpec(code_dim=16))
    network = training_network(model, "autoencoder", projection=recipe.projection)
    head = projection_head(network)
    assert head is not None and head(torch.zeros(2, 16)).shape == (2, 8)
    assert projection_head(training_network(model, "autoencoder")) is None
    batch = images(8)
    torch.manual_seed(7)
    loss = autoencoder_loss(network, batch, recipe)
    torch.manual_seed(7)
    clean = batch[:, None].float() / 255
    views = torch.cat([crop_views(clean), crop_views(clean)])  # the defaults: view_scale 0.7, no jitter
    reconstructions, _, _, projections = network(views)
    expected = torch.nn.functional.mse_loss(reconstructions, views) + 0.5 * contrastive_loss(*projections.chunk(2), 0.2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    optimizer, _ = build_optimizer(network, config)
    before = head[0].weight.detach().clone()
    train_epoch(network, [{"image": batch}], optimizer, "autoencoder", recipe=recipe)
    assert not torch.equal(before, head[0].weight)  # the head trains with the network
    save_model(tmp_path / "model.pt", model)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    assert set(saved) == set(Autoencoder(ModelSpec(code_dim=16)).state_dict())  # no head in the model file


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


@pytest.mark.parametrize("start", ["kmeans", "umap"])
def test_refinement_places_one_centroid_at_the_mean_code_of_each_planted_group(tmp_path, start):
    """Three groups of images far apart (dark, mid, bright): either start (KMeans of the codes, or
    KMeans of their UMAP embedding) finds them, and each centroid is its group's mean code."""
    torch.manual_seed(0)
    trained = Autoencoder(ModelSpec(code_dim=8))
    save_model(tmp_path / "model.pt", trained)
    noise = torch.randint(0, 20, (60, 28, 28), generator=torch.Generator().manual_seed(0))
    batch = (noise + torch.tensor([0, 110, 230]).repeat_interleave(20)[:, None, None]).clamp(0, 255).to(torch.uint8)
    config = TrainConfig(code_dim=8, clusters=3, init_from=str(tmp_path), cluster_init=start)
    model = initial_model(ModelSpec(code_dim=8, clusters=3), config, batch)
    codes = trained.eval().encoder(batch[:, None].float() / 255).detach()
    means = torch.stack([group.mean(0) for group in codes.split(20)])
    matched = torch.cdist(means, model.centroids.detach()).argmin(1)
    assert sorted(matched.tolist()) == [0, 1, 2]
    assert torch.allclose(model.centroids.detach()[matched], means, atol=1e-5)


def test_a_rerun_of_a_refinement_keeps_the_centroids_it_placed_and_places_none_again(tmp_path, monkeypatch):
    """The start is placed once per run (a UMAP of every training code takes minutes at full size)
    and kept in the run directory: a rerun, which resumes from its checkpoint, reads it back."""
    import pipelines.train as train

    torch.manual_seed(0)
    save_model(tmp_path / "model.pt", Autoencoder(ModelSpec(code_dim=8)))
    config = TrainConfig(code_dim=8, clusters=3, init_from=str(tmp_path))
    placed = []
    monkeypatch.setattr(train, "source_images", lambda source: images(30).numpy())
    monkeypatch.setattr(train, "place_centroids", lambda *args: placed.append(1) or np.eye(3, 8, dtype=np.float32))
    run_dir = tmp_path / "run"
    first = train.starting_model(ModelSpec(code_dim=8, clusters=3), config, None, run_dir)
    again = train.starting_model(ModelSpec(code_dim=8, clusters=3), config, None, run_dir)
    assert placed == [1]
    assert torch.equal(first.centroids, torch.eye(3, 8)) and torch.equal(again.centroids, first.centroids)
    assert torch.equal(again.encoder[0].weight, first.encoder[0].weight)


def test_recipe_options_are_checked():
    with pytest.raises(ValueError, match="corrupt"):
        TrainConfig(corrupt="blur")
    with pytest.raises(ValueError, match="init_from or pretrain_epochs"):
        TrainConfig(clusters=10)
    with pytest.raises(ValueError, match="needs clusters and no init_from"):
        TrainConfig(pretrain_epochs=2)
    with pytest.raises(ValueError, match="set pretrain_epochs instead"):
        TrainConfig(clusters=10, init_from="runs/x", contrastive=1.0)
    with pytest.raises(ValueError, match="cluster_init"):
        TrainConfig(clusters=10, pretrain_epochs=2, cluster_init="random")
    with pytest.raises(ValueError, match="autoencoder only"):
        TrainConfig(mode="classifier", corrupt="mask")
    with pytest.raises(ValueError, match="autoencoder only"):
        TrainConfig(mode="classifier", contrastive=1.0)
    with pytest.raises(ValueError, match="temperature"):
        TrainConfig(contrastive=1.0, temperature=0.0)
    assert TrainConfig(corrupt="mask").corruption_level == 0.5
    assert Recipe.of(TrainConfig(corrupt="gaussian", corrupt_level=0.3)).level == 0.3
    assert Recipe.of(TrainConfig()) == PLAIN


def test_recipes_run_through_ray_train_and_refinement_continues_the_pretraining(ray_session, tmp_path):
    """Two Ray Train runs of two workers with every option: a 16-d autoencoder pretrained with
    masked inputs and the contrastive term (its head too), then IDEC refinement from it (DDP over
    the centroids too, started from the UMAP partition); a rerun trains nothing."""
    from pipelines.config import DataConfig
    from pipelines.rundir import PRETRAIN_DIR, trained_epochs
    from pipelines.train import train

    config = TrainConfig(epochs=1, pretrain_epochs=2, workers=2, code_dim=16, clusters=4, cluster_init="umap",
                         corrupt="mask", contrastive=0.5)
    refined = train(DataConfig(limit=256), config, tmp_path / "refined")
    model, _ = load_model(refined.run_dir)
    pretrained, _ = load_model(refined.run_dir / PRETRAIN_DIR)
    assert trained_epochs(refined.run_dir) == 1 and trained_epochs(refined.run_dir / PRETRAIN_DIR) == 2
    assert pretrained.spec.clusters == 0 and model.spec.code_dim == 16
    assert model.spec.clusters == 4 and model.centroids.shape == (4, 16)
    assert refined.history[0]["train_images"] == 256  # both workers' shards
    assert fingerprint(model.encoder) != fingerprint(pretrained.encoder)  # refinement trained it on
    assert train(DataConfig(limit=256), config, tmp_path / "refined").resumed


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


def test_the_recipe_search_scores_faces_without_the_ten_class_head():
    """40 people's labels: the held-out MSE, and no accuracy of the 10-output head (it used to fail)."""
    import math

    from benchmarks.recipes import held_out

    model = Autoencoder().eval()
    mse, accuracy = held_out(model, images(40).numpy(), torch.arange(40).numpy())
    assert mse > 0 and math.isnan(accuracy)
    assert not math.isnan(held_out(model, images(40).numpy(), (torch.arange(40) % 10).numpy())[1])


def test_make_quality_clusters_each_recipe_and_fits_each_transform_once():
    """Two well-separated blobs: the recipes of ``make quality`` find them, with the seeds they were
    asked for; the recipes sharing a transform share one fit (its time counts in each)."""
    from benchmarks.quality import RECIPES, cluster, scores

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (60, 64)), rng.normal(8, 1, (60, 64))]).astype(np.float32)
    classes = np.repeat([0, 1], 60)
    transformed = {}
    for recipe in RECIPES:
        labels, seconds = cluster(X, recipe, 2, 3, transformed)
        assert labels.shape == (3, 120) and seconds > 0
        if recipe.transform != "pca-whiten":  # whitening scales the one separating direction to the noise's
            assert scores(labels, classes, None)["acc_all"] == 1.0, recipe.name
    assert len(transformed) == len({recipe.transform for recipe in RECIPES})


def test_a_checkpoint_resumes_only_into_the_recipe_it_was_trained_with(tmp_path, monkeypatch):
    """A projection head's checkpoint resumes with its head; into a run without one (or the
    reverse) it is refused by name: the optimizer's parameters would not match either."""
    import ray.train

    from pipelines.train import STATE_FILE, training_state

    def worker(config):
        model = Autoencoder(ModelSpec(code_dim=16))
        network = training_network(model, "autoencoder", projection=Recipe.of(config).projection)
        optimizer, scheduler = build_optimizer(network, config, 1)
        return Worker(model, network, optimizer, scheduler, 0, 1, torch.device("cpu"))

    contrastive = TrainConfig(contrastive=1.0, code_dim=16, projection_dim=8)
    trained = worker(contrastive)
    history = [{"epoch": 3}]
    torch.save(training_state(trained, history, None), tmp_path / STATE_FILE)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(tmp_path)))
    resumed = worker(contrastive)
    assert restore(resumed, contrastive) == (3, history)
    assert fingerprint(projection_head(resumed.network)) == fingerprint(projection_head(trained.network))
    with pytest.raises(ValueError, match="trained with a projection head"):
        restore(worker(TrainConfig(code_dim=16)), TrainConfig(code_dim=16))


def test_make_quality_measures_each_preset_on_its_data_and_a_refinement_before_and_after():
    from argparse import Namespace

    from benchmarks.quality import DATA_NAMES, PRESETS, data_sets, measured_recipes
    from pipelines.pipeline import load_config_file, preset_path

    args = Namespace(presets=list(PRESETS), data=list(DATA_NAMES.values()), limit=None, ae_epochs=2, face_epochs=30,
                     faces_dir="faces")
    datasets = data_sets(args)
    assert [(d.name, d.recipe) for d in datasets] == [("Fashion-MNIST", ""), ("Fashion-MNIST", "fashion-mnist-idec"),
                                                      ("ORL faces", ""), ("ORL faces", "orl-faces")]
    faces, preset = datasets[3], load_config_file(preset_path("orl-faces"))["train"]
    assert datasets[2].train.pretrain_epochs == 0  # the seed's faces autoencoder: no refinement
    assert (faces.train.clusters, faces.train.pretrain_epochs) == (40, preset["pretrain_epochs"])
    assert faces.data.image_size == "64x64"
    seed_rows = [r.name for r, _ in measured_recipes(datasets[0], {"AE": ["seed 0"]})]
    assert seed_rows[:2] == ["raw pixels", "raw pixels, PCA 50"] and "AE, L2" in seed_rows
    refined = {"AE fashion-mnist-idec": ["refined"], "AE fashion-mnist-idec before refinement": ["pretrained"]}
    rows = {r.name: tables for r, tables in measured_recipes(datasets[1], refined)}
    assert not any(name.startswith("raw pixels") for name in rows)
    assert rows["AE fashion-mnist-idec, L2"] == ["refined"]
    assert rows["AE fashion-mnist-idec before refinement, UMAP 10 (N2D)"] == ["pretrained"]


def test_a_quality_run_of_one_data_set_keeps_the_other_data_sets_section():
    from benchmarks.quality import merged_sections

    generated = "\n\n- cpu: x\n\n### Fashion-MNIST (k = 10, old)\n\n| a |\n\n### ORL faces (k = 40, old)\n\n| b |\n\n"
    merged = merged_sections(generated, {"Fashion-MNIST": "### Fashion-MNIST (k = 10, new)\n\n| c |"})
    assert merged == "### Fashion-MNIST (k = 10, new)\n\n| c |\n\n### ORL faces (k = 40, old)\n\n| b |"
    assert merged_sections("", {"ORL faces": "### ORL faces (k = 40)"}) == "### ORL faces (k = 40)"


def test_quality_averages_acc_over_the_autoencoders_not_just_the_first():
    from benchmarks.quality import across_autoencoders

    classes = np.repeat([0, 1], 4)
    perfect, half = np.array([classes, 1 - classes]), np.array([[0, 0, 1, 1, 0, 0, 1, 1]] * 2)
    found = across_autoencoders([perfect, half], classes)
    assert found["acc_ae_mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert found["ae_seed_ari"] < 0.5


def test_refinement_starts_from_its_pretraining_and_trains_idecs_loss_alone(tmp_path, monkeypatch):
    """``pretrain`` trains the recipe (contrast, corruption, no centroids) in train/pretrain, for
    pretrain_epochs; refinement then starts from that model without the recipe's extra terms."""
    from pipelines import train as training
    from pipelines.config import DataConfig
    from pipelines.rundir import PRETRAIN_DIR

    calls = []

    def fake_train(data, config, run_dir):
        calls.append((config, run_dir))
        return training.TrainResult(run_dir, run_dir / "model.pt", [], resumed=False)

    monkeypatch.setattr(training, "train", fake_train)
    config = TrainConfig(epochs=2, pretrain_epochs=5, clusters=4, corrupt="mask", contrastive=1.0)
    refinement = training.pretrain(DataConfig(limit=8), config, tmp_path)
    (pretraining, run_dir), = calls
    assert run_dir == tmp_path / PRETRAIN_DIR and pretraining.epochs == 5 and pretraining.clusters == 0
    assert pretraining.contrastive == 1.0 and pretraining.corrupt == "mask"
    assert refinement.init_from == str(tmp_path / PRETRAIN_DIR / "model.pt") and refinement.epochs == 2
    assert refinement.clusters == 4 and refinement.contrastive == 0.0 and refinement.corrupt == "none"
    assert refinement.pretrain_epochs == 0
