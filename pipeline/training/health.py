"""Whether a finished run trained or exploded: warnings for a validation loss or logits no working
classifier has, and the ``--max-val-loss`` gate."""

from __future__ import annotations

import math
from typing import Any

from ..errors import GateFailed

LOSS_FACTOR = 10.0  # a best validation loss over this many times chance's (ln of the class count) has exploded
LOGIT_LIMIT = 1e4  # validation logits this large are no longer a classifier's scores


def warnings_of(record: dict[str, Any] | None, classes: int) -> list[str]:
    """What is wrong with the best epoch (``record``: its history line; None: no epoch ran)."""
    if record is None:
        return []
    found = []
    chance = math.log(max(classes, 2))
    if record["val_loss"] > LOSS_FACTOR * chance:
        found.append(f"the best epoch's validation loss is {record['val_loss']:.4g}, over {LOSS_FACTOR:g}x chance's "
                     f"{chance:.3g}: training exploded (lower --lr, or add --grad-clip)")
    largest = record.get("val_max_abs_logit", 0.0)
    if largest > LOGIT_LIMIT:
        found.append(f"its validation logits reach {largest:.3g} in magnitude: the network's scale exploded")
    return found


def check_max_val_loss(best: dict[str, Any], limit: float | None) -> None:
    """The ``--max-val-loss`` gate: nothing is committed above it (exit 1)."""
    if limit is not None and not best["val_loss"] <= limit:
        raise GateFailed(f"the best epoch's validation loss {best['val_loss']:.4g} is above --max-val-loss {limit:g}; "
                         "nothing was committed (the run folder is kept for --resume)")
