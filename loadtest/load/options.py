"""The load generator's command-line options, registered once with Locust.

Why one place: with ``locust -f scenarios/`` every scenario file is imported, and an option added by
each file would clash. Importing any Locust-side module of ``loadtest.load`` registers them exactly
once (Python imports a module once). Every option shows in ``locust --help`` and in the web UI, and
reads an environment variable (``LOADTEST_*``) for docker-compose. The table is in ``settings``.
"""

from __future__ import annotations

from locust import events

from loadtest.generative.settings import GENERATIVE_OPTIONS, GenerationOptions
from loadtest.load.settings import OPTIONS, LoadOptions


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    """Add every loadtest option to Locust's parser (shown in --help and in the web UI)."""
    for flag, env_var, default, kind, text in OPTIONS:
        parser.add_argument(flag, type=kind, default=default, env_var=env_var, help=text, include_in_web_ui=True)
    for flag, env_var, default, kind, text in GENERATIVE_OPTIONS:
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=default, env_var=env_var, help=text,
                                include_in_web_ui=True)  # fmt: skip
        else:
            parser.add_argument(flag, type=kind, default=default, env_var=env_var, help=text, include_in_web_ui=True)


def load_options(environment) -> LoadOptions:
    """The typed options of a Locust environment (raises LoadtestError for a bad value)."""
    return LoadOptions.from_namespace(environment.parsed_options)


def load_generation_options(environment) -> GenerationOptions:
    """The typed generative options (``enabled`` when ``--api`` is set; raises LoadtestError for a bad value)."""
    return GenerationOptions.from_namespace(environment.parsed_options)
