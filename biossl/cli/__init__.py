"""The ``biossl`` command line: the annotation steps as commands on .h5ad files.

One module per command group; the plumbing they share is in ``_common`` (errors, messages, file checks,
threads, SIGTERM), ``_options`` (options defined once) and ``_data`` (reading, embedding, writing).
Nothing heavy (anndata, scanpy, torch) is imported at module level, so ``biossl --help`` answers at once.
"""

import click

from ._common import cli_message, cli_threads, common_options, exit_on_sigterm
from .annotate import annotate, embed
from .demo import demo
from .evaluate import evaluate
from .genes import genes
from .info import info
from .reference import fit_reference, map_query_cmd
from .suggest import suggest
from .summary import aggregate, report, summarize
from .workflow import workflow, workflow_source

__all__ = ["cli_message", "main", "workflow_source"]

_threads = cli_threads  # the thread limit the commands enter (tests/test_cli.py checks it)


@click.group(name="biossl", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@common_options
def main() -> None:
    """biossl: few-label cell-type annotation on h5ad files.

    \b
    Typical use:
      biossl annotate cells.h5ad -o annotated.h5ad --labels-key cell_type
      biossl evaluate labelled.h5ad --labels-key cell_type --k 1,3,5 --seeds 0-4
      biossl demo

    Each command writes its outputs atomically, never modifies its input and prints a one-line summary.
    """  # noqa: D301 (click's \b paragraph marker must be a real backspace, not a raw string)
    exit_on_sigterm()


for _command in (
    annotate, embed, fit_reference, map_query_cmd, evaluate, demo, genes, suggest, report, info, summarize, aggregate,
    workflow,
):  # fmt: skip
    main.add_command(_command)
