import json
import os

import pytest
import torch

from models import build_model, list_models

# copies of ../shared/spec/state_dicts: keys and shapes of the reference models, dumped from the authors' code
SPEC = os.path.join(os.path.dirname(__file__), "reference_state_dicts")
REFERENCE_LAYOUTS = {"vgg11": "vgg11_fgr.json", "resnet18": "resnet18_gsem_repo.json",
                     "WideResNet28x10": "wrn28_10_gsem_repo.json", "GSeMResNet18": "gsem_resnet18.json",
                     "GSeMWideResNet28x10": "gsem_wrn28_10.json"}
PARAMS_10 = {"vgg11": 9_231_114, "resnet18": 11_173_962, "WideResNet28x10": 36_567_530,
             "GSeMResNet18": 11_251_978, "GSeMWideResNet28x10": 36_645_546}
PARAMS_100 = {"vgg11": 9_277_284, "resnet18": 11_220_132, "WideResNet28x10": 36_625_220,
              "GSeMResNet18": 11_298_148, "GSeMWideResNet28x10": 36_703_236}


@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "wrn28_10", "GSeMResNet18",
                                  "GSeMWideResNet28x10"])
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


def test_normalize_lives_inside_model_without_new_keys():
    torch.manual_seed(0)
    plain = build_model("vgg11", 10).eval()
    normed = build_model("vgg11", 10, normalize=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))).eval()
    assert list(plain.state_dict()) == list(normed.state_dict())
    normed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(normed(x), plain((x - 0.5) / 0.25), atol=1e-5)


@pytest.mark.parametrize("name", ["vgg11", "resnet18", "wrn28_10", "GSeMResNet18", "GSeMWideResNet28x10"])
def test_every_family_takes_one_input_channel(name):
    model = build_model(name, 10, in_channels=1)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    assert build_model(name, 10).state_dict().keys() == model.state_dict().keys()
