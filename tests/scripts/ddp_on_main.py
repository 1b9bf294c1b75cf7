"""distributed.on_main under torchrun: rank 0 alone runs the function and every rank gets its
result; an error on rank 0 reaches every rank. Each rank writes what it saw to argv[1]/<rank>.json.
Used by tests/test_distributed.py."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from recipe.core import distributed
from recipe.core.errors import DataError


def main(out: str) -> None:
    distributed.init(torch.device("cpu"))
    me = dist.get_rank()
    calls = []

    def choose() -> dict:
        calls.append(me)
        return {"rank": me, "lr": 0.1 * (me + 1)}  # a rank-dependent answer: only rank 0's may arrive

    got = distributed.on_main(choose)

    def fail() -> None:
        raise DataError("the range test diverged")

    try:
        distributed.on_main(fail)
        error = None
    except DataError as exc:
        error = str(exc)
    Path(out, f"{me}.json").write_text(json.dumps({"got": got, "calls": calls, "error": error}))


if __name__ == "__main__":
    main(sys.argv[1])
