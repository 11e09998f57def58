"""The model store and its management: blobs, manifests, create, pull, GGUF headers read in a sandbox."""
