"""Retrieval: retrievers, embeddings, indexing, the llama-index bridge."""
