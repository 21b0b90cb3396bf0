"""Show a replib object's source in a notebook, so a chapter shows the code that runs without copying it."""
from __future__ import annotations

import inspect
import textwrap

from IPython.display import Markdown


def show_source(obj: object) -> Markdown:
    """The source of a function, class or method as a highlighted Python block."""
    try:
        source = inspect.getsource(obj)
    except (TypeError, OSError) as e:
        raise TypeError(f"cannot show the source of {obj!r}: {e}") from None
    where = f"{inspect.getmodule(obj).__name__}.{getattr(obj, '__qualname__', '')}"
    return Markdown(f"`{where}`\n\n```python\n{textwrap.dedent(source)}```")
