"""The ingest pipelines, read top to bottom. Streaming: Pub/Sub -> decode/validate -> both stores, and the
dead letters to their table and topic, in one step (ingest/transforms.py says why). Backfill: the same
transforms in batch from JSONL files; parquet files in Arrow batches (ingest/parquet.py).

Runners are always named: `BundleBasedDirectRunner` (streaming) and `FnApiRunner` (batch) locally, so Beam
never tries to download Prism; `--runner DataflowRunner` (and any Beam option) passes through unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.pvalue import PBegin, PCollection

from fstore.ingest.parquet import BackfillParquet
from fstore.ingest.pubsub import Route
from fstore.ingest.resources import close_resources
from fstore.ingest.sources import ReadJsonEvents
from fstore.ingest.transforms import BACKFILL_FLUSH_EVERY, IngestEvents, WriteDeadLetters
from fstore.settings import Settings

PARALLEL_BACKFILL_BYTES = 64 << 20


class ReadPubSubEvents(beam.PTransform[PBegin, PCollection[Any]]):
    """PubsubMessages (data, attributes, message id, publish time) from every route's subscription."""

    def __init__(self, routes: Sequence[Route]) -> None:
        super().__init__()
        self.routes = list(routes)

    def expand(self, begin: PBegin) -> PCollection[Any]:
        reads = [
            begin
            | f"Read {r.subscription.rsplit('/', 1)[1]}"
            >> beam.io.ReadFromPubSub(subscription=r.subscription, with_attributes=True)
            for r in self.routes
        ]
        return reads[0] if len(reads) == 1 else tuple(reads) | "Merge subscriptions" >> beam.Flatten()


def build_stream(pipeline: beam.Pipeline, settings: Settings, routes: Sequence[Route]) -> None:
    _ = (
        pipeline
        | "ReadPubSub" >> ReadPubSubEvents(routes)
        | "DecodeValidateWrite" >> IngestEvents(settings, publish_dead_letters=True)
    )  # fmt: skip


def build_backfill(pipeline: beam.Pipeline, settings: Settings, entity: str, version: int, inputs: list[str]) -> None:
    jsonl = [p for p in inputs if not p.endswith(".parquet")]
    parquet = [p for p in inputs if p.endswith(".parquet")]
    rejected = []
    if jsonl:
        files = pipeline | "ListJsonl" >> beam.Create(jsonl) | "ReadJsonl" >> ReadJsonEvents(entity, version)
        rejected.append(files.dead_letters)
        _ = files.records | "DecodeValidateWrite" >> IngestEvents(settings, flush_every=BACKFILL_FLUSH_EVERY)
    if parquet:
        files = pipeline | "ListParquet" >> beam.Create(parquet)
        rejected.append(files | "BackfillParquet" >> BackfillParquet(settings, entity, version))
    unreadable = tuple(rejected) | "Unreadable" >> beam.Flatten()
    unreadable | "WriteDeadLetters" >> WriteDeadLetters(settings, publish=False)


def build_replay(pipeline: beam.Pipeline, settings: Settings, messages: list[Any]) -> None:
    """Dead letters, as the messages they were (`ingest.replay`), through the streaming job's own step. One
    still rejected is counted, not stored: it is in the dead-letter table already."""
    _ = (
        pipeline
        | "DeadLetters" >> beam.Create(messages)
        | "DecodeValidateWrite" >> IngestEvents(settings, flush_every=BACKFILL_FLUSH_EVERY, store_dead_letters=False)
    )


def pipeline_options(beam_args: Sequence[str], *, streaming: bool) -> tuple[PipelineOptions, Any]:
    """Options from the pass-through arguments, and the runner to use (a local one unless one was named)."""
    options = PipelineOptions(list(beam_args), save_main_session=False)
    standard = options.view_as(StandardOptions)
    standard.streaming = streaming or standard.streaming
    if standard.runner:
        return options, None
    if streaming:
        from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

        return options, BundleBasedDirectRunner()
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    return options, FnApiRunner()


def run_stream(settings: Settings, routes: Sequence[Route], beam_args: Sequence[str] = ()) -> None:
    options, runner = pipeline_options(beam_args, streaming=True)
    if runner is not None:  # the local runner: ack after the writes (ingest/local_read.py)
        from fstore.ingest.local_read import use_ack_after_write_read

        use_ack_after_write_read(settings.pubsub.ack_deadline_seconds)
    try:
        with beam.Pipeline(runner=runner, options=options) as pipeline:
            build_stream(pipeline, settings, routes)
    finally:
        close_resources()  # a local job stopped with Ctrl-C leaves segments, not journals


def run_backfill(
    settings: Settings, entity: str, version: int, inputs: list[Path], beam_args: Sequence[str] = ()
) -> Any:
    options, runner = pipeline_options(beam_args, streaming=False)
    jsonl_bytes = sum(p.stat().st_size for p in inputs if p.suffix != ".parquet")
    if runner is not None and jsonl_bytes >= PARALLEL_BACKFILL_BYTES:
        # Large local JSONL backfills: one worker process per core (Beam splits text files in ranges), as
        # parsing is CPU-bound. Small ones stay in-process, where start-up is cheaper; parquet
        # is read a file per worker in Arrow batches and gains nothing.
        direct = options.view_as(DirectOptions)
        if direct.direct_num_workers == 1 and direct.direct_running_mode == "in_memory":
            direct.direct_num_workers = os.cpu_count() or 1
            direct.direct_running_mode = "multi_processing"
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_backfill(pipeline, settings, entity, version, [str(p) for p in inputs])
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        close_resources()  # in-process workers' journals become segments before anyone compacts
    return result


def run_replay(settings: Settings, messages: list[Any], beam_args: Sequence[str] = ()) -> Any:
    """Run `build_replay` as a batch job (`FnApiRunner` unless `beam_args` name a runner); the result's
    counters say what became of the letters (`events_valid`, `dead_letters_<reason>`)."""
    options, runner = pipeline_options(beam_args, streaming=False)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_replay(pipeline, settings, messages)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        close_resources()  # the offline store's journals become segments before the command ends
    return result
