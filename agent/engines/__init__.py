"""Engine registry: a name in the config maps to a class that is imported only when chosen.

Lazy imports keep `voice-agent` start-up cheap: faster-whisper alone costs hundreds of MB.
"""

from __future__ import annotations

import importlib
from typing import Any

from agent.engines.base import Summarizer, Transcriber
from agent.settings import SummarizerSettings, TranscriberSettings, allows_test_engines

TRANSCRIBERS: dict[str, str] = {
    "whisper_cpp": "agent.engines.whisper_cpp:WhisperCppTranscriber",
    "whisper_server": "agent.engines.whisper_server:WhisperServerTranscriber",
    "faster_whisper": "agent.engines.faster_whisper:FasterWhisperTranscriber",
    "openai": "agent.engines.openai_stt:OpenAITranscriber",
    "pocketsphinx": "agent.engines.pocketsphinx:PocketsphinxTranscriber",
    "fleet": "agent.engines.fleet:FleetTranscriber",
    "moonshine": "agent.engines.moonshine:MoonshineTranscriber",
}

#: Model-free stand-ins for tests and benchmarks, reachable only with the test switch on
#: (`agent.settings.TEST_ENGINES_ENV`); never a production choice.
TEST_TRANSCRIBERS: dict[str, str] = {
    "bench_metadata": "agent.engines.bench_metadata:BenchMetadataTranscriber",
}

SUMMARIZERS: dict[str, str] = {
    "extractive": "agent.engines.extractive:ExtractiveSummarizer",
    "none": "agent.engines.extractive:NoSummarizer",
    "llama_server": "agent.engines.llama_server:LlamaServerSummarizer",
    "openai": "agent.engines.openai_chat:OpenAISummarizer",
    "anthropic": "agent.engines.anthropic_chat:AnthropicSummarizer",
}


def _load_class(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def transcribers() -> dict[str, str]:
    """The engines this process may build: the production ones, plus the test ones when switched on."""
    return {**TRANSCRIBERS, **TEST_TRANSCRIBERS} if allows_test_engines() else TRANSCRIBERS


def make_transcriber(settings: TranscriberSettings, offload: Any = None) -> Transcriber:
    """`offload`: how the `fleet` engine reaches the workers (agent/mqtt/offload.py); others ignore it."""
    cls = _load_class(transcribers()[settings.engine])
    return cls(settings, offload=offload) if settings.engine == "fleet" else cls(settings)


def make_summarizer(settings: SummarizerSettings) -> Summarizer:
    return _load_class(SUMMARIZERS[settings.engine])(settings)
