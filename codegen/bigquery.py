"""BigQuery table schemas: one JSON file per entity version at clients/bigquery/<entity>_v<N>.json.

The files are BigQuery's schema JSON (`bq mk --table dataset.user_v1 clients/bigquery/user_v1.json`),
written from `fstore.schema.tables.bigquery_schema_fields`, the schema the BigQuery backend creates.
"""

from __future__ import annotations

import json

from fstore.codegen.generate import Context, Outputs
from fstore.schema.tables import bigquery_schema_fields

ROOT = "clients/bigquery"
OWNS = (ROOT,)


def generate(ctx: Context) -> Outputs:
    return {
        f"{ROOT}/{spec.table_name}.json": (json.dumps(bigquery_schema_fields(spec), indent=2) + "\n").encode()
        for spec in ctx.registry
    }
