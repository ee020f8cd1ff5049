"""The ``biossl`` command line: the annotation steps as commands on .h5ad files."""

from ._common import _threads as _threads  # tests limit threads as the commands do
from ._common import cli_message, main, workflow_source

__all__ = ["cli_message", "main", "workflow_source"]
