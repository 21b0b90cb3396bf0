"""Interactive controls: a widget in Jupyter/Colab, a note on the static site (REPLIB_STATIC=1)."""
import pytest
from IPython.display import Markdown

from replib.experiments import residual, selu_map


@pytest.mark.parametrize("make", [lambda: selu_map.moment_map_explorer(layers=3),
                                  lambda: residual.growth_explorer(width=8, max_depth=4, n_samples=8)])
def test_explorers_are_widgets_live_and_notes_on_the_static_site(make, monkeypatch):
    import ipywidgets

    monkeypatch.delenv("REPLIB_STATIC", raising=False)
    assert isinstance(make(), ipywidgets.interactive)
    monkeypatch.setenv("REPLIB_STATIC", "1")
    note = make()
    assert isinstance(note, Markdown) and "Jupyter or Colab" in note.data
