"""One summary in a fresh process: llama-cpp-python loads the GGUF, answers once, exits.

    python bench/llama_oneshot.py MODEL MAX_TOKENS PROMPT

The `oneshot_command` of the llama_server summarizer in bench/kept_server.py (a new process per call).
"""

import sys

from llama_cpp import Llama

model, max_tokens, prompt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
llm = Llama(model_path=model, n_ctx=1024, n_threads=2, chat_format="gemma", verbose=False)
out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                 temperature=0.2)
print((out["choices"][0]["message"]["content"] or "").strip() or "(empty)")
