"""The seed architecture, its family for other image sizes, and checkpoints that hold state dicts only."""

import pickle

import pytest
import torch
from torch import nn

from pipelines.model import (
    Autoencoder,
    CodeConv2d,
    CodeConvTranspose2d,
    ModelSpec,
    count_parameters,
    fingerprint,
    load_model,
    save_model,
    stage_sizes,
)


def test_seed_architecture_parameter_counts():
    model = Autoencoder()
    assert count_parameters(model.encoder) == 3_249_088
    assert count_parameters(model.decoder) == 3_248_577
    assert count_parameters(model.classifier) == 33_482


def test_seed_layers_are_the_seed_design():
    model = Autoencoder()
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 32, (3, 3), (2, 2)),
        (32, 128, (3, 3), (2, 2)),
        (128, 512, (7, 7), (1, 1)),
    ]
    assert isinstance(model.decoder[-1], nn.Sigmoid)
    assert isinstance(model.classifier[-1], nn.Linear)  # logits, no sigmoid


@pytest.mark.parametrize(
    "spec", [ModelSpec(), ModelSpec(64, 64, 1, 40), ModelSpec(112, 92, 1, 40), ModelSpec(112, 92, 3, 5), ModelSpec(33, 17, 3, 2)]
)
def test_family_shapes(spec):
    model = Autoencoder(spec)
    images = torch.rand(3, *spec.image_shape)
    reconstructions, codes = model(images)
    assert reconstructions.shape == images.shape
    assert codes.shape == (3, 512)
    assert model.classify(images).shape == (3, spec.num_classes)
    assert 0 <= reconstructions.min() and reconstructions.max() <= 1


def test_family_rule_adds_stages_for_larger_inputs():
    assert stage_sizes(28, 28) == [(28, 28), (14, 14), (7, 7)]
    assert stage_sizes(64, 64)[-1] == (4, 4) and len(stage_sizes(64, 64)) == 5
    assert stage_sizes(112, 92)[-1] == (7, 6)


def test_code_layers_compute_what_plain_convolutions_compute():
    conv = CodeConv2d(16, 512, (7, 6))
    plain = nn.Conv2d(16, 512, (7, 6))
    plain.load_state_dict(conv.state_dict())
    x = torch.rand(5, 16, 7, 6)
    torch.testing.assert_close(conv(x), plain(x), atol=1e-5, rtol=1e-5)

    deconv = CodeConvTranspose2d(512, 16, (7, 6))
    plain_deconv = nn.ConvTranspose2d(512, 16, (7, 6))
    plain_deconv.load_state_dict(deconv.state_dict())
    z = torch.rand(5, 512, 1, 1)
    torch.testing.assert_close(deconv(z), plain_deconv(z), atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip_keeps_weights_and_fingerprint(tmp_path):
    model = Autoencoder(ModelSpec(64, 64, 3, 7))
    save_model(tmp_path / "model.pt", model, mode="autoencoder")
    loaded, info = load_model(tmp_path)  # a run directory resolves to its model.pt
    assert loaded.spec == model.spec and info == {"mode": "autoencoder"}
    assert fingerprint(loaded) == fingerprint(model)
    assert fingerprint(Autoencoder(ModelSpec(64, 64, 3, 7))) != fingerprint(model)


def test_the_classifier_dropout_is_part_of_the_spec_and_survives_a_checkpoint(tmp_path):
    model = Autoencoder(ModelSpec(dropout=0.1))
    assert model.classifier[2].p == 0.1 and Autoencoder().classifier[2].p == 0.5
    save_model(tmp_path / "model.pt", model)
    assert load_model(tmp_path)[0].classifier[2].p == 0.1


class Payload:
    """Unpickling this would run code: a checkpoint must never be unpickled as a whole object."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_pickled_object_is_refused_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "model.pt", "wb") as file:
        pickle.dump({"spec": {}, "state_dict": Payload()}, file)
    with pytest.raises(ValueError, match="not a featurelens checkpoint"):
        load_model(tmp_path / "model.pt")
    assert not (tmp_path / "PWNED").exists()


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    model = Autoencoder()
    torch.save({"spec": {"height": 64, "width": 64}, "state_dict": model.state_dict()}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="another architecture"):
        load_model(tmp_path / "model.pt")


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        load_model(tmp_path / "nothing")
