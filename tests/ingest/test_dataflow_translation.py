"""The streaming job and the backfill translate for Dataflow (`--dry_run`: built and translated offline,
nothing submitted), so the local-only read swap and every DoFn keep working where it matters most."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from fstore.ingest.pipeline import build_backfill, build_stream
from fstore.ingest.pubsub import routes
from fstore.schema.registry import Registry
from fstore.settings import load_settings

DATAFLOW = [
    "--runner=DataflowRunner",
    "--project=fstore-test",
    "--region=europe-west1",
    "--temp_location=gs://fstore-test/tmp",
    "--dry_run=True",
    "--no_auth",
    "--sdk_location=container",
]


@pytest.mark.parametrize("kind", ["stream", "backfill"])
def test_the_job_translates_for_dataflow(registry: Registry, tmp_path: Path, kind: str) -> None:
    settings = load_settings(offline="bigquery://fstore-test/features", redis_url="redis://10.0.0.3:6379/0")
    options = PipelineOptions([*DATAFLOW, *(["--streaming"] if kind == "stream" else [])], save_main_session=False)
    pipeline = beam.Pipeline(options=options)
    if kind == "stream":
        build_stream(pipeline, settings, routes(settings, registry))
    else:
        events = tmp_path / "events.jsonl"
        events.write_text('{"userId": "1", "eventTime": "2026-01-01T00:00:00Z"}\n')
        build_backfill(pipeline, settings, "user", 1, [str(events)])
    result = pipeline.run()
    job = result.job  # type: ignore[attr-defined]  # a dry run's result carries the translated job
    translated = str(job.proto_pipeline)
    assert "DecodeValidateWrite" in translated
    if kind == "stream":
        assert job.proto.type.name == "JOB_TYPE_STREAMING"
        assert "ReadFromPubSub" in translated or "pubsub" in translated.lower()
