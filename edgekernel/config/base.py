"""Building blocks of every config model: ids, paths resolved against the file, the frozen base."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from edgekernel.protocol.topics import ID_PATTERN

Id = Annotated[str, Field(pattern=f"^{ID_PATTERN}$", description="1-63 of a-z 0-9 _ -")]


def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir") if info.context else None
    try:
        path = path.expanduser()
    except RuntimeError:
        raise ValueError(f"cannot expand {str(path)!r}: no such home directory") from None
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return Path(os.path.normpath(path))


FilePath = Annotated[Path, AfterValidator(_resolve)]


class Model(BaseModel):
    """Base of every config model: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
