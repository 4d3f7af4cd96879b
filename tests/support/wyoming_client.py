"""A Wyoming client for tests: the `wyoming` package's own framing (what Home Assistant sends),
over a plain blocking socket so a test can also send what no library would (bad frames)."""

from __future__ import annotations

import io
import json
import socket
import time
import wave
from typing import Any

from wyoming.event import Event, read_event, write_event


class WyomingClient:
    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None, timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.rfile = self.sock.makefile("rb")
        self.wfile = self.sock.makefile("wb")

    def send(self, event: Any) -> None:
        write_event(event if isinstance(event, Event) else event.event(), self.wfile)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Event | None:
        return read_event(self.rfile)

    def read_until(self, *types: str, timeout: float = 30) -> Event:
        """The next event of one of `types` (others are skipped); AssertionError at the end or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            event = self.read()
            if event is None:
                raise AssertionError(f"connection closed while waiting for {types}")
            if event.type in types:
                return event
        raise AssertionError(f"no {types} within {timeout} s")

    def closed_by_peer(self, timeout: float = 5) -> bool:
        """True when the server closed the connection (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        for f in (self.rfile, self.wfile):
            try:
                f.close()
            except OSError:
                pass
        self.sock.close()


def pcm_of(wav_bytes: bytes) -> tuple[bytes, int, int, int]:
    with wave.open(io.BytesIO(wav_bytes), "rb") as w:
        return w.readframes(w.getnframes()), w.getframerate(), w.getsampwidth(), w.getnchannels()


def send_audio(client: WyomingClient, pcm: bytes, rate: int = 16000, width: int = 2, channels: int = 1,
               chunk: int = 2048, language: str = "en") -> None:
    """What Home Assistant's STT entity sends: transcribe, audio-start, chunks, audio-stop."""
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop

    client.send(Transcribe(language=language))
    client.send(AudioStart(rate=rate, width=width, channels=channels))
    for i in range(0, len(pcm), chunk):
        client.send(AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i:i + chunk]))
    client.send(AudioStop())


def header(kind: str, **extra: Any) -> bytes:
    return (json.dumps({"type": kind, **extra}) + "\n").encode()
