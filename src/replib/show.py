"""Show a replib object's source in a notebook, so a chapter shows the code that runs without copying it."""
from __future__ import annotations

import inspect
import os
import textwrap
from typing import Callable

from IPython.display import Markdown


def show_source(obj: object) -> Markdown:
    """The source of a function, class or method as a highlighted Python block."""
    try:
        source = inspect.getsource(obj)
    except (TypeError, OSError) as e:
        raise TypeError(f"cannot show the source of {obj!r}: {e}") from None
    where = f"{inspect.getmodule(obj).__name__}.{getattr(obj, '__qualname__', '')}"
    return Markdown(f"`{where}`\n\n```python\n{textwrap.dedent(source)}```")


def static_build() -> bool:
    """True while ``replib book``/``replib run`` executes a chapter for the static site, where no
    frontend can drive a widget (and widget traffic can stall the executing client)."""
    return os.environ.get("REPLIB_STATIC") == "1"


def explorer(make_widget: Callable[[], object]) -> object:
    """An ipywidgets control for readers in Jupyter/Colab; on the static site, a line saying so."""
    if static_build():
        return Markdown("*Interactive control: open this chapter in Jupyter or Colab to use it; the "
                        "static figure above shows the same sweep.*")
    return make_widget()
