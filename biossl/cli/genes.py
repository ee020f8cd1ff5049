"""``biossl genes``: score every gene for membership of known gene sets, or evaluate that on GO (EGAD)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal, get_args

import click

from .. import __version__
from ._common import CliError, check_io, cli_threads, common_options, echo_summary, elapsed
from ._data import counts_from_raw, read_input, use_layer
from ._options import (
    INPUT,
    MODEL_KINDS,
    check_model_option,
    force_option,
    layer_option,
    n_neighbors_option,
    seed_option,
    threads_option,
)

__all__ = ["genes"]

GeneGraph = Literal["combined", "denoised", "loadings", "coexpression"]


@click.command()
@INPUT
@click.option(
    "--gene-sets", "gene_sets", metavar="SETS.gmt", type=click.Path(dir_okay=False),
    help="Gene sets to extend (GMT, .gmt.gz allowed): score every gene for each set.",
)  # fmt: skip
@click.option(
    "--evaluate", "evaluate_gmt", metavar="GO.gmt", type=click.Path(dir_okay=False),
    help="Instead of scoring: EGAD cross-validation on these sets (sets with 20-1000 genes in the graph); "
    "prints the AUROC table of biossl vs neighbour voting, node degree and random.",
)  # fmt: skip
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), help="Output table (.tsv) of gene scores.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="With --evaluate: also write the scores.")
@force_option()
@click.option(
    "--model", "model_dir", metavar="DIR",
    help="Saved model directory (biossl embed --save-model) [default: train a VAE].",
)  # fmt: skip
@click.option(
    "--graph", type=click.Choice(get_args(GeneGraph)), default="combined", show_default=True,
    help="Gene graph: correlation of model-denoised expression, of decoder loadings, of raw co-expression, or "
    "the mean of denoised and raw (combined).",
)  # fmt: skip
@n_neighbors_option("Neighbours per gene.", minimum=1, default=30)
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9, show_default=True,
              help="Propagation strength.")  # fmt: skip
@click.option("--max-steps", type=click.IntRange(min=1), default=3000, show_default=True,
              help="VAE training budget when no --model is given.")  # fmt: skip
@seed_option("Random seed (training, folds).")
@click.option(
    "--case-sensitive", is_flag=True,
    help="Match gene names exactly (needed when IN has names equal ignoring case, e.g. mouse 'Lpcat4' and 'LPCAT4') "
    "[default: ignore case].",
)  # fmt: skip
@layer_option
@threads_option
@common_options
def genes(
    input_path: str, gene_sets: str | None, evaluate_gmt: str | None, output: str | None, json_path: str | None,
    force: bool, model_dir: str | None, graph: GeneGraph, n_neighbors: int, alpha: float, max_steps: int, seed: int,
    case_sensitive: bool, layer: str | None, threads: int | None,
) -> None:  # fmt: skip
    """Rank every gene of IN.h5ad by membership of known gene sets, or evaluate that on GO (EGAD).

    \b
      biossl genes cells.h5ad --gene-sets sets.gmt -o scores.tsv [--model DIR]
      biossl genes cells.h5ad --evaluate GO_BP.gmt [--json scores.json]

    The table has one row per (set, gene), sets in file order and genes by rank: set, gene, score (label
    propagation from the set's members over the gene graph, standardised over genes: higher = more tied to
    the members; unitless, so compare genes within a set, not across sets), rank (1 = best), is_member (the
    gene is in the set). Sets with no gene in IN get no rows; set members not found among the genes of IN are
    reported on stderr. IN is not modified.
    """  # noqa: D301 (click's \b paragraph marker)
    start = time.perf_counter()
    _check_options(gene_sets, evaluate_gmt, output, model_dir)
    check_io(input_path, {"--output": output, "--json": json_path}, force=force)
    with cli_threads(threads):
        from ..tl.genes import evaluate_gene_function, gene_function

        adata = read_input(input_path)
        counts_from_raw(adata, layer)
        use_layer(adata, layer)
        _check_gene_sets(adata, gene_sets or evaluate_gmt, case_sensitive)  # before training a VAE
        kwargs = {"model": model_dir, "graph": graph, "n_neighbors": n_neighbors, "alpha": alpha}
        kwargs.update(max_steps=max_steps, seed=seed, case_sensitive=case_sensitive)
        if evaluate_gmt is not None:
            result = evaluate_gene_function(adata, evaluate_gmt, **kwargs)
        else:
            table = gene_function(adata, gene_sets, **kwargs)
    if evaluate_gmt is not None:
        _print_evaluation(result)
        if json_path is not None:
            _write_evaluation(result, json_path, input_path=input_path, gene_sets=evaluate_gmt, force=force)
        summary = result["summary"]
        ours = summary["biossl"]
        wrote = f" -> {json_path}" if json_path else ""
        echo_summary(
            f"evaluated {result['n_terms']} gene sets over {result['n_graph_genes']} genes: biossl AUROC "
            f"{ours['mean_auroc']:.3f} vs neighbour voting {summary['neighbor_voting']['mean_auroc']:.3f} "
            f"(Wilcoxon p={ours['wilcoxon_p_vs_neighbor_voting']:.2g}) in {elapsed(start)}{wrote}"
        )
        return
    from .._io import atomic_path

    table = _rank_order(table)
    with atomic_path(output, overwrite=force) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    rec = adata.uns["biossl_genes"]
    n_unknown = int(sum(rec["n_unknown"]))
    echo_summary(
        f"scored {len(rec['sets'])} gene sets over {rec['params']['n_graph_genes']} genes ({graph} graph, model "
        f"{rec['params']['model']}; {n_unknown} set genes not in IN) in {elapsed(start)} -> {output}"
    )


def _check_options(gene_sets: str | None, evaluate_gmt: str | None, output: str | None, model_dir: str | None) -> None:
    """One of --gene-sets (with -o) and --evaluate (without); --model a saved directory; the GMT file exists."""
    if (gene_sets is None) == (evaluate_gmt is None):
        raise click.UsageError("give exactly one of --gene-sets (score genes) or --evaluate (EGAD evaluation).")
    if gene_sets is not None and output is None:
        raise click.UsageError("--gene-sets needs -o/--output for the score table.")
    if evaluate_gmt is not None and output is not None:
        raise click.UsageError("--evaluate prints a table; use --json (not -o) to save it.")
    if model_dir is not None:
        check_model_option(model_dir, None)
        if model_dir in MODEL_KINDS:
            raise CliError(f"--model {model_dir!r} must be a saved model directory here (or omit it to train a VAE).")
    for opt, path in (("--gene-sets", gene_sets), ("--evaluate", evaluate_gmt)):
        if path is not None and not Path(path).is_file():
            raise CliError(f"{opt} file {path!r} does not exist.")


def _check_gene_sets(adata, path: str, case_sensitive: bool) -> None:
    """Fail before any training when IN's names clash ignoring case, or no set member is a gene of IN."""
    from ..tl.genes import read_gmt

    names = [str(g) for g in adata.var_names]
    fold = (lambda g: g) if case_sensitive else str.upper
    seen: dict[str, str] = {}
    for name in names:
        if not case_sensitive and fold(name) in seen:
            raise CliError(
                f"genes {seen[fold(name)]!r} and {name!r} of the input are the same name ignoring case; pass "
                "--case-sensitive."
            )
        seen[fold(name)] = name
    sets = read_gmt(path)
    members = {fold(g) for genes in sets.values() for g in genes}
    if not members & seen.keys():
        example = next(iter(next(iter(sets.values()))))
        raise CliError(
            f"no member of the {len(sets)} gene sets in {path!r} is a gene of the input (e.g. {example!r}; input "
            f"genes e.g. {', '.join(names[:3])}); check the identifiers (symbols vs Ensembl ids) or the organism."
        )


