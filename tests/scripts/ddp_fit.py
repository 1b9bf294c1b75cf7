"""fit() on fixed random data: run with plain python (one process) or under torchrun (DDP).
Rank 0 saves the weights and history to argv[1]. Used by tests/test_distributed.py."""
import sys

import torch
from torch import nn

from recipe.core import distributed
from recipe.train.fit import fit
from recipe.train.optim import make_optimizer, make_schedule
from recipe.train.session import batches, seed_everything


def flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A seeded random horizontal flip per image (drawn for the whole global batch)."""
    mask = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def main(out: str) -> None:
    device = distributed.init(torch.device("cpu"))
    seed_everything(0)
    x = torch.rand(20, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0].mean((1, 2)) > 0.5).long()
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    train = batches((x[:14], y[:14]), batch_size=5, train=True, seed=0, device=device)  # 5, 5, 4: uneven shares
    train.augment = flip
    valid = batches((x[14:], y[14:]), batch_size=5, train=False, seed=0, device=device)
    opt = make_optimizer([{"params": list(model.parameters()), "lr": 0.05}], name="sgd", momentum=0.9, nesterov=True)
    sched = make_schedule(opt, epochs=3, steps_per_epoch=len(train), name="constant")
    history = fit(model, train=train, valid=valid, epochs=3, optimizer=opt, schedule=sched,
                  loss_fn=nn.CrossEntropyLoss(), keep="last")
    if distributed.is_main():
        torch.save({"model": model.state_dict(), "history": history,
                    "shard": train.shard, "world": distributed.world_size()}, out)


if __name__ == "__main__":
    main(sys.argv[1])
