"""The judge stage: LLM judges behind OpenAI-compatible HTTP endpoints.

- limiter.py: one token bucket per endpoint (requests/min and tokens/min),
  in-process or as a named async Ray actor shared by every caller on every node
- client.py: aiohttp chat client with retries, backoff, Retry-After
- prompts.py: judge prompts (MT-Bench, AlignBench, AlpacaEval)
- parse.py: verdict parsers; the raw judge text is always kept
- tasks.py: which judge requests a dataset needs, from its predictions
- stage.py: the Ray Data stage (judge caller actors) and the judge pass of a run
- testserver.py: a local OpenAI-compatible server with a real rate limit and
  fault injection, for tests and benchmarks

Nothing here imports Ray at module import time except stage.py.
"""
