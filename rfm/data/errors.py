"""The one error type of rfm.data: it always names the file and the field that are wrong."""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """Bad or missing dataset content. `file` and `field` say where; the message says expected vs found."""

    def __init__(self, file: str | Path, field: str | None, message: str) -> None:
        self.file = str(file)
        self.field = field
        where = f"{self.file}" + (f": field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")
