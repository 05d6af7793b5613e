"""Progress bars that only draw on a terminal and never break a pipe, a log file or a CI job."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr. `enabled=None` draws only when stderr is a TTY; `False` never; `True` always."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=None if enabled is None else not enabled,
        dynamic_ncols=True,
        leave=False,
        **kwargs,
    )


def byte_bar(total: int, desc: str, enabled: bool | None = None) -> tqdm:
    return progress_bar(total, desc, unit="B", enabled=enabled, unit_scale=True, unit_divisor=1024)
