"""Incremental line splitting for SSE and NDJSON response streams.

Chunks arrive split anywhere: inside a line, between CR and LF, inside a
multi-byte character. The splitter keeps the unfinished tail, bounded: a line
longer than `max_line` is dropped (and reported) instead of being held, so a
10 MB single event costs no more memory than the limit.
"""

from __future__ import annotations


class LineSplitter:
    __slots__ = ("_tail", "_max_line", "_skipping", "oversized_lines")

    def __init__(self, max_line: int) -> None:
        self._tail = b""
        self._max_line = max_line
        self._skipping = False
        self.oversized_lines = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines in this chunk (without their line ending), in order."""
        data = self._tail + chunk if self._tail else chunk
        pieces = data.split(b"\n")
        tail = pieces.pop()
        lines: list[bytes] = []
        for piece in pieces:
            if self._skipping:  # this piece ends a line already dropped as oversized
                self._skipping = False
                continue
            if len(piece) > self._max_line:
                self.oversized_lines += 1
                continue
            lines.append(piece[:-1] if piece.endswith(b"\r") else piece)
        if self._skipping:
            tail = b""
        elif len(tail) > self._max_line:
            self.oversized_lines += 1
            self._skipping = True
            tail = b""
        self._tail = tail
        return lines

    def flush(self) -> bytes | None:
        """The unterminated last line, if any, at the end of the stream."""
        tail, self._tail = self._tail, b""
        return tail or None
