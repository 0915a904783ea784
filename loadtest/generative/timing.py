"""Timing of one streamed answer: TTFT, end-to-end, inter-chunk gaps, and ITL from token counts.

Definitions (docs/method.md, "Generative serving"): TTFT = arrival of the first chunk that carries
output text - the request's start (open loop: its intended send time); E2E = end of stream - the same
start; ITL = (E2E - TTFT) / (output tokens - 1), defined for two or more output tokens. Chunk gaps are
kept besides ITL because a server may pack several tokens in one chunk: their maximum shows stalls the
mean hides, and the number of chunks is never taken for the number of tokens.
Never imports Locust or gevent.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StreamTiming:
    """Clock readings (``perf_counter`` seconds) of one stream as its chunks arrive."""

    start: float  # when the latency starts: the intended send time (open loop) or the send time
    text_arrivals: list[float] = field(default_factory=list)  # chunks carrying output text
    end: float | None = None  # end of stream (last chunk, [DONE], or the final response)

    def chunk(self, at: float, carries_text: bool) -> None:
        if carries_text:
            self.text_arrivals.append(at)
        self.end = at

    def finish(self, at: float) -> None:
        self.end = at

    @property
    def ttft_s(self) -> float | None:
        return self.text_arrivals[0] - self.start if self.text_arrivals else None

    @property
    def e2e_s(self) -> float | None:
        return None if self.end is None else self.end - self.start

    @property
    def chunks(self) -> int:
        return len(self.text_arrivals)

    def gaps(self) -> list[float]:
        a = self.text_arrivals
        return [a[i + 1] - a[i] for i in range(len(a) - 1)]

    @property
    def gap_mean_s(self) -> float | None:
        gaps = self.gaps()
        return sum(gaps) / len(gaps) if gaps else None

    @property
    def gap_max_s(self) -> float | None:
        gaps = self.gaps()
        return max(gaps) if gaps else None


def itl_s(e2e_s: float | None, ttft_s: float | None, output_tokens: int | None) -> float | None:
    """Inter-token latency of one request: (E2E - TTFT) / (OSL - 1); None below two tokens or unknown."""
    if e2e_s is None or ttft_s is None or output_tokens is None or output_tokens < 2:
        return None
    return (e2e_s - ttft_s) / (output_tokens - 1)
