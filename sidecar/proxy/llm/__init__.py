"""Recognising model calls in the traffic, and reading what they cost.

routes:   which protocol and operation a request is, from method and path, and whether it streams
request:  the requested model and stream flag, from a bounded body prefix
lines:    incremental, bounded splitting of SSE and NDJSON streams
tap:      per-protocol reading of response chunks into a GenAiCall

Nothing here may raise into the request path or delay a response byte: the
proxy writes each chunk to the client first and feeds the tap after.
"""
