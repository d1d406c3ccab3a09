"""The sglbench language: SGLang-compatible structured programs (`import sglbench as sgl`).

Layout: `ir` (expressions), `api` (public constructors), `interpreter` (streams on worker threads),
`tracer` / `compiler` (program graphs), `chat_template`, `choices`, `telemetry`, and `backend/`.
"""