def _rank_order(table):
    """The score table by set (file order), then rank; no rows for sets with no score (no gene in IN)."""
    scored = table.groupby("set", observed=True)["score"].transform(lambda v: v.notna().any())
    table = table[scored.astype(bool)]
    return table.sort_values(["set", "rank", "gene"], kind="stable", na_position="last").reset_index(drop=True)


def _print_evaluation(result: dict) -> None:
    """The EGAD table (mean AUROC, share of terms beating neighbour voting and node degree) on stdout."""
    summary, few = result["summary"], result["few_seed"]
    click.echo(f"{'method':<16}  {'mean AUROC':>10}  {'terms > NV':>10}  {'terms > degree':>14}")
    for name, row in summary.items():
        beat_nv = row.get("frac_terms_beating_neighbor_voting")
        beat_deg = row.get("frac_terms_beating_node_degree")
        click.echo(
            f"{name:<16}  {row['mean_auroc']:>10.3f}  {'' if beat_nv is None else f'{beat_nv:.0%}':>10}  "
            f"{'' if beat_deg is None else f'{beat_deg:.0%}':>14}"
        )
    click.echo(
        "few seeds (mean AUROC, biossl / neighbour voting): "
        + ", ".join(f"{n}: {v['biossl']:.3f}/{v['neighbor_voting']:.3f}" for n, v in few.items())
    )


def _write_evaluation(result: dict, json_path: str, *, input_path: str, gene_sets: str, force: bool) -> None:
    """``--json``: the EGAD scores, per term and summarised."""
    from .._io import write_text_atomic

    doc = {
        "input": str(input_path),
        "gene_sets": str(gene_sets),
        **{k: result[k] for k in ("summary", "few_seed", "n_terms", "n_graph_genes", "params", "seconds")},
        "terms": result["terms"].to_dict(orient="records"),
        "biossl_version": __version__,
    }
    write_text_atomic(json.dumps(doc, indent=2) + "\n", json_path, overwrite=force)
