"""mnemos data pipeline (datatrove-shaped: documents flow through steps; see `mnemos data --help`).

- `indexed`      Megatron-compatible `.bin/.idx` token shards (builder, memory-mapped reader)
- `tokenizer`    sentencepiece training (BPE/unigram, byte fallback, split digits) and encoding
- `gpt_dataset`  packed EOT-separated GPT samples, weighted blends, resumable shuffled sampler
- `ngrams`       GPT-3 App. C words, stable vectorized n-gram hashes, corpus `NgramIndex`
- `pipeline`     Document, steps, filters base, resumable executors (per-task stats + completion markers)
- `io`           ingest through `datasets` (jsonl/parquet/txt, gzip/zstd, streaming), jsonl writers
- `filters`      cleanup, Gopher-style heuristics, GPT-3 quality classifier (pareto rule)
- `dedup`        exact + MinHash-LSH (bit-identical to datasketch's permutations), clusters, S-curve
- `contamination` GPT-3 App. C benchmark filter (13-grams, 200-char windows, book-safe)
- `tokenize`     parallel tokenization into shards;  `blend` weighted mixtures + splits
- `clean`        one-call dedup + decontamination for small corpora;  `cli` the `mnemos data` stages
"""
