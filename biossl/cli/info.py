"""``biossl info``: what biossl wrote into an h5ad file, or what a saved model directory holds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import CliError, common_options, one_line

__all__ = ["info"]


def _h5ad_info(path: str) -> dict:
    """The biossl keys of an h5ad file, read with h5py (nothing but the small biossl parts is loaded)."""
    import h5py
    from anndata.io import read_elem

    def shape(node) -> list[int] | None:
        if isinstance(node, h5py.Dataset):
            return list(node.shape)
        if "shape" in node.attrs:
            return [int(s) for s in node.attrs["shape"]]
        return None

    def plain(obj):
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if hasattr(obj, "tolist"):
            return obj.tolist()
        return obj

    try:
        fh = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"cannot read {path!r} as an h5ad file ({one_line(err)}).") from None
    with fh:
        if "obs" not in fh or "var" not in fh:
            raise ValueError(f"cannot read {path!r} as an h5ad file (an HDF5 file without obs/var groups).")
        n_obs = len(fh["obs"][fh["obs"].attrs.get("_index", "_index")])
        n_vars = len(fh["var"][fh["var"].attrs.get("_index", "_index")])
        info: dict = {"path": path, "kind": "h5ad", "n_obs": n_obs, "n_vars": n_vars}
        info["uns"] = plain(read_elem(fh["uns/biossl"])) if "uns/biossl" in fh else None
        for group in ("obsm", "obsp", "layers"):
            if group in fh:
                info[group] = {
                    k: shape(fh[group][k]) for k in fh[group] if k.startswith(("biossl", "X_biossl")) or k == "counts"
                }
        info["obs"] = {}
        for k in fh["obs"]:
            if not k.startswith("biossl"):
                continue
            values = read_elem(fh["obs"][k])
            if hasattr(values, "categories"):
                import pandas as pd

                info["obs"][k] = {str(c): int(n) for c, n in pd.Series(values).value_counts(sort=True).items()}
            else:
                info["obs"][k] = f"{getattr(values, 'dtype', type(values).__name__)}"
        info["var"] = {"biossl_hvg": int(read_elem(fh["var/biossl_hvg"]).sum())} if "var/biossl_hvg" in fh else {}
        info["uns_other"] = (
            sorted(k for k in fh["uns"] if k.startswith("biossl") and k != "biossl") if "uns" in fh else []
        )
    return info


def _model_info(path: str) -> dict:
    """What a model directory holds, from config.json (no torch import)."""
    directory = Path(path)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{path!r} is a directory but not a biossl model (no config.json).")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({one_line(err)}).") from None
    if not isinstance(cfg, dict) or "format_version" not in cfg:
        raise ValueError(f"{cfg_path} has no format_version; it was not written by biossl.")
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    return {
        "path": path,
        "kind": "model",
        "format_version": cfg.get("format_version"),
        "model": cfg.get("model"),
        "n_latent": cfg.get("n_latent"),
        "n_genes": len(cfg.get("genes", [])),
        "batches": cfg.get("batches", []),
        "adversarial": cfg.get("adversarial"),
        "training": cfg.get("training", {}),
        "adapted": cfg.get("adapted"),
        "reference": cfg.get("reference"),
        "versions": cfg.get("versions", {}),
        "files": files,
    }


def _print_info(info: dict) -> None:
    if info["kind"] == "model":
        tr = info["training"]
        click.echo(f"{info['path']}: biossl model directory (format {info['format_version']})")
        click.echo(f"  model: {info['model']}, {info['n_latent']}-d latent, {info['n_genes']} genes")
        click.echo(f"  batches: {', '.join(map(str, info['batches'])) or 'none'}; adversarial: {info['adversarial']}")
        click.echo(
            f"  training: {tr.get('steps')} of {tr.get('max_steps')} steps on {tr.get('n_cells')} cells, "
            f"seed {tr.get('seed')}"
        )
        if info.get("reference"):
            ref = info["reference"]
            click.echo(
                f"  reference: {ref.get('n_cells')} cells, {len(ref.get('classes', []))} classes "
                f"(labels_key {ref.get('labels_key')!r})"
            )
        if info["versions"]:
            click.echo("  versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
        click.echo("  files: " + ", ".join(f"{k} ({v:,} bytes)" for k, v in info["files"].items()))
        return
    click.echo(f"{info['path']}: {info['n_obs']} cells x {info['n_vars']} genes")
    uns = info["uns"]
    if uns is None:
        click.echo("  no uns['biossl']: biossl has not run on this file")
    else:
        steps = [k for k in uns if isinstance(uns[k], dict)]
        click.echo(f"  uns['biossl']: biossl {uns.get('version', '?')}, steps: {', '.join(steps) or 'none'}")
        for step in steps:
            params = {k: v for k, v in uns[step].items() if not isinstance(v, dict | list)}
            click.echo(f"    {step}: " + ", ".join(f"{k}={v}" for k, v in params.items()))
        if "classes" in uns:
            click.echo(f"    classes: {', '.join(map(str, uns['classes']))}")
    for group in ("obsm", "obsp", "layers"):
        for key, shp in info.get(group, {}).items():
            click.echo(f"  {group}['{key}']: {' x '.join(map(str, shp)) if shp else '?'}")
    for key, val in info["obs"].items():
        if isinstance(val, dict):
            click.echo(f"  obs['{key}']: " + ", ".join(f"{c} {n}" for c, n in val.items()))
        else:
            click.echo(f"  obs['{key}']: {val}")
    for key, val in info["var"].items():
        click.echo(f"  var['{key}']: {val} genes selected")
    for key in info["uns_other"]:
        click.echo(f"  uns['{key}']")


@click.command()
@click.argument("path", metavar="FILE.h5ad|MODEL_DIR", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the information as JSON.")
@common_options
def info(path, as_json) -> None:
    """Show what biossl wrote into an h5ad file, or what a saved model directory holds."""
    target = Path(path)
    if not target.exists():
        raise CliError(f"{path!r} does not exist.")
    data = _model_info(path) if target.is_dir() else _h5ad_info(path)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        _print_info(data)
