"""Chat models: resolving `provider:model`, the local llama.cpp model, fakes, pools, retries."""
