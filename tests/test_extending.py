"""The three extensions of docs/extending.md, run as printed: an attack with one knob (one file + its
registration), a loss with one hyperparameter (trained one step through --loss of both training scripts) and a model
(normalised, trained through main.py); and extensions whose flags clash are refused without breaking any script."""
import os
import re

import pytest
import torch
from conftest import unregister_attack

import evaluate
import evaluate_gsem
import main
import train_gsem
from attacks import ATTACKS, AttackConfig, build_attack
from models import build_model, unregister
from utils import losses

README = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "extending.md")).read()


def snippet(marker: str) -> str:
    blocks = [b for b in re.findall(r"```py\n(.*?)```", README, re.S) if marker in b]
    assert len(blocks) == 1, marker
    return blocks[0]


@pytest.fixture
def rfgsm():
    exec(snippet("# attacks/rfgsm.py"), {})
    yield "RFGSM"
    unregister_attack("RFGSM")


def test_the_readme_attack_gets_flags_in_both_scripts_and_keeps_its_budget(rfgsm, capsys):
    for script, argv in ((evaluate, []), (evaluate_gsem, ["--model_load_path", "x.pt"])):
        with pytest.raises(SystemExit):
            script.get_args(argv + ["--help"])
        assert "--rfgsm_alpha" in capsys.readouterr().out
        assert script.get_args(argv + ["--attacks", rfgsm, "--rfgsm_alpha", "2"]).rfgsm_alpha == 2.0
    model = build_model("resnet18", 10).eval()
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    attack, settings = build_attack(rfgsm, model, AttackConfig(eps=4 / 255))
    x_adv = attack(x, y)
    assert settings == {"eps": 4.0, "rfgsm_alpha": 4.0} and ATTACKS[rfgsm].budget.knob == "eps"
    assert (x_adv - x).abs().max() <= 4 / 255 + 1e-6 and not torch.equal(x_adv, x)


@pytest.fixture
def alp():
    exec(snippet("def alp("), vars(losses))
    yield "alp"
    losses.OBJECTIVES.pop("alp")


def test_the_readme_loss_trains_a_step_through_loss(alp, cifar10_root, tmp_path):
    argv = ["--loss", alp, "--alp_weight", "1", "--classifier_name", "resnet18", "--dataset_name", "cifar10",
            "--data_path", cifar10_root, "--no-verify_data", "--model_save_path", str(tmp_path), "--subset", "4",
            "--batch_size", "4", "--epochs", "1", "--reload", "1", "--gra_eot_num", "1", "--att_eot_num", "1",
            "--attack_steps", "1", "--workers", "0", "--no_bar", "--best_acc", "-1"]
    result = train_gsem.main(train_gsem.get_args(argv))
    assert "_lossalp_alp_weight1.0_" in os.path.basename(result["best_file"])
    record = result["history"][0]
    assert record["train_pair"] >= 0 and torch.isfinite(torch.tensor(record["train_loss"]))


@pytest.fixture
def lenet():
    exec(snippet("# models/lenet.py"), {})
    yield "lenet"
    unregister("lenet")


def test_the_readme_loss_trains_a_step_in_main_too(alp, cifar10_root, tmp_path):
    """main.py --loss takes any objective that fits its data: ALP on the flow attack's examples."""
    argv = ["--loss", alp, "--alp_weight", "1", "--data_path", cifar10_root, "--no-verify_data", "--model_name",
            "smallcnn", "--weight_path", str(tmp_path), "--epochs", "1", "--subset", "8", "--batch_size", "8",
            "--adv_steps", "1", "--workers", "0", "--no_bar"]
    main.main(main.get_args(argv))
    path = tmp_path / "cifar10_smallcnn_adv_steps1_lossalp_epochs1_batch_size8_alp_weight1.0_subset8.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["args"]["loss"] == "alp" and ckpt["epoch"] == 1


def test_the_readme_model_is_normalised_and_trains_through_main(lenet, cifar10_root, tmp_path):
    torch.manual_seed(0)
    plain, normed = build_model(lenet, 10), build_model(lenet, 10, normalize=((0.5,) * 3, (0.25,) * 3))
    normed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(normed(x), plain((x - 0.5) / 0.25), atol=1e-6)
    main.main(main.get_args(["--data_path", cifar10_root, "--no-verify_data", "--model_name", lenet, "--normalize",
                             "--weight_path", str(tmp_path), "--epochs", "1", "--subset", "8", "--batch_size", "8",
                             "--workers", "0", "--no_bar"]))
    ckpt = torch.load(tmp_path / "cifar10_lenet_normalize_epochs1_batch_size8_subset8.pt", weights_only=True)
    assert ckpt["model_spec"]["name"] == "lenet" and ckpt["model_spec"]["normalize"] is not None


def test_an_extension_whose_flag_clashes_is_refused_in_one_line_and_breaks_no_script(capsys):
    """Knobs named like a script's flag (alpha: evaluate_gsem.py's GSeM alpha; beta: the GSeM training scripts')
    or like another knob (eps, declared differently) are refused at registration, one line each naming the clash and
    a free name; every script's --help still works."""
    import train_gsem_awp
    import train_gsem_mart
    from attacks import Knob, register_attack
    from utils.argtypes import nonneg_float

    register_attack("alpha_attack", Knob("alpha", nonneg_float, 1.0, "a step"))(lambda model, cfg: None)
    register_attack("eps_attack", Knob("eps", nonneg_float, 0.5, "another eps"))(lambda model, cfg: None)
    losses.register_objective("beta_loss", Knob("beta", nonneg_float, 1.0, "a weight"), policy="clean")(
        losses.cross_entropy)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: attack 'alpha_attack' not registered: its knob 'alpha' would take the flag --alpha, which a script "
        "already has; rename it (e.g. 'alpha_attack_alpha')",
        "error: attack 'eps_attack' not registered: its knob 'eps' is declared differently elsewhere; rename it "
        "(e.g. 'eps_attack_eps')",
        "error: objective 'beta_loss' not registered: its knob 'beta' would take the flag --beta, which a script "
        "already has; rename it (e.g. 'beta_loss_beta')"]
    assert "alpha_attack" not in ATTACKS and "eps_attack" not in ATTACKS and "beta_loss" not in losses.OBJECTIVES
    for script, argv in ((main, []), (evaluate, []), (evaluate_gsem, ["--model_load_path", "x.pt"]),
                         (train_gsem, []), (train_gsem_mart, []), (train_gsem_awp, [])):
        with pytest.raises(SystemExit) as e:
            script.get_args(argv + ["--help"])
        assert e.value.code == 0


def test_the_reserved_flags_are_the_scripts_own_flags():
    """utils.argtypes.EVALUATE_FLAGS / TRAIN_FLAGS (what a knob may not take) equal the flags the scripts define
    besides the knobs; a flag added to a script without adding it there fails here."""
    import train_gsem_awp
    from attacks.registry import all_knobs
    from utils.argtypes import EVALUATE_FLAGS, TRAIN_FLAGS

    def spellings(parsers, knobs):
        own = {o.lstrip("-") for p in parsers for a in p._actions for o in a.option_strings if o.startswith("--")}
        knob = {o.lstrip("-") for k in knobs for o in k.option_strings}
        return {o for o in own - knob - {"help"} if not o.startswith("no-")}

    assert spellings([evaluate.parser()[0], evaluate_gsem.parser()], all_knobs()) == EVALUATE_FLAGS
    assert spellings([main.parser(), train_gsem.parser(), train_gsem_awp.parser()],
                     losses.objective_params()) == TRAIN_FLAGS
