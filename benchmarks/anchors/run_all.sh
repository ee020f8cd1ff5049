#!/usr/bin/env bash
# Run every anchor method over the saved splits (results: benchmarks/results/anchors/runs/, resumable).
# Two chains run side by side: scANVI with its default epochs (slow; seeds 0-2 by default) and the rest.
# Usage: benchmarks/anchors/run_all.sh [slow|fast|all]   (needs `make bench-env` for scANVI/CellTypist/ingest)
set -u
cd "$(dirname "$0")/../.."
DATASETS="pbmc3k cellbench baron_mouse"
BENCH=.venv-bench/bin/python
MAIN=.venv/bin/python
RUN=benchmarks/anchors/run.py
SLOW_SEEDS=${SLOW_SEEDS:-"0 1 2"}
what=${1:-all}
slow() {
  $BENCH $RUN scanvi $DATASETS --seeds $SLOW_SEEDS
}
fast() {
  $MAIN $RUN knn_pca $DATASETS
  $MAIN $RUN knn1_pca $DATASETS
  $MAIN $RUN labelspreading $DATASETS
  $MAIN $RUN labelspreading_default $DATASETS
  $BENCH $RUN celltypist $DATASETS
  $BENCH $RUN ingest $DATASETS
  $MAIN $RUN biossl $DATASETS
  $MAIN $RUN biossl_best $DATASETS
  $BENCH $RUN scanvi_fast $DATASETS
}
case $what in
  slow) slow ;;
  fast) fast ;;
  all) slow & fast; wait ;;
esac
