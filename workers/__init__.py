"""herd workers: arq jobs feeding a continuous-batching llama.cpp engine."""
