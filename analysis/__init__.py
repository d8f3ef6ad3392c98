"""Looking at finished runs: reading record files, summary statistics over
seeds, plots, and seed sweeps that run many experiments in parallel."""
