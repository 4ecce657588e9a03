"""``alexnet-serve`` whose model warm-up waits until the file ``$ALEXNET_WARM_UP_GATE`` exists.

A real server (socket, uvicorn, app, model) that stays warming up for exactly as long as a test
needs: ``tests/test_ui.py`` shows the demo page a server that is not ready yet."""

from __future__ import annotations

import os
import time
from pathlib import Path

from app.cli import main
from app.engine import Engine

_warm_up = Engine.warm_up


def _gated_warm_up(self: Engine) -> float:
    gate = Path(os.environ["ALEXNET_WARM_UP_GATE"])
    while not gate.exists():
        time.sleep(0.05)
    return _warm_up(self)


if __name__ == "__main__":
    Engine.warm_up = _gated_warm_up  # type: ignore[method-assign]
    main()
