"""Reading the user's JSON and JSON Lines data files, with a `DataError` that names the file and the line.

Training data (`metadata.jsonl` captions, `.json` / `.jsonl` image records, alpaca instruction records) is the
user's own file, so every problem reading it is a `DataError` saying where it is and how to fix it, never a
`json` or `UnicodeDecodeError` traceback. Repo files (configs a tinypipe save wrote) go through
`tinypipe.files.read_json` instead.

```python
for line_number, record in read_json_lines(Path("data.jsonl")): ...   # blank lines skipped
records = read_json_document(Path("data.json"))
```
"""

import json
from pathlib import Path
from typing import Any, Optional

from ..errors import DataError

__all__ = ["read_json_document", "read_json_lines", "read_data_text"]


def read_data_text(path: Path) -> str:
    """The UTF-8 text of a data file.

    Raises:
        DataError: `path` is not a regular file (a folder, a FIFO, ...) or not UTF-8 text.
    """
    if not path.is_file():
        raise DataError(f"{path} is not a regular file; give the data file itself.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error}); save it as UTF-8.") from error


def _parse(text: str, path: Path, line_number: Optional[int] = None, hint: str = "") -> Any:
    """Parse a JSON document, or line `line_number` of a JSON Lines file; errors name the line and show it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        number = error.lineno if line_number is None else line_number
        lines = text.splitlines()
        shown = (lines[error.lineno - 1] if line_number is None and lines else text)[:80]
        raise DataError(f"{path} line {number} is not valid JSON ({error.msg} at column {error.colno}): {shown!r}. "
                        f"{hint or 'Fix it.'}") from None
    except RecursionError:  # the parser recurses once per level of nesting
        where = f" line {line_number}" if line_number is not None else ""
        raise DataError(f"{path}{where} nests lists or objects too deeply to read; no data record needs that. Fix it.") from None


def read_json_lines(path: Path) -> list[tuple[int, Any]]:
    """The values of a JSON Lines file with their line numbers (from 1); blank lines are skipped.

    Raises:
        DataError: Not a regular UTF-8 file, or a line that is not JSON (naming the line).
    """
    return [(number, _parse(line, path, number)) for number, line in enumerate(read_data_text(path).splitlines(), start=1)
            if line.strip()]


def read_json_document(path: Path, hint: str = "") -> Any:
    """The JSON value a `.json` file holds.

    Args:
        path: The file.
        hint: What to say after a syntax error instead of "Fix it." (e.g. what the file should hold).

    Raises:
        DataError: Not a regular UTF-8 file, or not JSON (naming the line of the first error).
    """
    return _parse(read_data_text(path), path, hint=hint)
