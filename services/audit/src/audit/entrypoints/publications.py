"""What the audit service publishes, declared on its broker so the AsyncAPI document built
from it (`make docs`) shows each topic with its contract. Dead-lettering sends with
`broker.publish`; these publishers describe the topics and send nothing."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from audit.entrypoints.consumer import AUDITED_TOPICS
from contracts import DeadLetter, dlq_topic


def declare_publications(broker: KafkaBroker) -> None:
    for topic in AUDITED_TOPICS:
        broker.publisher(
            dlq_topic(topic),
            schema=DeadLetter,
            description=f"Messages from `{topic}` that could not be audited (not JSON, "
            "unknown type, invalid, unstorable), kept whole with the reason.",
        )
