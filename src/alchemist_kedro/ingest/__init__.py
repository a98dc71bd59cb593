"""Ingestion helpers free of Kedro: image and caption normalisation."""
