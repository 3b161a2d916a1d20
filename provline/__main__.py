"""``python -m provline`` is the ``provline`` command."""

from provline.cli import app

app(prog_name="provline")
