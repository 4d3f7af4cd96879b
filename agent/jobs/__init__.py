"""Jobs: the bounded slot, the pipeline (transcriber -> summarizer), result caches."""
