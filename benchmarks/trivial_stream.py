"""The local runner's ceiling: Pub/Sub -> Redis SET, nothing else (used by benchmarks/streaming.py stream)."""

from __future__ import annotations

import sys
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner


class SetInRedis(beam.DoFn):
    def __init__(self, url: str) -> None:
        self.url = url

    def setup(self) -> None:
        import redis

        self.client = redis.Redis.from_url(self.url)

    def start_bundle(self) -> None:
        self.pipe = self.client.pipeline(transaction=False)

    def process(self, message: Any) -> None:
        self.pipe.set(f"t:{message.message_id}", message.data)

    def finish_bundle(self) -> None:
        self.pipe.execute()


def main() -> None:
    url, subscription = sys.argv[1], sys.argv[2]
    options = PipelineOptions(streaming=True)
    with beam.Pipeline(runner=BundleBasedDirectRunner(), options=options) as p:
        _ = (
            p
            | beam.io.ReadFromPubSub(subscription=subscription, with_attributes=True)
            | beam.ParDo(SetInRedis(url))
        )  # fmt: skip


if __name__ == "__main__":
    main()
