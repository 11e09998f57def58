"""The OpenAI Batch API's engine: input validation, running lines through the gateway, driving batches."""
