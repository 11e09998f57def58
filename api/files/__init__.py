"""OpenAI Files: bytes on disk, records in Redis, streamed multipart uploads."""
