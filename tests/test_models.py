import json
import os

import pytest
import torch
import torch.nn as nn

from models import build_from_spec, build_model, list_models, register, unregister

# copies of ../shared/spec/state_dicts: keys and shapes of the reference models, dumped from the authors' code
SPEC = os.path.join(os.path.dirname(__file__), "reference_state_dicts")
REFERENCE_LAYOUTS = {"vgg11": "vgg11_fgr.json", "resnet18": "resnet18_gsem_repo.json",
                     "WideResNet28x10": "wrn28_10_gsem_repo.json", "GSeMResNet18": "gsem_resnet18.json",
                     "GSeMWideResNet28x10": "gsem_wrn28_10.json"}
PARAMS_10 = {"vgg11": 9_231_114, "resnet18": 11_173_962, "WideResNet28x10": 36_567_530,
             "GSeMResNet18": 11_251_978, "GSeMWideResNet28x10": 36_645_546}
PARAMS_100 = {"vgg11": 9_277_284, "resnet18": 11_220_132, "WideResNet28x10": 36_625_220,
              "GSeMResNet18": 11_298_148, "GSeMWideResNet28x10": 36_703_236}


@pytest.mark.parametrize("name", list_models(canonical=True))
def test_forward_backward_every_parameter(name):
    torch.manual_seed(0)
    model = build_model(name, 10)
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", list(REFERENCE_LAYOUTS))
def test_state_dict_matches_reference_layout(name):
    path = os.path.join(SPEC, REFERENCE_LAYOUTS[name])
    with open(path) as f:
        ref = json.load(f)
    sd = build_model(name, 10).state_dict()
    assert list(sd) == list(ref)
    assert {k: list(v.shape) for k, v in sd.items()} == ref


@pytest.mark.parametrize("name", list(PARAMS_10))
def test_parameter_counts(name):
    assert sum(p.numel() for p in build_model(name, 10).parameters()) == PARAMS_10[name]
    assert sum(p.numel() for p in build_model(name, 100).parameters()) == PARAMS_100[name]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        build_model("vgg12", 10)
    msg = str(e.value)
    assert "vgg12" in msg and "vgg11" in msg and "resnet18" in msg and "wrn28_10" in msg


def test_lookup_is_case_insensitive_and_aliases_resolve():
    assert type(build_model("VGG11", 10)).__name__ == "VGG"
    assert "WideResNet28x10" in list_models() and "wrn28_10" in list_models()


@pytest.mark.parametrize("name", list_models(canonical=True))
def test_normalize_lives_inside_every_model_without_new_keys(name):
    torch.manual_seed(0)
    plain = build_model(name, 10, beta=0) if "GSeM" in name else build_model(name, 10)
    torch.manual_seed(0)
    stats = ((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
    normed = build_model(name, 10, normalize=stats, **({"beta": 0} if "GSeM" in name else {}))
    assert list(plain.state_dict()) == list(normed.state_dict())
    normed.load_state_dict(plain.state_dict())
    plain.eval(), normed.eval()
    x = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    assert torch.allclose(normed(x), plain((x - mean) / std), atol=1e-5)


@pytest.fixture
def sequential_model():
    """A model with no normalisation attribute of its own: an nn.Sequential, which would call any child it is given
    after its classifier."""
    @register("tiny_sequential")
    def tiny_sequential(num_classes, in_channels=3):
        return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                             nn.Flatten(), nn.Linear(16, num_classes))

    yield "tiny_sequential"
    unregister("tiny_sequential")


def test_a_model_without_any_normalisation_attribute_gives_the_normalised_logits(sequential_model):
    torch.manual_seed(0)
    plain = build_model(sequential_model, 10)
    normed = build_model(sequential_model, 10, normalize=((0.5,) * 3, (0.25,) * 3))
    normed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(normed(x), plain((x - 0.5) / 0.25), atol=1e-6)
    assert not torch.allclose(normed(x), plain(x), atol=1e-3)
    assert len(normed) == len(plain)  # nothing appended to the Sequential


def test_options_a_constructor_does_not_take_are_refused_and_the_spec_rebuilds_the_model(sequential_model):
    with pytest.raises(ValueError, match="'vgg11' does not take alpha"):
        build_model("vgg11", 10, alpha=6)
    model = build_model("GSeMResNet18", 100, normalize=((0.1,), (0.2,)), alpha=5, beta=3, in_channels=1)
    assert model.model_spec == {"name": "GSeMResNet18", "num_classes": 100, "normalize": [[0.1], [0.2]],
                                "options": {"alpha": 5, "beta": 3, "gradient_correction": True, "in_channels": 1}}
    again = build_from_spec(model.model_spec)
    assert (again.gsem_module.alpha, again.gsem_module.beta, again.conv1.in_channels) == (5, 3, 1)
    assert torch.equal(again.input_std, model.input_std)


@pytest.mark.parametrize("name", list_models(canonical=True))
def test_every_family_takes_one_input_channel(name):
    model = build_model(name, 10, in_channels=1)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    assert build_model(name, 10).state_dict().keys() == model.state_dict().keys()
