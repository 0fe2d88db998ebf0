"""One DDP step over 2 processes (gloo, CPU) equals the single-process step on the same global batch."""
import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import functools  # noqa: E402

from conftest import tiny_classifier  # noqa: E402

from utils.losses import gradient_regularized  # noqa: E402
from utils.training import TrainStep  # noqa: E402

WORLD = 2


def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 16, 16, generator=gen), torch.randint(0, 5, (8,), generator=gen)


def one_step(model, x, y, lamb):
    model.eval()  # BatchNorm with running statistics: examples independent, so the split is exact
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = functools.partial(gradient_regularized, reg="fgr", lamb=lamb, rs_sigma=0.0, sampler="gather")
    TrainStep(model, opt, loss_fn, device="cpu")(x, y)


def worker(rank, port, lamb, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from utils import distributed as dist

    dist.init("cpu")
    try:
        model = dist.wrap(tiny_classifier(classes=5, width=6), torch.device("cpu"))
        x, y = batch()
        shard = slice(rank * 4, rank * 4 + 4)
        one_step(model, x[shard], y[shard], lamb)
        if rank == 0:
            torch.save(dist.unwrap(model).state_dict(), out)
        # both ranks past every collective before either tears gloo down: a rank that exits while gloo's worker
        # threads still hold the other's work aborts the process (SIGABRT, pytorch/pytorch#179291)
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("lamb", [0.0, 50.0])  # plain CE, and FGR (double backward through DDP)
def test_ddp_step_equals_single_process_step(lamb, tmp_path):
    out = str(tmp_path / "ddp.pt")
    try:
        mp.spawn(worker, args=(free_port(), lamb, out), nprocs=WORLD, join=True)
    except mp.ProcessExitedException as e:  # an abort in gloo's teardown once the step is on disk (#179291) only
        if e.signal_name != "SIGABRT" or not os.path.isfile(out):
            raise
    ddp = torch.load(out, weights_only=True)
    single = tiny_classifier(classes=5, width=6)
    one_step(single, *batch(), lamb)
    before = tiny_classifier(classes=5, width=6).state_dict()
    for k, v in single.state_dict().items():
        assert torch.allclose(ddp[k], v, atol=1e-6, rtol=1e-5), k
        if v.is_floating_point() and "running" not in k:
            assert not torch.equal(v, before[k]), k  # the step changed the weights


def test_channels_last_fast_path_gives_the_same_step_on_cpu():
    from utils.runtime import prepare_training_model

    x, y = batch()
    results = []
    for cl in (False, True):
        model = tiny_classifier(classes=5, width=6)
        train_model, plain = prepare_training_model(model, torch.device("cpu"), channels_last=cl)
        assert plain.state_dict().keys() == tiny_classifier(classes=5, width=6).state_dict().keys()
        assert plain[0].weight.is_contiguous(memory_format=torch.channels_last) == cl
        one_step(train_model, x, y, 0.0)
        results.append(plain.state_dict())
    for k in results[0]:
        assert torch.allclose(results[0][k], results[1][k], atol=1e-6), k


def test_compile_is_refused_with_double_backward(capsys):
    import main

    with pytest.raises(SystemExit) as e:
        main.main(main.get_args(["--fgr_lamb", "300", "--compile", "--data_path", "/nonexistent"]))
    assert e.value.code == 2 and "--compile" in capsys.readouterr().err
    import train_gsem

    with pytest.raises(SystemExit) as e:  # the GSeM scripts' --loss fgr differentiates twice too
        train_gsem.main(train_gsem.get_args(["--loss", "fgr", "--fgr_lamb", "1", "--compile", "--data_path",
                                             "/nonexistent"]))
    assert e.value.code == 2 and "--compile cannot differentiate twice" in capsys.readouterr().err
