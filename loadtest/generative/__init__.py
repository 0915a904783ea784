"""Generative (streaming LLM) load: prompts, the wire formats of the serving APIs, stream timing.

Why a package of its own: a generative request is measured by its stream (time to first token, the
gaps between chunks, the tokens the server says it produced), not by one answer. Everything here is
plain Python (no Locust, no gevent): the Locust-side clients and users live in ``loadtest.load``
(``stream_clients``, ``stream_users``) and the analysis in ``loadtest.analysis.generative``.
"""
