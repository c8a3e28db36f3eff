"""The `segflow` command: one sub-command per pipeline step, each a thin call into the library.

Commands import their library module inside the function, so `segflow --help` and the light
steps start without loading TensorFlow.
"""

from __future__ import annotations

import click

from segflow.errors import SegflowError


class _Group(click.Group):
    """Shows a SegflowError as one `Error: ...` line and exit code 1, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SegflowError as error:
            raise click.ClickException(str(error)) from error


@click.group(cls=_Group)
@click.version_option(package_name="segflow")
def cli():
    """Semantic segmentation on Cityscapes: data, models, training, evaluation, report."""


# Commands are added below, one section per pipeline step, in pipeline order.
