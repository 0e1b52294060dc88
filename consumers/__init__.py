"""In: production LLM logs from Kafka or files, decoded, sampled and persisted in batches."""

from consumers.file_source import FileSource, ReplayFileError
from consumers.formats import FORMATS, Decoders, Format, register
from consumers.ingest import IngestBatch, Ingestor
from consumers.kafka_source import KafkaSource
from consumers.pipeline import IngestPipeline
from consumers.records import Decoded, DecodeError, RawMessage, Request
from consumers.sampling import Sampler

__all__ = ["FORMATS", "Decoded", "DecodeError", "Decoders", "FileSource", "Format", "IngestBatch",
           "IngestPipeline", "Ingestor", "KafkaSource", "RawMessage", "ReplayFileError", "Request",
           "Sampler", "register"]
