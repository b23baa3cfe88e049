"""Code generation from schemas/: clients, docs, BigQuery schemas and the runtime descriptor set."""
